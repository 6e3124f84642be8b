"""Soak: the whole system for a set time under a paced fork/exec storm.

    sudo .venv/bin/python bench/soak.py --minutes 10 --rate 1000
    sudo .venv/bin/python bench/soak.py --minutes 1 --rate 500 --png soak.png

Runs broker, ledger, detector and collector (and the alerter when it is installed)
as `daemoneye run` children in a temp dir, a rule that matches the storm's marker
argv, and a storm process that posix_spawns `true <marker> <n> <spawn_ns>` at
`--rate` per second. Prints, every 10 s and at the end: events/s, drops, gaps,
replays, exec-to-alert latency (spawn -> the detector sending the alert, from the
envelope's send time, so this probe's own scheduling is not counted; spawn -> the
alerter's receipt, its `receivedNs`; and spawn -> the alert's line in the file sink,
which the budget is about, as bench/sink_tail.py first reads it), per-service CPU and RSS
over time (a terminal plot; a PNG too with --png when matplotlib is installed), and
a final verdict: the collector's WAL seq range against what the ledger and the
detector's history hold, storm processes captured, alerts lost or duplicated.

Budget (DESIGN.md / issue 8): 10 minutes at 1,000 exec/s on 2 cores with zero lost
events, RSS flat (<= 10 % growth after warm-up), exec -> alert p99 <= 50 ms,
short-lived processes captured >= 99.5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.stored
from _harness import percentile, verdict
from sink_tail import storm_alert

from daemoneye.bus import SocketFactory, Subscriber, Topics, wait_for_endpoint
from daemoneye.config import Settings, load_settings
from daemoneye.rpc import RpcClient, RpcError
from tests.stored import read_history, read_ledger, read_wal

TRUE = "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"
ORDER = ("broker", "ledger", "alerter", "detector", "collector")  # consumers first
WARMUP = 0.2  # share of the run before RSS is taken as the baseline
SPARK = " ▁▂▃▄▅▆▇█"


# --- the storm (a child process, so its forks do not share our GIL) -----------------


ALERT_EVERY = 1  # set in the storm child from --alert-every
STORM_WORKERS = 2  # posix_spawn blocks until the child has exec'd (~0.5 ms here, longer
# under contention): one spawner alone falls behind its pace on a busy machine


def storm(rate: float, seconds: float, marker: str) -> None:
    """STORM_WORKERS forked spawners, each paced at rate / STORM_WORKERS; storm number n
    comes from worker n % STORM_WORKERS. Prints what they spawned and their CPU."""
    t0 = time.monotonic()
    counts_r, counts_w = os.pipe()
    workers = []
    for slot in range(STORM_WORKERS):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                k = spawn_paced(rate / STORM_WORKERS, t0, t0 + seconds, marker, slot)
                os.write(counts_w, f"{k}\n".encode())
                code = 0
            finally:
                os._exit(code)
        workers.append(pid)
    os.close(counts_w)
    for pid in workers:
        os.waitpid(pid, 0)
    with os.fdopen(counts_r) as counts:
        spawned = sum(int(line) for line in counts if line.strip())
    took = time.monotonic() - t0
    cpu = sum(
        r.ru_utime + r.ru_stime
        for r in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )
    print(json.dumps({"spawned": spawned, "seconds": took, "cpu_pct": cpu / took * 100}))


def spawn_paced(rate: float, t0: float, end: float, marker: str, slot: int) -> int:
    period, k, live = 1.0 / rate, 0, 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = t0 + k * period
        if now < due:
            time.sleep(min(due - now, 0.01))  # pacing the storm, not synchronising
        else:
            n = k * STORM_WORKERS + slot
            tag = "alert" if n % ALERT_EVERY == 0 else "quiet"
            os.posix_spawn(TRUE, [TRUE, marker, str(n), str(time.time_ns()), tag], {})
            k += 1
            live += 1
        while live:  # reap whatever has exited
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                live = 0
                break
            if pid == 0:
                break
            live -= 1
    while live:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
        live -= 1
    return k


# --- the system ------------------------------------------------------------------------


def alerter_ready() -> bool:
    try:
        import daemoneye.services.alerter.service  # noqa: F401
    except Exception:
        return False
    return True


def write_rule(rules_dir: Path, marker: str) -> None:
    """Every storm process is judged by the rule; those tagged `alert` (1 in
    --alert-every) match it."""
    rules_dir.mkdir(parents=True)
    (rules_dir / "soak.yml").write_text(
        "id: soak-storm\n"
        "name: Soak storm process\n"
        "description: matches the soak storm's marker argv\n"
        "severity: low\n"
        f"sql: SELECT pid, name, cmdline FROM processes WHERE cmdline LIKE '%{marker} % alert'\n"
    )


class System:
    def __init__(self, tmp: Path, rules_dir: Path) -> None:
        self.env = dict(os.environ)
        self.env.update(
            DAEMONEYE_RUN_DIR=f"/tmp/de-soak-{os.getpid()}",
            DAEMONEYE_DATA_DIR=str(tmp / "data"),
            DAEMONEYE_LOG_LEVEL="warning",
            DAEMONEYE_RULES_DIR=str(rules_dir),
            # every storm process is alerted and followed to the sink: no incidents
            DAEMONEYE_ALERTER__INCIDENT_WINDOW_S="0",
        )
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("DAEMONEYE_")})
        self.settings: Settings = load_settings()
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.factory = SocketFactory(self.settings, zmq.Context())
        self.rpc = RpcClient(self.factory, self.settings.endpoint("control"), "soak", 5.0)
        self.collector_id = f"collector@{self.settings.hostname}"

    def published_events(self) -> int:
        """Process events the collector has published so far (from its health)."""
        metrics = self.health("collector").get("metrics", {})
        return int(sum(v for k, v in metrics.items() if k.startswith("published.")))

    def start(self, names: list[str]) -> None:
        for name in names:
            log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives with the child
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "daemoneye", "run", name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if name == "broker":
                if not wait_for_endpoint(self.settings.endpoint("control"), 20):
                    raise SystemExit("the broker did not start")
            else:
                self.wait_health(name)

    def wait_health(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise SystemExit(f"{name} exited; see {self.tmp / (name + '.log')}")
            if self.health(name):
                return
            time.sleep(0.1)  # polling a service coming up
        raise SystemExit(f"{name} did not answer within {timeout} s")

    def health(self, name: str) -> dict[str, Any]:
        try:
            return self.rpc.call(Topics.control(name), "health", timeout_s=3).value
        except RpcError:
            return {}

    def stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        self.rpc.close()
        self.factory.close_all(linger_ms=0)
        subprocess.run(["rm", "-rf", self.env["DAEMONEYE_RUN_DIR"]], check=False)


# --- reading each side's stores --------------------------------------------------------


# --- sampling and plotting -----------------------------------------------------------


class Sampler:
    """CPU % and RSS of each service process, once a second."""

    def __init__(self, procs: dict[str, subprocess.Popen]) -> None:
        self.ps = {n: psutil.Process(p.pid) for n, p in procs.items()}
        for p in self.ps.values():
            p.cpu_percent()
        self.cpu0 = {n: self._cpu_s(p) for n, p in self.ps.items()}
        self.cpu_used: dict[str, float] = {}
        self.t: list[float] = []
        self.cpu: dict[str, list[float]] = {n: [] for n in self.ps}
        self.rss: dict[str, list[float]] = {n: [] for n in self.ps}

    @staticmethod
    def _cpu_s(p: psutil.Process) -> float:
        try:
            times = p.cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system + times.children_user + times.children_system

    def settle(self) -> None:
        """CPU seconds each service used since the start (call before stopping them)."""
        self.cpu_used = {n: self._cpu_s(p) - self.cpu0[n] for n, p in self.ps.items()}

    def sample(self, t: float) -> None:
        self.t.append(t)
        for n, p in self.ps.items():
            try:
                self.cpu[n].append(p.cpu_percent())
                self.rss[n].append(p.memory_info().rss / 2**20)
            except psutil.Error:
                self.cpu[n].append(0.0)
                self.rss[n].append(0.0)


def spark(values: list[float], width: int = 60) -> str:
    if not values:
        return ""
    step = max(1, len(values) // width)
    pts = [max(values[i : i + step]) for i in range(0, len(values), step)]
    lo, hi = min(pts), max(pts)
    span = (hi - lo) or 1.0
    return "".join(SPARK[1 + int((v - lo) / span * (len(SPARK) - 2))] for v in pts)


def plot(s: Sampler, png: str | None) -> None:
    print("\nper-service CPU % and RSS MB over time (min..max, one mark per interval):")
    for n in s.ps:
        cpu, rss = s.cpu[n], s.rss[n]
        mean = sum(cpu) / len(cpu) if cpu else 0.0
        print(f"  {n:9s} cpu {min(cpu):5.1f}..{max(cpu):5.1f} % (mean {mean:4.1f}) {spark(cpu)}")
        print(f"  {'':9s} rss {min(rss):5.1f}..{max(rss):5.1f} MB {spark(rss)}")
    if png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("  (no PNG: matplotlib is not installed)")
            return
        fig, (a, b) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
        for n in s.ps:
            a.plot(s.t, s.cpu[n], label=n)
            b.plot(s.t, s.rss[n], label=n)
        a.set_ylabel("CPU %")
        b.set_ylabel("RSS MB")
        b.set_xlabel("seconds")
        a.legend()
        fig.savefig(png)
        print(f"  plot written to {png}")


def rss_growth(s: Sampler) -> dict[str, float]:
    """RSS growth from the end of warm-up to the end, per service, in %."""
    out = {}
    for n, rss in s.rss.items():
        start = rss[int(len(rss) * WARMUP)] if rss else 0
        out[n] = (rss[-1] - start) / start * 100 if start else 0.0
    return out


# --- the run ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="exec/s of the storm")
    ap.add_argument("--png", help="write a CPU/RSS plot here (needs matplotlib)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    ap.add_argument(
        "--alert-every",
        type=int,
        default=1,
        help="1 in N storm processes matches the rule (1: every one, an alert storm)",
    )
    ap.add_argument("--storm-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.storm_child:
        rate, seconds, marker, every = args.storm_child
        global ALERT_EVERY
        ALERT_EVERY = int(every)
        storm(float(rate), float(seconds), marker)
        return 0
    if os.geteuid() != 0:
        print("note: not root: the collector runs on /proc snapshots and misses most of the storm")
    tmp = Path(tempfile.mkdtemp(prefix="de-soak-"))
    marker = args.marker = f"soak-{uuid.uuid4().hex[:8]}"
    args.sink_tail = None  # the file sink's tailer, once the system runs
    write_rule(tmp / "rules", marker)
    system = System(tmp, tmp / "rules")
    names = [n for n in ORDER if n != "alerter" or alerter_ready()]
    seconds = args.minutes * 60
    try:
        system.start(names)
        return run(system, names, marker, seconds, args)
    finally:
        system.close()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
        else:
            print(f"kept {tmp}")


def run(system: System, names: list[str], marker: str, seconds: float, args) -> int:
    settings = system.settings
    sock = system.factory.connect(zmq.SUB, settings.endpoint("events-out"))
    # starts and modifies carry what the probe needs (the argv of each storm process;
    # a stop repeats it): leaving stops out spares it ~half its decoding on the same two
    # cores. The ledger and detector still get every event; the verdict counts those.
    probe_topics = ("events.process.start", "events.process.modify", "alerts.")
    sub = Subscriber(sock, probe_topics, settings.bus.max_event_bytes)
    if "alerter" in names:
        args.sink_tail = start_sink_tail(settings.data_dir, marker)
    time.sleep(0.5)  # let the subscription reach the broker before the storm starts
    storm_proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--storm-child",
            str(args.rate),
            str(seconds),
            marker,
            str(args.alert_every),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    sampler = Sampler(system.procs)
    latencies: list[float] = []
    event_lat: list[float] = []  # spawn -> start event on the bus
    storm_seen: set[int] = set()  # storm numbers with an event on the bus
    alerted: Counter = Counter()
    events, t0 = 0, time.monotonic()
    next_sample, next_report = t0 + 1, t0 + 10
    last_events, last_t = 0, t0
    print(f"soak: {', '.join(names)}; storm {args.rate:g} exec/s for {seconds:g} s; {marker}")
    while storm_proc.poll() is None:
        msg = sub.recv(200)
        while msg is not None:
            if msg.topic.startswith("events."):
                events += 1
                seen_storm(msg, marker, storm_seen, event_lat)
            elif msg.kind == "alert":
                argv = list(msg.body.process.cmdline)
                if len(argv) >= 4 and argv[1] == marker:
                    alerted[int(argv[2])] += 1
                    latencies.append((msg.envelope.sentNs - int(argv[3])) / 1e6)
            msg = sub.recv_ready()
        now = time.monotonic()
        if now >= next_sample:
            sampler.sample(now - t0)
            next_sample += 1
        if now >= next_report:
            published = system.published_events()
            rate = (published - last_events) / (now - last_t)
            last_events, last_t, next_report = published, now, next_report + 10
            p99 = percentile(latencies, 99) if latencies else 0
            print(
                f"  t={now - t0:5.0f}s events/s {rate:8,.0f}  alerts {sum(alerted.values()):8,}"
                f"  p99 exec->alert {p99:7.1f} ms"
            )
    storm_report = json.loads(storm_proc.stdout.read() or "{}")
    spawned = storm_report.get("spawned", 0)
    elapsed = time.monotonic() - t0
    # drain what is still on its way (the detector may be behind): until 5 s pass
    # without an alert, at most 5 minutes
    last_alert, give_up = time.monotonic(), time.monotonic() + 300
    while time.monotonic() - last_alert < 5 and time.monotonic() < give_up:
        msg = sub.recv(200)
        if msg is None:
            continue
        if msg.kind == "alert":
            last_alert = time.monotonic()
            argv = list(msg.body.process.cmdline)
            if len(argv) >= 4 and argv[1] == marker:
                alerted[int(argv[2])] += 1
                latencies.append((msg.envelope.sentNs - int(argv[3])) / 1e6)
        else:
            events += 1
            seen_storm(msg, marker, storm_seen, event_lat)
    probe = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"CPU outside the services: the storm (its {spawned:,} children included) "
        f"{storm_report.get('cpu_pct', 0):.0f} %, this probe (decoding every event) "
        f"{(probe.ru_utime + probe.ru_stime) / elapsed * 100:.0f} % of one core"
    )
    if event_lat:
        print(
            f"exec -> start event sent by the collector: p50 {percentile(event_lat, 50):.1f} ms, "
            f"p99 {percentile(event_lat, 99):.1f} ms  budget p99 <= 10 ms  "
            f"{verdict(percentile(event_lat, 99), 10, False)}"
        )
    return report(system, names, spawned, elapsed, events, sub, sampler, latencies,
                  alerted, storm_seen, args)  # fmt: skip


def seen_storm(msg: Any, marker: str, seen: set[int], lat: list[float]) -> None:
    """Note a storm process's event; for its start, the spawn -> event latency."""
    if msg.kind == "processEventBatch":  # the collector batches events produced together
        events = list(msg.body.events)
    elif msg.kind == "processEvent":
        events = [msg.body]
    else:
        return
    for event in events:
        argv = list(event.record.cmdline)
        if len(argv) >= 4 and argv[1] == marker:
            seen.add(int(argv[2]))
            if msg.topic == "events.process.start":
                lat.append((msg.envelope.sentNs - int(argv[3])) / 1e6)


def file_sink_latency(data_dir: Path, marker: str) -> tuple[list[float], int]:
    """Spawn -> the alerter receiving the alert (its `receivedNs`), from the lines the
    default file sink wrote (rotated files too); and how many storm alerts they hold."""
    lat, lines = [], 0
    for path in sorted(data_dir.glob("alerts.jsonl*")):
        with open(path, "rb") as f:
            for line in f:
                found = storm_alert(line, marker)
                if found is not None:
                    record, spawn_ns = found
                    lines += 1
                    lat.append((int(record["receivedNs"]) - spawn_ns) / 1e6)
    return lat, lines


def start_sink_tail(data_dir: Path, marker: str) -> tuple[subprocess.Popen, Path]:
    """bench/sink_tail.py following the default file sink, at the services' priority
    (a tailer woken late would overstate the latency); its figures go to a file."""
    out = data_dir / f"sink-tail-{marker}.txt"
    nice = (lambda: os.nice(-10)) if os.geteuid() == 0 else None
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("sink_tail.py")),
         str(data_dir / "alerts.jsonl"), marker, str(out)],
        stdin=subprocess.PIPE,
        preexec_fn=nice,
    )  # fmt: skip
    return proc, out


def finish_sink_tail(tail: tuple[subprocess.Popen, Path] | None) -> list[float]:
    """Spawn -> line first read, in ms, once the tailer has read the file to its end."""
    if tail is None:
        return []
    proc, out = tail
    proc.stdin.close()  # its cue: read what is left, write the figures, exit
    if proc.wait(60) != 0 or not out.exists():
        print(f"sink tailer failed (exit {proc.returncode}): no in-file latency")
        return []
    pairs = [line.split() for line in out.read_text().splitlines()]
    return [(int(seen) - int(spawn)) / 1e6 for spawn, seen in pairs]


def report(system, names, spawned, elapsed, events, sub, sampler, lat, alerted, storm_seen, args):
    sampler.settle()
    health = {n: system.health(n) for n in names}
    m = {n: h.get("metrics", {}) for n, h in health.items()}
    broker_stats = system.rpc.call("control.broker", "stats").value
    system.stop("collector")
    settings, cid = system.settings, system.collector_id
    wal_events = read_wal(settings, cid)
    wal, wal_times = set(wal_events), Counter(t for ts in wal_events.values() for t in ts)
    last = max(wal, default=0)
    deadline = time.monotonic() + 120
    ledger_seqs, ledger_gaps = read_ledger(settings, cid)
    while last not in ledger_seqs and time.monotonic() < deadline:
        time.sleep(0.5)  # the ledger catching up with the collector's last event
        ledger_seqs, ledger_gaps = read_ledger(settings, cid)
    for n in ("detector", "ledger", "alerter"):
        if n in names:
            m[n] = system.health(n).get("metrics", m.get(n, {}))
            system.stop(n)
    ledger_seqs, ledger_gaps = read_ledger(settings, cid)
    history = read_history(settings, cid)

    print(f"\n=== soak: {elapsed:.0f} s, storm {spawned:,} exec ({spawned / elapsed:,.0f}/s) ===")
    published = sum(v for k, v in m["collector"].items() if k.startswith("published."))
    print(
        f"events published: {published:,.0f} ({published / elapsed:,.0f}/s); "
        f"{events:,} start/modify envelopes seen by this probe"
    )
    print(
        f"drops: broker {sum(broker_stats['dropped'].values())}, "
        f"detector {m['detector'].get('bus.dropped', 0):.0f}, "
        f"ledger {m['ledger'].get('bus.dropped', 0):.0f}; "
        f"kernel overruns (collector lost_events) {m['collector'].get('lost_events', 0):.0f}"
    )
    print(
        f"gaps: detector {m['detector'].get('bus.gaps', 0):.0f} "
        f"({m['detector'].get('bus.missing', 0):.0f} missing), "
        f"ledger {m['ledger'].get('bus.gaps', 0):.0f} "
        f"({m['ledger'].get('bus.missing', 0):.0f} missing), this probe's alert streams "
        f"{sub.stats.gaps} ({sub.stats.missing} missing: alerts it cannot count)"
    )
    print(
        f"replays: ledger {m['ledger'].get('ledger.replays', 0):.0f} "
        f"({m['ledger'].get('ledger.replayed', 0):.0f} events replayed)"
    )
    if lat:
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        print(
            f"exec -> alert sent by the detector: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(lat):.1f} ms  budget p99 <= 50 ms  {verdict(p99, 50, False)}"
        )
    if "alerter" in names:
        sink_lat, sink_lines = file_sink_latency(settings.data_dir, args.marker)
        if sink_lat:
            print(
                f"exec -> alert received by the alerter (from {sink_lines:,} storm alerts in the "
                f"file sink; its rate limits summarise the rest): "
                f"p50 {percentile(sink_lat, 50):.1f} ms, p99 {percentile(sink_lat, 99):.1f} ms"
            )
        in_file = finish_sink_tail(args.sink_tail)
        if in_file:
            p99 = percentile(in_file, 99)
            print(
                f"exec -> alert in the file sink (its line first read by a tailer woken by "
                f"inotify, nice -10; {len(in_file):,} lines): "
                f"p50 {percentile(in_file, 50):.1f} ms, p99 {p99:.1f} ms, "
                f"max {max(in_file):.1f} ms  "
                f"budget p99 <= 50 ms  {verdict(p99, 50, False)}"
            )
    plot(sampler, args.png)
    if spawned:  # comparable across runs and machine load, unlike CPU %
        print(
            "CPU per storm exec (both its events and its alert): "
            + ", ".join(f"{n} {cpu / spawned * 1e6:.0f} µs" for n, cpu in sampler.cpu_used.items())
            + f"; services together {sum(sampler.cpu_used.values()) / spawned * 1e6:.0f} µs"
        )
    growth = rss_growth(sampler)
    print(
        "RSS growth after warm-up: "
        + ", ".join(f"{n} {g:+.1f}%" for n, g in growth.items())
        + f"  budget <= +10%  {verdict(max(growth.values()), 10, False)}"
    )

    # every seq up to the last was published; the WAL may hold only the newest of them
    want = set(range(1, last + 1))
    missing_ledger = want - set(ledger_seqs)
    dup_ledger = sum(1 for c in ledger_seqs.values() if c > 1)
    missing_det = sum((wal_times - history).values())  # over the range the WAL still holds
    det_total = sum(history.values())
    captured = len(storm_seen) / spawned * 100 if spawned else 0
    alert_miss = len({n for n in storm_seen if n % args.alert_every == 0} - set(alerted))
    alert_dup = sum(1 for c in alerted.values() if c > 1)
    print("\n=== verdict ===")
    holes = len(set(range(min(wal, default=1), last + 1)) - wal)
    print(
        f"collector: seq 1-{last}; its WAL still holds {min(wal, default=0)}-{last}, "
        f"with {holes} seqs in that range never logged (nor published)"
    )
    print(
        f"ledger: {len(want) - len(missing_ledger):,} of {len(want):,} "
        f"(missing {len(missing_ledger)}, duplicated {dup_ledger}, gap entries {len(ledger_gaps)})"
    )
    print(
        f"detector history: {det_total:,} rows; of the {sum(wal_times.values()):,} events "
        f"the WAL holds, missing {missing_det}"
    )
    print(
        f"storm processes captured: {len(storm_seen):,} of {spawned:,} ({captured:.2f} %)"
        f"  budget >= 99.5 %  {verdict(captured, 99.5)}"
    )
    print(
        f"alerts: {len(alerted):,} storm processes alerted (1 in {args.alert_every} matches "
        f"the rule); missing {alert_miss}, dup {alert_dup}"
    )
    lost = len(missing_ledger) + missing_det + dup_ledger + holes
    print("LOST NOTHING" if lost == 0 and alert_miss == 0 else "LOSSES (see above)")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
