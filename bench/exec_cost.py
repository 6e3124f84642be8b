"""Cost per exec: the whole system through `daemoneye up` under an exec generator.

    sudo .venv/bin/python bench/exec_cost.py                 # 50, 200, 800 exec/s, unpaced
    sudo .venv/bin/python bench/exec_cost.py --rates 200 --seconds 20

A small generator (C, compiled at run time when a compiler exists, else Python)
fork-execs a copy of `/bin/true` placed in a directory no shipped rule matches, at a
paced rate and unpaced (two loops). Before `daemoneye up` starts, the same generator
runs unpaced on the bare machine: that is the unmonitored rate of this run. Then,
with every service up (the shipped rules plus one probe rule):

- CPU of every service process (and its children: the collector's reader) from
  /proc/<pid>/stat over each load window, minus its idle rate, per exec;
- the achieved rate against the asked one, and unpaced against the unmonitored rate;
- execs captured: the generator's own count against the collector's WAL
  (each exec's argv carries a marker and its number);
- exec -> alert p99 for one matching rule, in a window of its own after the loads
  (100 exec/s, every 10th exec carries an `alert` tag that the probe rule matches; the
  exec's time is in its argv, the alert's arrival is when its line shows up in the file
  sink). The cost windows carry no tag: what they measure is the cost of execs no rule
  matches, the load a monitored host carries all day;
- idle CPU and PSS (/proc/<pid>/smaps_rollup) of every process at idle;
- with `--outside [COMMAND]`, the same figures under a generator this bench did not
  write (default: two POSIX shell loops exec'ing the copy of true), its execs counted by
  the kernel (perf's sched_process_exec tracepoint), unmonitored first, then monitored;
  "captured" is then the collector's published start events against the kernel's count
  of execs on the host in the window;
- with `--overload LOOPS`, the unpaced generator again with LOOPS shell exec loops beside
  it, more execs than the services keep up with on a small machine: how many of the
  generator's execs were still captured with their argv (no CPU figure per exec: the
  services serve the loops' execs too).

Budget (DESIGN.md / issue 16): <= 0.3 ms of services' CPU per exec at 200 exec/s and
unpaced; unpaced monitored >= 85 % of unmonitored; idle <= 1 % of a core; every exec
captured; the whole system <= 120 MB PSS at idle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.stored
import _outside
from _harness import percentile, verdict

from daemoneye.bus import SocketFactory, wait_for_endpoint
from daemoneye.config import load_settings
from daemoneye.metrics import labelled
from daemoneye.procfs import IMPLEMENTATION as PROCREAD
from daemoneye.rpc import RpcError, call_once
from daemoneye.wirecheck import IMPLEMENTATION as WIRECHECK
from daemoneye.wirepack import IMPLEMENTATION as WIREPACK
from daemoneye.wireread import IMPLEMENTATION as WIREREAD
from tests.stored import wal_argv_pids, wal_pids_without_argv

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_RULES = ROOT / "deploy" / "rules"
TRUE = "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"
TICK = os.sysconf("SC_CLK_TCK")
SERVICES = ("broker", "collector", "detector", "alerter", "ledger")
PROBE = (100.0, 10)  # the latency window: exec/s, every how many execs one is tagged
BUDGET_MS_PER_EXEC = 0.3
BUDGET_PSS_MB = 120.0

GENERATOR_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

/* gen TRUE MARKER RATE SECONDS WORKERS: fork-exec TRUE MARKER N [alert TIME_NS]
   at RATE per second in all (0: as fast as it can), for SECONDS; prints the count. */
static long long now_ns(clockid_t c) {
    struct timespec t; clock_gettime(c, &t); return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    const char *exe = argv[1], *marker = argv[2];
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int workers = atoi(argv[5]), every = atoi(argv[6]);
    int pipefd[2]; if (pipe(pipefd)) return 1;
    for (int w = 0; w < workers; w++) {
        if (fork() == 0) {
            long long start = now_ns(CLOCK_MONOTONIC);
            long long end = start + (long long)(seconds * 1e9);
            double gap = rate > 0 ? 1e9 * workers / rate : 0;
            long n = 0;
            char num[32], stamp[32];
            for (;;) {
                long long due = start + (long long)(gap * n) + (long long)(gap * w / workers);
                if (due >= end) break;
                if (gap > 0) {
                    struct timespec t = { due / 1000000000LL, due % 1000000000LL };
                    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
                } else if (now_ns(CLOCK_MONOTONIC) >= end) break;
                long k = n * workers + w;
                snprintf(num, sizeof num, "%ld", k);
                snprintf(stamp, sizeof stamp, "%lld", now_ns(CLOCK_REALTIME));
                int tagged = every > 0 && k % every == 0;
                pid_t pid = fork();
                if (pid == 0) {
                    char *args[] = { (char *)exe, (char *)marker, num,
                                     tagged ? "alert" : NULL, stamp, NULL };
                    execv(exe, args);
                    _exit(127);
                }
                if (pid > 0) waitpid(pid, NULL, 0);
                n++;
            }
            if (write(pipefd[1], &n, sizeof n) != sizeof n) _exit(1);
            _exit(0);
        }
    }
    close(pipefd[1]);
    long total = 0, n;
    while (read(pipefd[0], &n, sizeof n) == sizeof n) total += n;
    while (wait(NULL) > 0) {}
    printf("%ld\n", total);
    return 0;
}
"""


def python_generator(
    exe: str, marker: str, rate: float, seconds: float, workers: int, every: int
) -> int:
    """The fallback when no C compiler is here: the same loop with os.fork/os.execv."""
    counts = []
    for w in range(workers):
        r, wfd = os.pipe()
        if os.fork() == 0:
            os.close(r)
            start = time.monotonic()
            gap = workers / rate if rate > 0 else 0.0
            n = 0
            while True:
                due = start + gap * n + gap * w / workers
                if due >= start + seconds or (gap == 0 and time.monotonic() >= start + seconds):
                    break
                if gap:
                    time.sleep(max(0.0, due - time.monotonic()))
                k = n * workers + w
                args = [exe, marker, str(k)]
                if every and k % every == 0:
                    args += ["alert", str(time.time_ns())]
                pid = os.fork()
                if pid == 0:
                    os.execv(exe, args)
                os.waitpid(pid, 0)
                n += 1
            os.write(wfd, str(n).encode())
            os._exit(0)
        os.close(wfd)
        counts.append(r)
    total = 0
    for r in counts:
        total += int(os.read(r, 64) or b"0")
        os.close(r)
    for _ in range(workers):
        os.wait()
    return total


@dataclass
class Generator:
    exe: str  # the copy of /bin/true that the generator runs
    binary: str | None  # the compiled C generator, None for the Python fallback

    def run(self, marker: str, rate: float, seconds: float, workers: int, every: int = 0) -> int:
        """Fork-exec the copy of true; with `every`, each every-th exec is tagged."""
        if self.binary is None:
            return python_generator(self.exe, marker, rate, seconds, workers, every)
        argv = [self.binary, self.exe, marker, str(rate), str(seconds), str(workers)]
        out = subprocess.run(
            [*argv, str(every)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())


def build_generator(work: Path) -> Generator:
    # Where no shipped rule looks (see main: not in a world-writable directory).
    exe = work / "bin" / "de-cost-true"
    exe.parent.mkdir(parents=True)
    shutil.copy2(TRUE, exe)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("no C compiler: the Python generator (slower, costs more per exec itself)")
        return Generator(str(exe), None)
    src = work / "gen.c"
    src.write_text(GENERATOR_C)
    binary = work / "gen"
    subprocess.run([cc, "-O2", "-o", str(binary), str(src)], check=True)
    return Generator(str(exe), str(binary))


# --- the system under test -----------------------------------------------------------


def write_probe_rule(rules_dir: Path, marker: str) -> None:
    shutil.copytree(SHIPPED_RULES, rules_dir, ignore=shutil.ignore_patterns("*.md"))
    (rules_dir / "zz-exec-cost-probe.yml").write_text(
        "id: exec-cost-probe\n"
        "name: exec_cost.py probe\n"
        "severity: low\n"
        "description: matches the tagged execs of bench/exec_cost.py\n"
        f"sql: SELECT pid, name, cmdline FROM processes WHERE cmdline LIKE '%{marker}-% alert %'\n"
        "enabled: true\n"
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its reaped children are not counted: none are)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class System:
    up: subprocess.Popen
    settings: object
    procs: dict[str, list[int]] = field(default_factory=dict)  # service -> pids

    def discover(self) -> None:
        """The supervisor and each service with its descendants (the collector's reader)."""
        self.procs = {"up": [self.up.pid]}
        for child in psutil.Process(self.up.pid).children():
            cmd = " ".join(child.cmdline())
            name = next((s for s in SERVICES if f"run {s}" in cmd or f".{s}" in cmd), cmd)
            pids = [child.pid] + [c.pid for c in child.children(recursive=True)]
            self.procs.setdefault(name, []).extend(pids)
        # The collector's netlink reader and its spare outlive the main process by design:
        # double-forked, so not our descendants. Found by the run dir in their environment.
        counted = {p for pids in self.procs.values() for p in pids}
        run_dir = os.environ.get("DAEMONEYE_RUN_DIR", "")
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid in counted or "collector" not in " ".join(proc.info["cmdline"] or []):
                continue
            try:
                if proc.environ().get("DAEMONEYE_RUN_DIR") == run_dir:
                    self.procs.setdefault("collector", []).append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def cpu(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.procs.items()}


def start_system(env: dict[str, str], rules_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "daemoneye", "up", "--rules-dir", str(rules_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_healthy(settings, names: tuple[str, ...], deadline_s: float) -> None:
    if not wait_for_endpoint(settings.endpoint("control"), deadline_s):
        raise RuntimeError("the broker did not start")
    factory = SocketFactory(settings)
    try:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                reply = call_once(
                    factory, settings.endpoint("control"), "control.broker", "registry"
                )
                up = {s["service"] for s in reply.value if s.get("state") == "healthy"}
                if set(names) <= up:
                    return
            except RpcError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"services not healthy within {deadline_s:g} s")
    finally:
        factory.shutdown()


class SinkWatcher(threading.Thread):
    """Notes when each probe alert's line first appears in the file sink."""

    def __init__(self, path: Path, marker: str) -> None:
        super().__init__(daemon=True)
        self.path, self.marker = path, marker.encode()
        self.latencies_ms: list[float] = []
        self.lines = 0  # every line of the sink: alerts of any rule
        self.rules: Counter[str] = Counter()  # lines by rule id: what fired beside the probe
        self.stop = threading.Event()

    def run(self) -> None:
        offset, pending = 0, b""
        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            now = time.time_ns()
            offset += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            self.lines += len(lines)
            for line in lines:
                if self.marker in line:
                    self.note(line, now)
                self.rules[_rule_of(line)] += 1
            self.stop.wait(0.002)

    def note(self, line: bytes, now: int) -> None:
        record = orjson.loads(line)
        argv = (record.get("alert") or record).get("process", {}).get("cmdline") or []
        if len(argv) >= 5 and argv[3] == "alert":
            self.latencies_ms.append((now - int(argv[4])) / 1e6)


def _rule_of(line: bytes) -> str:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "(not JSON)"
    return str((record.get("alert") or record).get("ruleId") or record.get("type") or "?")


def captured(settings, collector_id: str, marker: str) -> set[int]:
    """Numbers of the generator's execs that the collector's WAL holds with their argv."""
    return {int(n) for n in wal_argv_pids(settings, collector_id, marker) if n.isdigit()}


# --- the run -------------------------------------------------------------------------


@dataclass
class Load:
    label: str
    rate: float  # 0 = unpaced
    workers: int
    every: int = 0  # tag every n-th exec for the probe rule (0: none)


def measure(system: System, gen: Generator, load: Load, seconds: float, idle: dict, marker: str):
    before, t0 = system.cpu(), time.monotonic()
    ran = gen.run(f"{marker}-{load.label}", load.rate, seconds, load.workers, load.every)
    elapsed = time.monotonic() - t0
    after = system.cpu()
    per_exec = {
        name: max(0.0, after[name] - before[name] - idle.get(name, 0.0) * elapsed) * 1000 / ran
        for name in after
        if ran
    }
    return ran, elapsed, per_exec


OVERLOAD = "overload"


def measure_overloaded(system: System, gen: Generator, args, idle: dict, marker: str):
    """The unpaced generator with shell exec loops beside it (in a session of their own,
    killed whole after the window)."""
    loops = subprocess.Popen(
        ["sh", "-c", _outside.shell_loop(gen.exe, args.overload)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        load = Load(OVERLOAD, 0.0, args.workers)
        ran, elapsed, per_exec = measure(system, gen, load, args.seconds, idle, marker)
    finally:
        os.killpg(loops.pid, signal.SIGKILL)
        loops.wait()
    return load, ran, elapsed, per_exec


@dataclass
class Outside:
    counted: _outside.Counted
    per_exec: dict[str, float]  # service -> CPU ms per exec, idle subtracted
    starts: int  # start events the collector published in the window


def collector_metrics(settings) -> dict[str, float]:
    factory = SocketFactory(settings)
    try:
        reply = call_once(factory, settings.endpoint("control"), "control.collector", "health")
        return reply.value["metrics"]
    finally:
        factory.shutdown()


def collector_starts(settings) -> int:
    return int(collector_metrics(settings).get("published.start", 0))


def measure_outside(system: System, command: str, seconds: float, idle: dict) -> Outside:
    starts0, before = collector_starts(system.settings), system.cpu()
    counted = _outside.run(command, seconds)
    after = system.cpu()
    # the last execs' start events leave the collector within its batching wait
    deadline, starts = time.monotonic() + 5, collector_starts(system.settings)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = collector_starts(system.settings)
        if now == starts:
            break
        starts = now
    per_exec = {
        name: max(0.0, after[name] - before[name] - idle.get(name, 0.0) * counted.seconds)
        * 1000
        / max(1, counted.execs)
        for name in after
    }
    return Outside(counted, per_exec, starts - starts0)


def print_outside(out: Outside, command: str, bare: _outside.Counted) -> int:
    total = sum(out.per_exec.values())
    by = "  ".join(f"{n} {v:.3f}" for n, v in sorted(out.per_exec.items(), key=lambda x: -x[1]))
    share = out.counted.rate / bare.rate * 100 if bare.rate else 0.0
    seen = out.starts / out.counted.execs * 100 if out.counted.execs else 0.0
    print(f"\noutside generator: {command}")
    print(f"  execs counted by {out.counted.how}")
    rates = f"{out.counted.rate:,.0f} exec/s monitored, {bare.rate:,.0f} unmonitored"
    print(f"  {rates}: {share:.1f} %")
    print(f"  {total:.3f} ms per exec  {by}")
    print(
        f"  start events published {out.starts:,} for {out.counted.execs:,} execs on the "
        f"host ({seen:.2f} %)"
    )
    over = total > BUDGET_MS_PER_EXEC or share < 85
    print(
        f"  budget <= {BUDGET_MS_PER_EXEC} ms per exec: {verdict(total, BUDGET_MS_PER_EXEC, False)}"
        f"; >= 85 % of unmonitored: {verdict(share, 85)}"
    )
    return int(over)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="50,200,800", help="paced loads, exec/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each load")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="unpaced loops")
    parser.add_argument("--probe-seconds", type=float, default=10.0, help="latency window")
    parser.add_argument(
        "--outside",
        nargs="?",
        const="shell",
        metavar="COMMAND",
        help="also measure under an outside generator: a shell command line run for "
        "--seconds (default `shell`: two sh loops exec'ing a copy of true)",
    )
    parser.add_argument(
        "--overload",
        type=int,
        default=0,
        metavar="LOOPS",
        help="also run the unpaced generator with LOOPS POSIX shell loops exec'ing the same "
        "copy of true beside it, the host past what the services keep up with: prints how "
        "many of the generator's execs were captured with their argv",
    )
    parser.add_argument(
        "--idle-only",
        action="store_true",
        help="only the idle figures (CPU and PSS, each process's PSS too): no generator runs",
    )
    parser.add_argument(
        "--probe-only",
        action="store_true",
        help="only the exec -> alert probe (--probe-seconds long): no bare run, idle figures "
        "or loads",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("exec_cost.py needs root (the collector's netlink reader): not run")
        return 2

    # Not under /tmp, /var/tmp or /dev/shm: the shipped rules alert on every exec from
    # a world-writable place (de-exec-world-writable), and the cost measured here is
    # that of execs no rule matches. /var/lib is root's and where nothing looks.
    with tempfile.TemporaryDirectory(prefix="daemoneye-exec-cost-", dir="/var/lib") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        gen = build_generator(work)
        marker = f"ec{uuid.uuid4().hex[:8]}"
        loads = [Load(f"{float(r):g}/s", float(r), 2) for r in args.rates.split(",") if r]
        loads.append(Load("unpaced", 0.0, args.workers))
        if args.probe_only:
            loads, args.outside, args.overload = [], None, 0
        probe = Load("probe", PROBE[0], 2, PROBE[1])

        print(f"structure check of each received message: the {WIRECHECK} walk (wirecheck)")
        print(f"/proc record read of each exec: the {PROCREAD} read (procfs)")
        print(f"writer of each event the collector publishes: the {WIREPACK} writer (wirepack)")
        print(f"reader of each event and alert: the {WIREREAD} reader (wireread)")
        bare = 0.0
        if not (args.idle_only or args.probe_only):
            gen.run(f"{marker}-warm", 0, 1.0, args.workers)
            bare = gen.run(f"{marker}-bare", 0, args.seconds, args.workers) / args.seconds
            print(f"unmonitored, unpaced ({args.workers} loops): {bare:,.0f} exec/s")
        if args.outside == "shell":
            args.outside = _outside.shell_loop(gen.exe, args.workers)
        if args.outside and not args.idle_only:
            args.outside_bare = _outside.run(args.outside, args.seconds)
            print(
                f"unmonitored, outside generator: {args.outside_bare.rate:,.0f} exec/s "
                f"(counted by {args.outside_bare.how})"
            )

        rules_dir = work / "rules"
        write_probe_rule(rules_dir, marker)
        env = dict(os.environ)
        env.update(
            DAEMONEYE_RUN_DIR=str(work / "run"),
            DAEMONEYE_DATA_DIR=str(work / "data"),
            DAEMONEYE_LOG_LEVEL="warning",
            # every probe alert to the sink: the generator's execs share one session, which
            # the alerter would otherwise group into one incident (one line)
            DAEMONEYE_ALERTER__INCIDENT_WINDOW_S="0",
        )
        os.environ.update({k: env[k] for k in ("DAEMONEYE_RUN_DIR", "DAEMONEYE_DATA_DIR")})
        settings = load_settings()
        up = start_system(env, rules_dir)
        argv_lost: dict[str, float] = {}
        try:
            status, rows = run(System(up, settings), gen, loads, probe, marker, bare, args)
            metrics = collector_metrics(settings)
            argv_lost = {
                why: metrics.get(labelled("argv.lost", why=why), 0) for why in ("late_wake", "busy")
            }
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
        # The WAL is read once the collector has stopped (it owns the files while it runs).
        collector_id = f"collector@{settings.hostname}"
        print()
        missed = 0
        for load, ran, _, _ in rows:
            got = len(captured(settings, collector_id, f"{marker}-{load.label}"))
            share = got / ran * 100 if ran else 0.0
            print(f"captured {load.label:>9}: {got:,} of {ran:,} ({share:.2f} %)")
            status |= got < ran
            missed += max(0, ran - got)
        if missed:
            late = wal_pids_without_argv(settings, collector_id, gen.exe)
            print(
                f"  of the {missed:,} missed, at least {len(late):,} are in the WAL by the name of"
                " the copy of true without its argv: read after they exited (the reader woke"
                " too late), not lost"
            )
        if argv_lost:  # host-wide: the generator's execs and any other
            print(
                f"  argv lost (process gone at the /proc read), all execs: "
                f"{argv_lost['late_wake']:.0f} woken too late (exec while the reader slept),"
                f" {argv_lost['busy']:.0f} while it was busy"
            )
        return status


def measure_idle(system: System, args) -> tuple[dict[str, float], int]:
    """Each service's CPU at idle (seconds a second) and PSS, printed; 1 if PSS is over."""
    c0, t0 = system.cpu(), time.monotonic()
    time.sleep(args.idle_seconds)
    elapsed = time.monotonic() - t0
    idle = {n: (v - c0[n]) / elapsed for n, v in system.cpu().items()}
    pss = {n: sum(pss_mb(p) for p in pids) for n, pids in system.procs.items()}

    print(f"\nidle, {len(psutil.pids())} processes on the host:")
    for name in sorted(idle):
        print(f"  {name:10s} CPU {idle[name] * 100:6.2f} % of a core   PSS {pss[name]:6.1f} MB")
    total_idle, total_pss = sum(idle.values()) * 100, sum(pss.values())
    print(
        f"  {'all':10s} CPU {total_idle:6.2f} % (budget 1 %: {verdict(total_idle, 1.0, False)})"
        f"   PSS {total_pss:6.1f} MB (budget {BUDGET_PSS_MB:g}: "
        f"{verdict(total_pss, BUDGET_PSS_MB, False)})"
    )
    if args.idle_only:
        for name, pids in sorted(system.procs.items()):
            print(f"  {name:10s} " + "  ".join(f"{p}: {pss_mb(p):.1f}" for p in pids))
    return idle, int(total_pss > BUDGET_PSS_MB)


def run(
    system: System,
    gen: Generator,
    loads: list[Load],
    probe: Load,
    marker: str,
    bare: float,
    args,
) -> tuple[int, list]:
    settings = system.settings
    wait_healthy(settings, SERVICES, 60)
    time.sleep(3)  # let start-up work (snapshot, rule load, first checkpoint) settle
    system.discover()
    idle: dict[str, float] = {}  # service -> CPU seconds a second at idle
    if not args.probe_only:
        idle, over = measure_idle(system, args)
        if args.idle_only:
            return over, []

    watcher = SinkWatcher(Path(settings.data_dir) / "alerts.jsonl", marker)
    watcher.start()
    rows = []
    alerted: dict[str, Counter[str]] = {}
    for load in loads:
        before = Counter(watcher.rules)
        ran, elapsed, per_exec = measure(system, gen, load, args.seconds, idle, marker)
        rows.append((load, ran, elapsed, per_exec))
        alerted[load.label] = Counter(watcher.rules) - before
    if args.overload:
        rows.append(measure_overloaded(system, gen, args, idle, marker))
    outside = measure_outside(system, args.outside, args.seconds, idle) if args.outside else None
    probed = gen.run(f"{marker}-probe", probe.rate, args.probe_seconds, probe.workers, probe.every)
    tagged = (probed + probe.every - 1) // probe.every
    deadline = time.monotonic() + 10
    while len(watcher.latencies_ms) < tagged and time.monotonic() < deadline:
        time.sleep(0.1)  # the last alerts reach the sink
    watcher.stop.set()
    watcher.join()

    print(f"\n{'load':>9} {'exec/s':>8} {'ms/exec':>8}  by service (ms per exec)")
    status = 0
    for load, ran, elapsed, per_exec in rows:
        if load.label == OVERLOAD:
            print(
                f"{load.label:>9} {ran / elapsed:8,.0f}  beside {args.overload} shell exec loops"
                " (the services serve their execs too: no figure per exec; capture below)"
            )
            continue
        total = sum(per_exec.values())
        by = "  ".join(f"{n} {v:.3f}" for n, v in sorted(per_exec.items(), key=lambda x: -x[1]))
        rate = ran / elapsed
        print(f"{load.label:>9} {rate:8,.0f} {total:8.3f}  {by}")
        if alerted.get(load.label):
            fired = alerted[load.label]
            which = ", ".join(f"{rule} {n}" for rule, n in fired.most_common())
            print(
                f"{'':>9} {fired.total():,} alert lines meanwhile ({which}):"
                " not only execs no rule matches"
            )
        if load.rate == 200 or load.rate == 0:
            ok = verdict(total, BUDGET_MS_PER_EXEC, False)
            print(f"{'':>9} budget <= {BUDGET_MS_PER_EXEC} ms per exec: {ok}")
            status |= ok != "OK"
        if load.rate == 0:
            share = rate / bare * 100 if bare else 0
            print(
                f"{'':>9} {share:.1f} % of the unmonitored {bare:,.0f} exec/s (budget >= 85 %:"
                f" {verdict(share, 85)})"
            )

    if outside is not None:
        status |= print_outside(outside, args.outside, args.outside_bare)

    lat = watcher.latencies_ms
    if lat:
        print(
            f"\nexec -> alert in the file sink, {probe.rate:g} exec/s, 1 in {probe.every} "
            f"matching ({len(lat)} of {tagged} probe alerts): p50 "
            f"{percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms "
            f"(budget p99 <= 50 ms: {verdict(percentile(lat, 99), 50, False)})"
        )
    else:
        print("\nexec -> alert: no probe alert reached the file sink")
    return status, rows


if __name__ == "__main__":
    sys.exit(main())
