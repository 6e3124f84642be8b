"""What an item of the detection corpus is: an attacker behaviour or a benign action.

An item is declarative: shell lines typed in a session of their own, the lines that
prepare and undo it, the programs it needs. The harness (`harness.py`) fills in the
placeholders below and runs the lines with `bash` reading them from a pipe, so that
what the monitor sees is what an operator typing them would show: every external
program exec'd with its own argv, and builtins (`cd`, `echo … >> file`, `history`)
not at all. A technique that arrives as a one-liner (an exploit, a web shell, a
cron job) is written as that one-liner (`sh -c '…'`), because that is how it runs.

Placeholders, replaced in `setup`, `run`, `cleanup` and `gone`:

| placeholder | value |
|-------------|-------|
| `@WORK@` | the item's own work directory (under the harness's base, not world-writable) |
| `@HOME@` | the item's own HOME (dot files, `.ssh`, history land there, never in /root) |
| `@TAG@`  | a short random tag of this run: names in /tmp, /etc/cron.d, users, units |
| `@PORT@` | a TCP port on 127.0.0.1 where the harness listens for this item (`serve`) |
| `@HTTP@` | `http://127.0.0.1:<port>`, the harness's web server (see `servers.py`) |
| `@FREEPORT@` | a free TCP port on 127.0.0.1 for the item's own server |
| `@PY@`   | the system's python3 (not the harness's virtualenv) |
"""

from __future__ import annotations

from dataclasses import dataclass

# ATT&CK enterprise tactics, by the short names their tags use (attack.<tactic>)
TACTICS = (
    "initial-access",
    "execution",
    "persistence",
    "privilege-escalation",
    "defense-evasion",
    "credential-access",
    "discovery",
    "lateral-movement",
    "collection",
    "command-and-control",
    "exfiltration",
    "impact",
)

# what `serve` may ask of the harness for @PORT@
SERVE_KINDS = ("", "tcp", "tls")


@dataclass(frozen=True)
class Item:
    """One behaviour (tactic and technique set) or one benign action (both empty)."""

    id: str
    name: str
    run: str  # shell lines typed in the item's session
    tactic: str = ""  # one of TACTICS; empty for a benign action
    technique: str = ""  # current ATT&CK id, e.g. T1059.004
    setup: str = ""  # shell lines run before, in a session of their own (not scored)
    cleanup: str = ""  # shell lines run after, always, in a session of their own
    needs: tuple[str, ...] = ()  # programs that must be on PATH, else skipped
    # conditions, else skipped: "root", "systemd", "nobody", "ptrace", "path:/some/path"
    requires: tuple[str, ...] = ()
    serve: str = ""  # "tcp" or "tls": a listener on @PORT@ that sends `id; exit`
    gone: tuple[str, ...] = ()  # paths (or `user:NAME`) that must not exist after cleanup
    source: str = ""  # the public procedure it follows (Atomic Red Team, Falco, GTFOBins)
    timeout_s: float = 5.0

    @property
    def benign(self) -> bool:
        return not self.tactic

    def __post_init__(self) -> None:
        if self.tactic and self.tactic not in TACTICS:
            raise ValueError(f"item {self.id}: unknown tactic {self.tactic!r}")
        if bool(self.tactic) != bool(self.technique):
            raise ValueError(f"item {self.id}: a behaviour needs both tactic and technique")
        if self.technique and not self.technique.startswith("T"):
            raise ValueError(f"item {self.id}: technique {self.technique!r} is not an ATT&CK id")
        if self.serve not in SERVE_KINDS:
            raise ValueError(f"item {self.id}: unknown serve {self.serve!r}")
