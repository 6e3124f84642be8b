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
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemoneye.config import Settings
from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import ServiceProcess, wait_for
from tests.stored import read_history, read_ledger, read_wal

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
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


def alerter_reason() -> str:
    """Why the alerter cannot take part ('' when it can): it must be committed."""
    root = Path(__file__).resolve().parents[2]
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "services/alerter/service.py"],
        cwd=root,
        capture_output=True,
    )
    if tracked.returncode != 0:
        return "services/alerter is not committed yet"
    try:
        import daemoneye.services.alerter.service  # noqa: F401
    except Exception as exc:  # any import failure means: not ready
        return f"services/alerter is not importable: {exc}"
    return ""


class Storm:
    """A thread that runs `true <marker> <n>` at a steady rate until stopped."""

    def __init__(self, rate: float, marker: str) -> None:
        self.rate = rate
        self.marker = marker
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="storm")

    def start(self) -> Storm:
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            subprocess.run([TRUE, self.marker, str(self.count)], check=False)
            self.count += 1
            due += period
            self._stop.wait(max(0.0, due - time.monotonic()))  # paced, not a sync sleep

    def wait_more(self, n: int, timeout: float = 20) -> None:
        """Wait until `n` more processes have been run."""
        target = self.count + n
        wait_for(lambda: self.count >= target, timeout, f"{n} more storm processes")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


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
    """Broker, collector, detector and ledger as real `daemoneye run` children."""

    def __init__(
        self,
        start_service: Any,
        settings: Settings,
        run_env: dict[str, str],
        rpc_client: RpcClient,
    ) -> None:
        self._start = start_service
        self.settings = settings
        self.env = run_env
        self.rpc = rpc_client
        self.procs: dict[str, ServiceProcess] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.collector_id = f"collector@{settings.hostname}"
        self.old_logs: dict[str, list[str]] = {}

    def start(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        if env is not None:
            self.envs[name] = env
        proc = self._start(name, env=self.envs.get(name, self.env))
        self.procs[name] = proc
        self.wait_healthy(name)
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

    def finish(self, wait_detector: bool = True) -> Outcome:
        """Stop the collector cleanly, let the ledger and detector catch up with its last
        event, stop them, and read every side's stores."""
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
        verify = subprocess.run(
            [sys.executable, "-m", "daemoneye", "ledger", "verify"],
            env={**self.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
        )
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


class World:
    """The fixtures of tests/conftest.py for a whole module: one run dir, data dir,
    settings, RPC client and the services started in it (stopped on close)."""

    def __init__(self, base: Path, extra_env: dict[str, str] | None = None) -> None:
        import pytest
        import zmq

        from daemoneye.bus import SocketFactory
        from daemoneye.config import load_settings
        from tests.conftest import HEARTBEAT_S

        self.base = base
        self.run_dir = Path(f"/tmp/de-f{os.getpid()}-{base.name[-12:]}")
        self.env = dict(os.environ)
        self.env.update(
            DAEMONEYE_RUN_DIR=str(self.run_dir),
            DAEMONEYE_DATA_DIR=str(base / "data"),
            DAEMONEYE_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
            DAEMONEYE_RPC_TIMEOUT_S="2",
            DAEMONEYE_LOG_LEVEL="debug",
        )
        # the fault tests follow every alert to the sink: no grouping into incidents
        self.env["DAEMONEYE_ALERTER__INCIDENT_WINDOW_S"] = "0"
        self.env.update(extra_env or {})
        with pytest.MonkeyPatch.context() as mp:
            for key, value in self.env.items():
                if key.startswith("DAEMONEYE_"):
                    mp.setenv(key, value)
            self.settings = load_settings()
        self.factory = SocketFactory(self.settings, zmq.Context())
        self.rpc = RpcClient(self.factory, self.settings.endpoint("control"), "fault-test", 3.0)
        self.started: list[ServiceProcess] = []
        self.system = System(self.start_service, self.settings, self.env, self.rpc)

    def start_service(self, name: str, *args: str, env: dict[str, str] | None = None):
        log = self.base / f"{name}-{len(self.started)}.log"
        proc = ServiceProcess(name, env or self.env, log, *args)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.factory.close_all(linger_ms=0)
        self.factory.context.term()
        subprocess.run(["rm", "-rf", str(self.run_dir)], check=False)
