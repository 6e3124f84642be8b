"""Runs corpus items against a real `daemoneye up` and tells which item caused which alert.

Each phase of an item (setup, run, cleanup) is a `bash` of its own, started in a new
session (setsid), reading its lines from a pipe. Every process it starts carries that
session id, so an alert is the item's when its process (or an ancestor) is in the
phase's session and started while the phase ran: the pid of a session leader can be
reused once it is gone (pid_max is often 32768), its start time cannot. Processes
that leave the session (`setsid`, a pty) are followed up their parents through the
process events on the bus (`daemoneye tap`). An aggregate's alert that has no
process is attributed by the session id, pid or parent in its row. Alerts nothing
explains (other work on the host) are counted apart, never blamed on an item.

Alerts are read from the file sink (`<data_dir>/alerts.jsonl`), each line stamped
when it appeared: that is the operator's view (after dedup and rate limits), and the
stamp minus the process's start gives exec -> alert.

Safety: only 127.0.0.1; every item's cleanup runs in a `finally`; nothing is killed
but the process groups of the sessions this harness started and its own
`daemoneye up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import Item
from .servers import ShellCatcher, WebServer, tls_context

CLK_TCK = os.sysconf("SC_CLK_TCK")
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SEVERITIES = ("info", "low", "medium", "high", "critical")
DONE = "__corpus_phase_done__"
AGGREGATE_GRACE_S = 120.0  # an aggregate may fire this long after the phase ended
CANARY_RULE = """\
id: corpus-canary
name: Detection corpus canary
description: The corpus harness's marker process; proves collector, detector and alerter work.
severity: info
tags: [daemoneye.corpus]
sql: |
  SELECT pid, name, cmdline FROM processes WHERE cmdline LIKE '%de-corpus-canary-%'
"""


def boot_ticks() -> int:
    """Now, in the clock of /proc/<pid>/stat's start time (ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLK_TCK)


def boot_epoch() -> float:
    """The wall time of boot, to the microsecond (/proc/stat's btime is whole seconds)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def at_least(severity: str, floor: str = "medium") -> bool:
    return severity in SEVERITIES and SEVERITIES.index(severity) >= SEVERITIES.index(floor)


# --- the monitor ------------------------------------------------------------------


@dataclass
class Delivered:
    record: dict[str, Any]
    arrived: float  # wall time the line appeared in the file sink


class AlertTail:
    """Follows the file sink, stamping each line when it appears."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[Delivered] = []
        self._offset = 0
        self._inode = 0
        self._partial = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(0.01)  # a poll interval; each line is stamped when first seen

    def poll(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if st.st_ino != self._inode or st.st_size < self._offset:  # created or rotated
            self._inode, self._offset, self._partial = st.st_ino, 0, b""
        if st.st_size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        now = time.time()
        self._offset += len(data)
        *whole, self._partial = (self._partial + data).split(b"\n")
        with self._lock:
            for line in whole:
                if line.strip():
                    with contextlib.suppress(ValueError):
                        self.lines.append(Delivered(json.loads(line), now))

    def snapshot(self) -> list[Delivered]:
        with self._lock:
            return list(self.lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.poll()


class Parents:
    """pid -> [(start ticks, ppid, session id)]: who started whom, as the bus told; and
    what each process ran (its images: an exec in the same pid adds one)."""

    def __init__(self) -> None:
        self.seen: dict[int, list[tuple[int, int, int]]] = {}
        self.images: dict[tuple[int, int], list[tuple[str, str, str]]] = {}
        self._lock = threading.Lock()

    def add(
        self, pid: int, ticks: int, ppid: int, sid: int, image: tuple[str, str, str] | None = None
    ) -> None:
        with self._lock:
            known = self.seen.setdefault(pid, [])
            if (ticks, ppid, sid) not in known:
                known.append((ticks, ppid, sid))
            if image is not None:
                images = self.images.setdefault((pid, ticks), [])
                if image not in images:
                    images.append(image)

    def parent_of(self, pid: int, ticks: int) -> tuple[int, int, int] | None:
        """(ppid, parent's start ticks, parent's session) of the process (pid, ticks)."""
        with self._lock:
            mine = [e for e in self.seen.get(pid, []) if not ticks or e[0] == ticks]
            if not mine:
                return None
            ppid = mine[-1][1]
            older = [e for e in self.seen.get(ppid, []) if e[0] <= (ticks or e[0])]
        if not older:
            return (ppid, 0, 0) if ppid else None
        best = max(older, key=lambda e: e[0])
        return (ppid, best[0], best[2])

    def session(self, sid: int, ticks: tuple[int, int]) -> list[dict[str, Any]]:
        """The processes of session `sid` started within `ticks`, with what they ran."""
        with self._lock:
            found = [
                (pid, entry)
                for pid, entries in self.seen.items()
                for entry in entries
                if entry[2] == sid and ticks[0] - 1 <= entry[0] <= ticks[1]
            ]
            return [
                {
                    "pid": pid,
                    "ppid": ppid,
                    "images": [
                        {"name": n, "path": p, "cmdline": c}
                        for n, p, c in self.images.get((pid, start), [])
                    ],
                }
                for pid, (start, ppid, _) in sorted(found, key=lambda f: (f[1][0], f[0]))
            ]


class Lineage(Parents):
    """The parents of processes that left their session, from the bus's process events
    read through `daemoneye tap`."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        super().__init__()
        self.proc = subprocess.Popen(
            [*command, "tap", "events.process.", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                body = json.loads(line)["envelope"]["body"]
            except (ValueError, KeyError):
                continue
            events = body.get("processEventBatch", {}).get("events") or [body.get("processEvent")]
            for ev in events:
                rec = (ev or {}).get("record") or {}
                if rec.get("pid"):
                    image = (
                        rec.get("name", ""),
                        rec.get("exePath", ""),
                        " ".join(rec.get("cmdline") or [])[:500],
                    )
                    self.add(
                        rec["pid"],
                        rec.get("startTicks", 0),
                        rec.get("ppid", 0),
                        rec.get("sessionId", 0),
                        image,
                    )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Monitor:
    """A real `daemoneye up` (broker, collector, detector, alerter) in temp dirs, with
    the given rules plus the harness's canary rule."""

    def __init__(
        self,
        rules_dir: Path,
        base: Path,
        command: list[str] | None = None,
        services: Iterable[str] = ("collector", "detector", "alerter"),
    ) -> None:
        self.command = command or [sys.executable, "-m", "daemoneye"]
        self.base = base
        self.rules_dir = base / "rules"
        shutil.copytree(rules_dir, self.rules_dir)
        (self.rules_dir / "zz-corpus-canary.yml").write_text(CANARY_RULE)
        self.rules_source = rules_dir
        # ipc:// paths must be short: the run dir lives in /tmp, the rest under base
        self.run_dir = Path(tempfile.mkdtemp(prefix="de-corpus-", dir="/tmp"))
        self.data_dir = base / "data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DAEMONEYE_")}
        self.env.update(
            DAEMONEYE_RUN_DIR=str(self.run_dir),
            DAEMONEYE_DATA_DIR=str(self.data_dir),
            DAEMONEYE_LOG_LEVEL="warning",
        )
        self.log_path = base / "daemoneye-up.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.command, "up", "--only", *services, "--rules-dir", str(self.rules_dir)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its services share the session: one group to stop
        )
        self.tail = AlertTail(self.data_dir / "alerts.jsonl")
        self.lineage: Lineage | None = None
        self._canaries = 0
        self.tag = secrets.token_hex(3)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def canary(self, timeout_s: float) -> float:
        """Starts marker processes until the canary rule's alert reaches the file sink;
        returns the seconds it took. Raises when the pipeline does not deliver."""
        self._canaries += 1
        marker = f"de-corpus-canary-{self.tag}-{self._canaries}"
        start = time.monotonic()
        deadline = start + timeout_s
        next_try = 0.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemoneye up exited ({self.proc.returncode}):\n{self.log()}")
            if any(marker in (d.record.get("rowJson") or "") for d in self.tail.snapshot()):
                return time.monotonic() - start
            if time.monotonic() >= next_try:  # the collector may not be subscribed yet
                # a session of its own: a canary is its own incident, so the alerter
                # sends it at once instead of holding it for the last canary's update
                subprocess.run(
                    ["/bin/sh", "-c", "sleep 0.3", marker], check=False, start_new_session=True
                )
                next_try = time.monotonic() + 2
            time.sleep(0.05)  # a poll interval: the alert in the file decides
        raise RuntimeError(
            f"no canary alert within {timeout_s:g} s: is the monitor working?\n{self.log()}"
        )

    def start(self, timeout_s: float = 120) -> None:
        self.canary(timeout_s)
        self.lineage = Lineage(self.command, self.env)
        self.canary(timeout_s)  # the tap is subscribed once it saw the canary's events too

    def rules(self) -> list[dict[str, Any]]:
        """The detector's loaded rules (`daemoneye rules list --json`)."""
        out = subprocess.run(
            [*self.command, "rules", "list", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            return []
        return [r for r in json.loads(out.stdout).get("rules", []) if r["id"] != "corpus-canary"]

    def stop(self) -> None:
        if self.lineage is not None:
            self.lineage.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.tail.close()
        self._log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


# --- running items ----------------------------------------------------------------


@dataclass
class Phase:
    item: str
    kind: str  # setup, run, cleanup
    sid: int
    ticks: tuple[int, int]  # boot ticks at start and end
    wall: tuple[float, float]
    rc: int | None
    timed_out: bool
    complete: bool  # bash read the script to its end (no program ate its stdin)
    output: str


@dataclass
class Outcome:
    item: Item
    skipped: str = ""  # why, when it did not run
    phases: list[Phase] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # of its run phase
    side_alerts: list[dict[str, Any]] = field(default_factory=list)  # of setup/cleanup
    left_behind: list[str] = field(default_factory=list)
    connections: int = 0  # to its listener (`serve`): did the reverse shell call back?
    processes: list[dict[str, Any]] = field(default_factory=list)  # of its run, as seen

    @property
    def run_phase(self) -> Phase | None:
        return next((p for p in self.phases if p.kind == "run"), None)

    def detected(self, floor: str = "medium") -> bool:
        return any(at_least(a["severity"], floor) for a in self.alerts)


def exists(what: str) -> bool:
    """A path (even a dangling link) or, as `user:NAME`, an account."""
    if what.startswith("user:"):
        try:
            pwd.getpwnam(what[5:])
        except KeyError:
            return False
        return True
    return os.path.lexists(what)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for an item's own
    server, or a UDP shell that nothing answers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exited_unreaped(pid: int, timeout_s: float) -> bool:
    """Waits up to `timeout_s` for child `pid` to exit, leaving it a zombie (WNOWAIT):
    True when it exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # a poll interval: the child's exit decides


def kill_session(sid: int, since_ticks: int) -> None:
    """SIGKILL every process of session `sid` that started at or after `since_ticks`:
    the pid of a gone session leader may be reused, a start time before ours may not."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid and int(fields[19]) >= since_ticks:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def why_not(item: Item) -> str:
    """Why the item cannot run here ("" when it can)."""
    for program in item.needs:
        if shutil.which(program, path=SESSION_PATH) is None:
            return f"{program} is not installed"
    for need in item.requires:
        if need == "root" and os.geteuid() != 0:
            return "needs root"
        if need == "systemd" and not Path("/run/systemd/system").is_dir():
            return "systemd is not running (PID 1 is not systemd)"
        if need == "nobody":
            try:
                pwd.getpwnam("nobody")
            except KeyError:
                return "no user nobody"
        if need.startswith("path:") and not os.path.exists(need[5:]):
            return f"{need[5:]} does not exist here"
        if need == "ptrace" and _ptrace_scope() > 1:
            return "ptrace attach is disabled (kernel.yama.ptrace_scope > 1)"
    return ""


def _ptrace_scope() -> int:
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except (OSError, ValueError):
        return 0


class Runner:
    """Runs items one after the other, each phase in a session of its own."""

    def __init__(self, base: Path, tag: str, job_control: bool = False) -> None:
        self.base = base
        self.tag = tag
        # off: one process group for the whole phase, as in a script or a reverse shell
        # without a terminal; on (`set -m`): one per pipeline, as in a terminal
        self.job_control = job_control
        self.web = WebServer()
        self.tls = tls_context(base)
        self.python = shutil.which("python3", path=SESSION_PATH) or sys.executable
        self.user = pwd.getpwuid(os.getuid()).pw_name
        (base / "logs").mkdir(exist_ok=True)

    def close(self) -> None:
        self.web.close()

    def fill(self, text: str, work: Path, home: Path, port: int, free: int) -> str:
        for key, value in (
            ("@FREEPORT@", str(free)),
            ("@WORK@", str(work)),
            ("@HOME@", str(home)),
            ("@TAG@", self.tag),
            ("@PORT@", str(port)),
            ("@HTTP@", self.web.url),
            ("@PY@", self.python),
        ):
            text = text.replace(key, value)
        return text

    def env(self, home: Path) -> dict[str, str]:
        return {
            "PATH": SESSION_PATH,
            "HOME": str(home),
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
        }

    def phase(self, item: Item, kind: str, script: str, work: Path, home: Path) -> Phase:
        """One `bash` in a new session reading `script` on its stdin (its argv is only
        `bash`: the lines are seen as the programs they start, as when typed)."""
        log_path = self.base / "logs" / f"{item.id}.{kind}.log"
        ticks0, wall0 = boot_ticks(), time.time()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["bash"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=work,
                env=self.env(home),
                start_new_session=True,
            )
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                # the last line is a builtin: its output shows that no program ate the
                # script from stdin before bash read it all
                prefix = "set -m\n" if self.job_control and kind == "run" else ""
                proc.stdin.write(f"{prefix}{script}\necho {DONE} $?\n".encode())
                proc.stdin.close()
            rc: int | None = None
            timed_out = not exited_unreaped(proc.pid, item.timeout_s if kind == "run" else 30)
            end = boot_ticks() + 1
            # what is left of the session (background jobs, a timed-out phase): the
            # leader is not reaped yet, so its pid (the session id) cannot be reused
            kill_session(proc.pid, ticks0)
            proc.wait()
        wall1 = time.time()
        output = log_path.read_text(errors="replace")
        done = re.search(rf"^{DONE} (\d+)$", output, re.M)
        if done:  # the status of the script's last command, not of the echo
            rc = int(done.group(1))
            output = output[: done.start()] + output[done.end() :]
        return Phase(
            item.id,
            kind,
            proc.pid,
            (ticks0, end),
            (wall0, wall1),
            rc,
            timed_out,
            done is not None,
            output.strip()[-2000:],
        )

    def run(self, item: Item) -> Outcome:
        outcome = Outcome(item, skipped=why_not(item))
        if outcome.skipped:
            return outcome
        root = self.base / "items" / item.id
        work, home = root / "work", root / "home"
        work.mkdir(parents=True)
        home.mkdir()
        catcher = None
        if item.serve:
            catcher = ShellCatcher(self.tls if item.serve == "tls" else None)
        port = catcher.port if catcher else 0
        free = free_port()
        try:
            if item.setup:
                setup = self.phase(
                    item, "setup", self.fill(item.setup, work, home, port, free), work, home
                )
                outcome.phases.append(setup)
            outcome.phases.append(
                self.phase(item, "run", self.fill(item.run, work, home, port, free), work, home)
            )
        finally:
            if item.cleanup:
                script = self.fill(item.cleanup, work, home, port, free)
                outcome.phases.append(self.phase(item, "cleanup", script, work, home))
            if catcher is not None:
                catcher.close()
                outcome.connections = catcher.connections
            outcome.left_behind = [
                g for g in (self.fill(g, work, home, port, free) for g in item.gone) if exists(g)
            ]
        return outcome


# --- attribution ------------------------------------------------------------------


class Attributor:
    def __init__(self, outcomes: list[Outcome], lineage: Parents | None) -> None:
        self.by_sid: dict[int, list[tuple[Phase, Outcome]]] = {}
        for outcome in outcomes:
            for phase in outcome.phases:
                self.by_sid.setdefault(phase.sid, []).append((phase, outcome))
        self.lineage = lineage

    def _by_process(self, sid: int, ticks: int) -> tuple[Phase, Outcome] | None:
        for phase, outcome in self.by_sid.get(sid, ()):
            if phase.ticks[0] - 1 <= ticks <= phase.ticks[1]:
                return phase, outcome
        return None

    def _by_time(self, sid: int, when: float) -> tuple[Phase, Outcome] | None:
        """The latest phase of session `sid` that started before `when`, if `when` is
        within the grace after its end (an aggregate fires after the fact)."""
        hits = [
            (phase, outcome)
            for phase, outcome in self.by_sid.get(sid, ())
            if phase.wall[0] <= when <= phase.wall[1] + AGGREGATE_GRACE_S
        ]
        return max(hits, key=lambda h: h[0].wall[0]) if hits else None

    def attribute(self, record: dict[str, Any]) -> tuple[tuple[Phase, Outcome] | None, str]:
        """(phase and item, how) or (None, "")."""
        proc = record.get("process") or {}
        chain = [proc]
        for key in ("ancestors", "ancestry"):  # the ancestry alerts may carry
            if isinstance(record.get(key), list):
                chain += [a for a in record[key] if isinstance(a, dict)]
        for p in chain:
            sid, ticks = p.get("sessionId") or 0, p.get("startTicks") or 0
            if sid and ticks and (hit := self._by_process(sid, ticks)):
                return hit, "session"
        pid, ticks = proc.get("pid") or 0, proc.get("startTicks") or 0
        for _ in range(16):  # up the parents the bus saw
            if not pid or self.lineage is None:
                break
            parent = self.lineage.parent_of(pid, ticks)
            if parent is None:
                break
            pid, ticks, sid = parent
            if sid and ticks and (hit := self._by_process(sid, ticks)):
                return hit, "lineage"
        try:
            row = json.loads(record.get("rowJson") or "{}")
        except ValueError:
            row = {}
        when = (record.get("timeNs") or 0) / 1e9
        for key in ("session_id", "sessionId", "sid", "pid", "parent", "ppid", "pgroup"):
            value = row.get(key) if isinstance(row, dict) else None
            if isinstance(value, int) and (hit := self._by_time(value, when)):
                return hit, f"row.{key}"
        return None, ""


@dataclass
class RunResult:
    outcomes: list[Outcome]
    unattributed: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    rules_dir: str
    started: float
    seconds: float
    canary_s: float


def alert_view(d: Delivered, how: str, scheduled: set[str], epoch: float) -> dict[str, Any]:
    r = d.record
    proc = r.get("process") or {}
    ticks = proc.get("startTicks") or 0
    aggregate = r.get("ruleId") in scheduled or "daemoneye.aggregate" in (r.get("tags") or [])
    latency = None
    if ticks and not aggregate:
        latency = round(d.arrived - (epoch + ticks / CLK_TCK), 4)
    return {
        "rule": r.get("ruleId", ""),
        "severity": r.get("severity", ""),
        "type": r.get("type", "alert"),
        "pid": proc.get("pid"),
        "cmdline": " ".join(proc.get("cmdline") or [])[:300],
        "aggregate": aggregate,
        "latency_s": latency,
        "how": how,
    }


def run_corpus(
    items: list[Item],
    rules_dir: Path,
    command: list[str] | None = None,
    progress: Any = None,
    keep: bool = False,
    job_control: bool = False,
) -> RunResult:
    """Starts the monitor, runs every item, waits for the last alerts, attributes them."""
    base = Path(tempfile.mkdtemp(prefix="de-corpus-", dir=Path.home()))
    started = time.time()
    monitor = Monitor(rules_dir, base, command)
    runner: Runner | None = None
    outcomes: list[Outcome] = []
    try:
        monitor.start()
        runner = Runner(base, monitor.tag, job_control)
        rules = monitor.rules()
        for n, item in enumerate(items, 1):
            outcome = runner.run(item)
            outcomes.append(outcome)
            if progress is not None:
                progress(n, len(items), outcome)
        # flush: the canary's alert follows every incremental alert before it; the
        # aggregates run on their cadence, so wait out the longest interval too
        canary_s = monitor.canary(120)
        longest = max((float(r.get("interval") or 0) for r in rules), default=0)
        longest = max([longest, 2.0] + [_interval_of(r) for r in rules])
        _quiet(monitor.tail, longest + 1.0, deadline_s=longest + 30)
        lines = monitor.tail.snapshot()
    finally:
        if runner is not None:
            runner.close()
        monitor.stop()
        lineage = monitor.lineage
        if not keep:
            _remove(base)
    scheduled = {r["id"] for r in rules if r.get("mode") == "scheduled"}
    attributor = Attributor(outcomes, lineage)
    for outcome in outcomes:
        run = outcome.run_phase
        if run is not None and lineage is not None:
            outcome.processes = lineage.session(run.sid, run.ticks)
    epoch = boot_epoch()
    unattributed: list[dict[str, Any]] = []
    for d in lines:
        if d.record.get("ruleId") == "corpus-canary" or d.record.get("type", "alert") != "alert":
            continue
        hit, how = attributor.attribute(d.record)
        view = alert_view(d, how, scheduled, epoch)
        if hit is None:
            unattributed.append(view)
            continue
        phase, outcome = hit
        (outcome.alerts if phase.kind == "run" else outcome.side_alerts).append(
            dict(view, phase=phase.kind)
        )
    return RunResult(
        outcomes, unattributed, rules, str(rules_dir), started, time.time() - started, canary_s
    )


def _interval_of(rule: dict[str, Any]) -> float:
    return float(rule.get("interval_s") or rule.get("interval") or 0)


def _quiet(tail: AlertTail, quiet_s: float, deadline_s: float) -> None:
    """Waits until no line arrived for `quiet_s` (or `deadline_s` passed)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        lines = tail.snapshot()
        last = max((d.arrived for d in lines), default=0.0)
        if time.time() - last >= quiet_s and time.monotonic() - start >= quiet_s:
            return
        time.sleep(0.1)  # a poll interval: the quiet period decides


def _remove(base: Path) -> None:
    # an item's cleanup clears immutable bits it set; this is only the last resort
    subprocess.run(["chattr", "-R", "-i", str(base)], capture_output=True, check=False)
    deadline = time.monotonic() + 10
    while True:  # a daemon an item stopped (gpg-agent) may still be removing its sockets
        shutil.rmtree(base, ignore_errors=True)
        if not base.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.2)  # a retry interval; the directory being gone decides
