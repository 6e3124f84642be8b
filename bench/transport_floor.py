"""The CPU floor of one bus message on this machine, before any service logic runs.

`bench/exec_cost.py` asks for at most 0.3 ms of all services' CPU per exec. Every
event message wakes threads in several processes (the publisher's libzmq I/O thread,
the broker, each subscriber's I/O thread and, for the detector, its Python thread),
and a wake-up has a price of its own on a given machine. This prints that price, so
the exec cost can be read against what the transport alone takes:

- a C program and a Python one reading a pipe (poll + read): a bare wake-up;
- a Python SUB receiving from a PUB on ipc:// (pyzmq), split into its Python thread
  and libzmq's I/O thread, and the publisher's own I/O thread;
- the real broker (`daemoneye run broker`) forwarding to two SUBs (the detector and
  the ledger take `events.process.*`);
- the warm read of one process from /proc (the reader's part of each exec).

Senders are paced at each of --rates messages/s; CPU is read per thread from
/proc/<pid>/task/<tid>/schedstat (nanoseconds on CPU). The floor of the pipeline per
message: publisher I/O + broker + detector (Python + I/O) + ledger (I/O only: it reads
the bus every 250 ms); per exec, that times the messages an exec makes (about one a
start at 200 exec/s when every exec is published on its own).

    .venv/bin/python bench/transport_floor.py [--rates 200 1000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq

from daemoneye import procfs
from daemoneye.bus import SocketFactory
from daemoneye.config import Settings

sys.path.insert(0, str(Path(__file__).parent))
from _harness import bench_env, service

MESSAGE_BYTES = 600  # about one encoded start event
EXEC_BUDGET_US = 300.0  # DESIGN.md: CPU per exec, all services together, at 200 exec/s

C_PIPE_READER = r"""
#include <poll.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    char buf[65536]; struct pollfd pf = {0, POLLIN, 0}; long n = 0;
    for (;;) {
        poll(&pf, 1, 1000);
        ssize_t got = read(0, buf, sizeof buf);
        if (got <= 0) return 0;
        n++;
        if (buf[got - 1] == 'M') { printf("%ld\n", n); fflush(stdout); }
        if (buf[got - 1] == 'E') return 0;
    }
}
"""

PY_PIPE_READER = textwrap.dedent(
    """
    import os, select, sys
    poller = select.poll(); poller.register(0, select.POLLIN); n = 0
    while True:
        poller.poll(1000)
        data = os.read(0, 65536)
        if not data or data.endswith(b"E"):
            break
        n += 1
        if data.endswith(b"M"):
            print(n, flush=True)
    """
)

SUB_READER = textwrap.dedent(
    """
    import sys, zmq
    from daemoneye.bus import SocketFactory
    from daemoneye.config import load_settings
    factory = SocketFactory(load_settings())
    sock = factory.connect(zmq.SUB, sys.argv[1], SUBSCRIBE=b"events.")
    poller = zmq.Poller(); poller.register(sock, zmq.POLLIN); n = 0; ready = False
    while True:
        if not poller.poll(1000):
            continue
        topic = sock.recv_multipart()[0]
        if topic == b"events.probe":
            if not ready:
                ready = True
                print("ready", flush=True)
            continue
        n += 1
        if topic == b"events.mark":
            print(n, flush=True)
        elif topic == b"events.end":
            break
    factory.close_all(0)
    """
)


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on CPU of each thread of `pid` (schedstat: exact, not in ticks)."""
    spent = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                spent[int(tid)] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return spent


@dataclass
class Split:
    """CPU per message of one process: its main (Python or C) thread and the others
    (libzmq's I/O and reaper threads)."""

    main_us: float
    other_us: float

    @property
    def total_us(self) -> float:
        return self.main_us + self.other_us


def read_line(proc: subprocess.Popen) -> str:
    assert proc.stdout
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"reader {proc.args[0]} ended (exit status {proc.wait(10)})")
    return (line.decode() if isinstance(line, bytes) else line).strip()


def expect_line(proc: subprocess.Popen, want: str) -> None:
    """The reader's next line must be `want` (a count, "ready"): a reader that died or
    lost a message ends the bench instead of giving a figure."""
    got = read_line(proc)
    if got != want:
        raise RuntimeError(f"reader {proc.args[0]} said {got!r}, expected {want!r}")


def split_of(pid: int, before: dict[int, int], after: dict[int, int], n: int) -> Split:
    main = after.get(pid, 0) - before.get(pid, 0)
    other = sum(after[t] - before.get(t, 0) for t in after if t != pid)
    return Split(main / n / 1000, other / n / 1000)


def paced(count: int, rate: float, send) -> None:
    """Calls send() `count` times at `rate` per second (a pacer, not a synchronisation)."""
    start = time.monotonic()
    for i in range(count):
        send()
        due = start + (i + 1) / rate - time.monotonic()
        if due > 0:
            time.sleep(due)


def pipe_floor(argv: list[str], rate: float, seconds: float) -> Split:
    """A reader of its stdin: CPU per read (per wake-up)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
    assert proc.stdin and proc.stdout
    payload = b"x" * MESSAGE_BYTES
    fd = proc.stdin.fileno()
    try:
        os.write(fd, payload + b"M")  # started and reading
        expect_line(proc, "1")
        count = int(rate * seconds)
        before = thread_cpu_ns(proc.pid)
        paced(count, rate, lambda: os.write(fd, payload))
        os.write(fd, payload + b"M")
        # a pipe is a byte stream: a late reader takes several messages in one read,
        # so the cost is per read (per wake-up), the count the reader gives
        reads = int(read_line(proc)) - 1
        after = thread_cpu_ns(proc.pid)
        return split_of(proc.pid, before, after, reads)
    finally:
        os.write(fd, b"E")
        proc.wait(10)


@contextmanager
def sub_readers(endpoint: str, env: dict[str, str], count: int) -> Iterator[list[subprocess.Popen]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUB_READER, endpoint], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def wait_ready(pub: zmq.Socket, readers: list[subprocess.Popen], deadline_s: float = 30) -> None:
    """Probes until every reader has one (subscriptions travel asynchronously)."""
    waiting = {r.stdout.fileno(): r for r in readers if r.stdout}
    poller = zmq.Poller()
    for fd in waiting:
        poller.register(fd, zmq.POLLIN)
    end = time.monotonic() + deadline_s
    while waiting:
        if time.monotonic() > end:
            raise RuntimeError("a subscriber never received a probe")
        pub.send_multipart([b"events.probe", b""])
        for fd, _ in poller.poll(20):
            expect_line(waiting.pop(fd), "ready")
            poller.unregister(fd)


def zmq_floor(
    factory: SocketFactory,
    pub_endpoint: str,
    bind: bool,
    sub_endpoint: str,
    env: dict[str, str],
    readers: int,
    rate: float,
    seconds: float,
    broker_pid: int | None,
) -> tuple[Split, Split, float]:
    """(a SUB reader, this publisher's I/O thread, the broker's CPU) per message."""
    pub = factory.bind(zmq.PUB, pub_endpoint) if bind else factory.connect(zmq.PUB, pub_endpoint)
    payload = b"x" * MESSAGE_BYTES
    try:
        with sub_readers(sub_endpoint, env, readers) as procs:
            wait_ready(pub, procs)
            count = int(rate * seconds)
            me = os.getpid()
            watched = [p.pid for p in procs] + [me] + ([broker_pid] if broker_pid else [])
            before = {pid: thread_cpu_ns(pid) for pid in watched}
            paced(count, rate, lambda: pub.send_multipart([b"events.process.start", payload]))
            pub.send_multipart([b"events.mark", b""])
            for proc in procs:
                expect_line(proc, str(count + 1))  # every message received
            after = {pid: thread_cpu_ns(pid) for pid in watched}
            pub.send_multipart([b"events.end", b""])
            n = count + 1
            sub = split_of(procs[0].pid, before[procs[0].pid], after[procs[0].pid], n)
            mine = split_of(me, before[me], after[me], n)
            broker = (
                split_of(broker_pid, before[broker_pid], after[broker_pid], n).total_us
                if broker_pid
                else 0.0
            )
            return sub, Split(0.0, mine.other_us), broker
    finally:
        factory.close(pub, 0)


def proc_read_us(rounds: int = 5000) -> float:
    """One warm read of a process's record from /proc (this process's own)."""
    pid = os.getpid()
    start = time.process_time()
    for _ in range(rounds):
        procfs.read_process(pid)
    return (time.process_time() - start) / rounds * 1e6


def report_rate(
    rate: float,
    seconds: float,
    c_reader: Path | None,
    settings: Settings,
    factory: SocketFactory,
    env: dict[str, str],
    tmp: str,
) -> None:
    load = os.getloadavg()[0]
    print(f"\n== {rate:.0f} messages/s, {seconds:.0f} s each, load {load:.1f}")
    if c_reader:
        c = pipe_floor([str(c_reader)], rate, seconds)
        print(f"C, pipe, poll + read:          {c.total_us:7.1f} us a read (a wake-up)")
    else:
        print("C, pipe: no C compiler here")
    py = pipe_floor([sys.executable, "-c", PY_PIPE_READER], rate, seconds)
    print(f"Python, pipe, poll + read:     {py.total_us:7.1f} us a read (a wake-up)")
    try:
        direct = f"ipc://{tmp}/direct"
        sub, pub_io, _ = zmq_floor(factory, direct, True, direct, env, 1, rate, seconds, None)
        print(
            f"pyzmq SUB from a PUB (ipc://): {sub.total_us:7.1f} us a message"
            f" (Python thread {sub.main_us:.1f}, libzmq threads {sub.other_us:.1f});"
            f" the PUB's I/O thread {pub_io.other_us:.1f}"
        )
        with service("broker", settings, env) as broker:
            events_in, events_out = settings.endpoint("events-in"), settings.endpoint("events-out")
            via, pub_io, broker_us = zmq_floor(
                factory, events_in, False, events_out, env, 2, rate, seconds, broker.pid
            )
    finally:
        factory.close_all(0)
    print(
        f"the broker to 2 SUBs:          {broker_us:7.1f} us a message (broker);"
        f" a SUB {via.total_us:.1f} (Python {via.main_us:.1f}, libzmq {via.other_us:.1f});"
        f" the PUB's I/O thread {pub_io.other_us:.1f}"
    )
    floor = pub_io.other_us + broker_us + via.total_us + via.other_us
    print(
        f"floor of one event message: {floor:.0f} us"
        " (publisher I/O + broker + detector + the ledger's I/O thread)"
    )
    for per_exec in (1.0, 0.5, 0.25):
        share = floor * per_exec / EXEC_BUDGET_US * 100
        print(
            f"  at {per_exec:4.2f} messages an exec: {floor * per_exec:5.0f} us an exec,"
            f" {share:3.0f} % of the {EXEC_BUDGET_US:.0f} us budget"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    cc = shutil.which("cc") or shutil.which("gcc")
    with tempfile.TemporaryDirectory(prefix="de-floor-") as tmp:
        c_reader = None
        if cc:
            src = Path(tmp) / "reader.c"
            src.write_text(C_PIPE_READER)
            c_reader = Path(tmp) / "reader"
            subprocess.run([cc, "-O2", "-o", str(c_reader), str(src)], check=True)
        with bench_env() as (settings, env):
            factory = SocketFactory(settings)
            try:
                for rate in args.rates:
                    report_rate(rate, args.seconds, c_reader, settings, factory, env, tmp)
            finally:
                factory.shutdown(0)
    print(f"\nwarm read of one process from /proc (the reader, each exec): {proc_read_us():.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
