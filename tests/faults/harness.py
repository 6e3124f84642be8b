"""The fault suite's harness: the whole system on real sockets, a steady exec storm,
and exact accounting of what the collector logged against what the ledger and the
detector recorded.

The collector's WAL is the ground truth: every event it published has a seq there
(it is written before it is sent). After a fault, the collector is stopped cleanly
(so its WAL is final) and every seq of its `events.process` stream must be in the
ledger exactly once, and every event's time stamp in the detector's history once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemoneye.rpc import RpcError
from tests.conftest import ServiceProcess, World, daemoneye, wait_for
from tests.stored import (
    capture_diagnosis,
    ledger_pids,
    read_history,
    read_ledger,
    read_wal,
    wal_pids,
)

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
# kill -9 loses what the collector had read but not yet logged: storm processes that
# ended this long before the kill are due in its WAL, later ones are excused
KILL_GRACE_S = 1.0
CORE = ("broker", "ledger", "detector", "collector")  # consumers before producers


def realtime_reason() -> str:
    """Why the collector cannot see a storm of short processes here ('' when it can)."""
    if os.geteuid() != 0:
        return "needs root: the collector sees short-lived processes through netlink only"
    from daemoneye.services.collector.netlink import NetlinkUnavailable, ProcConnector

    try:
        ProcConnector().close()
    except NetlinkUnavailable as exc:
        return f"netlink process connector unavailable: {exc}"
    return ""


def needs_realtime() -> Any:
    import pytest

    reason = realtime_reason()
    return [pytest.mark.root, pytest.mark.skipif(bool(reason), reason=reason)]


@dataclass(frozen=True)
class Ran:
    """One storm process, by the storm's own account (monotonic clock)."""

    n: int
    pid: int
    started: float
    ended: float


class Storm:
    """A thread that runs `true <marker> <n>` at a steady rate until stopped, and keeps
    its own record of what it ran: the fault tests' ground truth for what there was to
    see, independent of the collector."""

    def __init__(self, rate: float, marker: str, life_s: float = 0.0) -> None:
        self.rate = rate
        self.marker = marker
        self.life_s = life_s
        self.count = 0
        self.ran: list[Ran] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="storm")

    def start(self) -> Storm:
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            proc = subprocess.Popen(self._argv(), executable=SLEEP if self.life_s else None)
            proc.wait()
            self.ran.append(Ran(self.count, proc.pid, started, time.monotonic()))
            self.count += 1
            due += period
            self._stop.wait(max(0.0, due - time.monotonic()))  # paced, not a sync sleep

    def _argv(self) -> list[str]:
        """`true <marker> <n>`; with `life_s`, a sleep of that long whose argv[0] is
        `true <marker> <n>` (the same command line to a rule, read as one text): alive
        long enough for any /proc read, where a test is not about that race."""
        if self.life_s:
            return [f"true {self.marker} {self.count}", str(self.life_s)]
        return [TRUE, self.marker, str(self.count)]

    def wait_more(self, n: int, timeout: float = 20) -> None:
        """Wait until `n` more processes have been run."""
        target = self.count + n
        wait_for(lambda: self.count >= target, timeout, f"{n} more storm processes")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def due(self, blind: list[tuple[float, float]] | None = None) -> list[Ran]:
        """The processes the storm ran, except those that overlap a `blind` window (the
        collector down)."""
        windows = blind or []
        return [r for r in self.ran if not any(r.ended >= a and r.started <= b for a, b in windows)]

    def missing(self, pids: set[int], blind: list[tuple[float, float]] | None = None) -> list[Ran]:
        """The due processes that have none of `pids`."""
        return [r for r in self.due(blind) if r.pid not in pids]

    def unseen(self, pids: set[int], blind: list[tuple[float, float]] | None = None) -> str:
        """'' when every process the storm ran has one of `pids`; else what is missing.
        Processes that overlap a `blind` window (the collector down) are excused."""
        due = self.due(blind)
        missing = [r for r in due if r.pid not in pids]
        if not missing:
            return ""
        return (
            f"{len(missing)} of the {len(due)} processes the storm ran (while the collector "
            f"ran) were never logged: n {_ranges([r.n for r in missing])}, "
            f"pids {[r.pid for r in missing[:5]]}"
        )


@dataclass
class Outcome:
    """What each side holds at the end of a scenario."""

    collector_id: str
    last_seq: int = 0  # the collector's last seq (every seq up to it was published)
    wal: dict[int, tuple[int, ...]] = field(default_factory=dict)  # seq -> events' timeNs
    ledger_seqs: Counter = field(default_factory=Counter)  # collector seq -> entries
    ledger_gaps: list[str] = field(default_factory=list)  # ledger.gap entries' payloads
    detector_times: Counter = field(default_factory=Counter)  # event timeNs -> history rows
    verify_rc: int = -1
    verify_out: str = ""
    storm_ran: int = 0  # processes the storm ran
    storm_not_in_wal: str = ""  # Storm.unseen against the WAL's pids ('' when none)
    storm_not_in_ledger: str = ""  # ... against the ledger's
    logs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def ledger_problems(self) -> str:
        want = set(self.wal)
        missing = sorted(want - set(self.ledger_seqs))
        extra = sorted(set(self.ledger_seqs) - want)
        dups = sorted(s for s, n in self.ledger_seqs.items() if n > 1)
        if not (missing or extra or dups):
            return ""
        return (
            f"WAL holds {len(want)} events (seq {min(want, default=0)}-{max(want, default=0)}); "
            f"ledger missing {len(missing)} {_ranges(missing)}, extra {len(extra)}, "
            f"duplicated {len(dups)} {_ranges(dups)}; gap entries {self.ledger_gaps[:5]}"
        )

    def detector_problems(self) -> str:
        want = Counter(t for times in self.wal.values() for t in times)
        missing = want - self.detector_times
        extra = self.detector_times - want
        if not (missing or extra):
            return ""
        missing_seqs = sorted(s for s, ts in self.wal.items() if any(t in missing for t in ts))
        return (
            f"WAL holds {sum(want.values())} events; detector history lacks "
            f"{sum(missing.values())} {_ranges(missing_seqs)} and has "
            f"{sum(extra.values())} it should not"
        )


def _ranges(seqs: list[int], most: int = 6) -> str:
    """1,2,3,7 -> '[1-3, 7]' (the first few ranges)."""
    out: list[str] = []
    start = prev = None
    for s in seqs:
        if start is None:
            start = prev = s
        elif s == prev + 1:
            prev = s
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = s
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    more = f", ... ({len(out) - most} more)" if len(out) > most else ""
    return "[" + ", ".join(out[:most]) + more + "]"


class System:
    """Broker, collector, detector and ledger as real `daemoneye run` children of a
    World (tests/conftest.py), and what the fault tests do to them."""

    def __init__(self, world: World) -> None:
        self._start = world.start_service
        self.settings = world.settings
        # the fault tests follow every alert to the sink: no grouping into incidents,
        # unless the world asks for it
        self.env = {"DAEMONEYE_ALERTER__INCIDENT_WINDOW_S": "0", **world.env}
        self.rpc = world.rpc
        self.procs: dict[str, ServiceProcess] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.collector_id = f"collector@{world.settings.hostname}"
        self.old_logs: dict[str, list[str]] = {}
        self.collector_blind: list[tuple[float, float]] = []  # killed -> healthy again
        self._collector_down: float | None = None

    def start(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        if env is not None:
            self.envs[name] = env
        proc = self._start(name, env=self.envs.get(name, self.env))
        self.procs[name] = proc
        self.wait_healthy(name)
        if name == "collector" and self._collector_down is not None:
            self.collector_blind.append((self._collector_down, time.monotonic()))
            self._collector_down = None
        return proc

    def start_all(self, names: tuple[str, ...] = CORE) -> None:
        for name in names:
            self.start(name)

    def wait_healthy(self, name: str, timeout: float = 30) -> None:
        proc = self.procs[name]
        target = "control.broker" if name == "broker" else f"control.{name}"

        def answers() -> bool:
            if proc.proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.proc.returncode}:\n{proc.log()}")
            try:
                health = self.rpc.call(target, "health", timeout_s=1).value
            except RpcError:
                return False
            return health.get("pid") == proc.pid if name != "broker" else True

        wait_for(answers, timeout, f"{name} to answer health")

    def health(self, name: str) -> dict[str, Any]:
        target = "control.broker" if name == "broker" else f"control.{name}"
        return self.rpc.call(target, "health", timeout_s=3).value

    def kill9(self, name: str) -> None:
        if name == "collector":
            self._collector_down = time.monotonic() - KILL_GRACE_S
        proc = self.procs[name]
        proc.kill()
        self.old_logs.setdefault(name, []).append(proc.log())

    def sigstop(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGSTOP)

    def sigcont(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def restart(self, name: str) -> ServiceProcess:
        return self.start(name)

    def ledger_seqs(self) -> Counter:
        """Collector seqs the ledger holds so far (read-only: the ledger may run)."""
        return read_ledger(self.settings, self.collector_id)[0]

    def collector_last_seq(self) -> int:
        return int(self.health("collector")["metrics"].get("wal.last_seq", 0))

    def wait_sent(self, since: int, more_than: int, timeout: float) -> int:
        """Wait until the collector has sent more than `more_than` envelopes after seq
        `since` (what overflows a high-water mark is envelopes, and how many events one
        carries depends on the batching); how many it sent."""
        wait_for(
            lambda: self.collector_last_seq() - since > more_than,
            timeout,
            f"the collector to send more than {more_than} envelopes",
        )
        return self.collector_last_seq() - since

    def finish(self, storm: Storm | None = None, wait_detector: bool = True) -> Outcome:
        """Stop the collector cleanly, let the ledger and detector catch up with its last
        event, stop them, and read every side's stores; with the (stopped) `storm`, say
        which of its processes the WAL and the ledger lack."""
        out = Outcome(self.collector_id)
        out.metrics["collector"] = self.health("collector")["metrics"]
        last = int(out.metrics["collector"].get("wal.last_seq", 0))
        assert self.procs["collector"].stop() == 0, self.procs["collector"].log()
        out.wal = read_wal(self.settings, self.collector_id)
        last = max(out.wal, default=last)
        out.last_seq = last
        wait_for(
            lambda: last in self.ledger_seqs(),
            30,
            f"the ledger to record the collector's last event (seq {last})",
        )
        last_time = out.wal.get(last, (0,))[-1]
        if wait_detector:
            wait_for(
                lambda: self._detector_has(last_time),
                30,
                f"the detector's history to hold the last event (seq {last})",
            )
        for name in ("detector", "ledger"):
            out.metrics[name] = self.health(name)["metrics"]
        for name in ("detector", "ledger"):
            assert self.procs[name].stop() == 0, self.procs[name].log()
        out.ledger_seqs, out.ledger_gaps = read_ledger(self.settings, self.collector_id)
        out.detector_times = read_history(self.settings, self.collector_id)
        if storm is not None:
            out.storm_ran, blind = len(storm.ran), self.collector_blind
            in_wal = wal_pids(self.settings, self.collector_id)
            out.storm_not_in_wal = storm.unseen(in_wal, blind)
            if out.storm_not_in_wal:
                out.storm_not_in_wal += "; " + capture_diagnosis(
                    self.settings,
                    self.collector_id,
                    storm.marker,
                    storm.missing(in_wal, blind),
                    out.metrics["collector"],
                )
            pids = ledger_pids(self.settings, self.collector_id)
            out.storm_not_in_ledger = storm.unseen(pids, blind)
        if out.storm_not_in_wal:
            log = "\n".join([*self.old_logs.get("collector", []), self.procs["collector"].log()])
            errors = [x for x in log.splitlines() if "level=error" in x or "failed" in x]
            out.storm_not_in_wal += f"; collector errors: {errors[-5:]}"
        verify = daemoneye("ledger", "verify", env=self.env, timeout=120, COLUMNS="200")
        out.verify_rc, out.verify_out = verify.returncode, verify.stdout + verify.stderr
        out.logs = {
            n: "\n".join([*self.old_logs.get(n, []), p.log()]) for n, p in self.procs.items()
        }
        return out

    def _detector_has(self, time_ns: int) -> bool:
        try:
            rows = self.rpc.call(
                "control.detector", "history", {"since_ns": time_ns, "limit": 50}, timeout_s=2
            ).value
        except RpcError:
            return False
        return any(r.get("time_ns") == time_ns for r in rows)


class SystemWorld(World):
    """A World with its System: the services of a fault scenario started by name."""

    def __init__(self, base: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(base, extra_env)
        self.system = System(self)
