"""The netlink reader never waits for the collector's main process (issue 16: under
overload the reader blocked in a send to a starved main for 1.7 s, reading neither
netlink nor /proc, and 3,921 short-lived execs lost their argv).

The main is stopped (SIGSTOP, as a starved process is), a burst of short-lived
processes with long argv runs (more bytes of frames than the unix socket to the main
holds), then the main goes on (SIGCONT): every process came with its argv, read by
the reader while the main was stopped. A spool too small for the burst drops its
oldest frames: the main is told in the stream (a loss marker, then a rescan), not at
the next connection only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemoneye.bus import Subscriber
from daemoneye.rpc import RpcClient, RpcError
from daemoneye.services.collector import reader
from tests.conftest import settle, wait_for
from tests.unit.test_collector_reader import _Main, _pad_frame, made  # noqa: F401

from .test_collector_live import Events, needs_netlink, start_collector

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
LIFE = "0.05"
TARGET = "control.collector"
COUNT = 1500
# 1,500 frames of ~10 KB: 15 MB, more than the socket to the main takes (its buffers
# are 4 MB each way, the kernel's wmem_max / rmem_max at most)
PAD = "p" * 10_000

pytestmark = needs_netlink


@pytest.fixture
def events(broker: Any, subscribe: Callable[..., Subscriber]) -> Events:
    return Events(subscribe("events.process.start"))


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def burst(marker: str, count: int) -> list[int]:
    """`count` processes of LIFE seconds, spawned as fast as the host allows, named
    `<marker>/<n>/<PAD>` (argv[0]): long enough for the reader (it reads each as its
    exec comes), far too short to wait for the main (stopped for the whole burst)."""
    pids = [os.posix_spawn(SLEEP, [f"{marker}/{i}/{PAD}", LIFE], os.environ) for i in range(count)]
    for pid in pids:
        os.waitpid(pid, 0)
    return pids


def with_argv(events: Events, marker: str) -> set[int]:
    """The burst's numbers whose start came with the whole argv."""
    events.pump()
    out: set[int] = set()
    for _topic, body in events.seen:
        argv = body["record"]["cmdline"]
        parts = argv[0].split("/") if len(argv) == 2 else []
        if len(parts) == 3 and parts[0] == marker and parts[2] == PAD and argv[1] == LIFE:
            out.add(int(parts[1]))
    return out


def health(rpc_client: RpcClient) -> dict[str, Any]:
    """The collector's health; {} while it is not registered again (stopped for
    seconds, the broker may have taken it for gone)."""
    try:
        return rpc_client.call(TARGET, "health").value
    except RpcError:
        return {}


def metrics(rpc_client: RpcClient) -> dict[str, float]:
    found = wait_for(lambda: health(rpc_client), 15, "the collector registered again")
    return found["metrics"]  # type: ignore[index]


def test_a_stopped_main_does_not_stop_the_reader(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    main = start_collector(start_service, rpc_client, run_env)
    marker = f"stalled-{uuid.uuid4().hex[:8]}"
    with stopped(main.pid):
        burst(marker, COUNT)
    if not settle(lambda: len(with_argv(events, marker)) == COUNT, 60):
        seen = with_argv(events, marker)
        pytest.fail(
            f"{len(seen)} of {COUNT} starts with their argv (first missing: "
            f"{sorted(set(range(COUNT)) - seen)[:10]}); collector {metrics(rpc_client)}"
        )
    assert metrics(rpc_client)["lost_events"] == 0


def test_a_spool_overflow_is_told_to_the_main_in_the_stream(
    events: Events,
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict,
    subscribe: Callable[..., Subscriber],
) -> None:
    """The smallest spool (1 MB) and the socket full: the oldest frames not sent yet are
    dropped. The main learns it from the stream on the same connection (a loss marker
    where they were: counted, repaired by a rescan), no reconnection needed. It is told
    as what it is, a spool overflow (not the kernel's overrun, `lost_events`), and its
    events are counted once, by their kernel numbers (`collector.lost`): a new main
    adopting the reader (whose hello tells its spool's drops since it started) adds
    nothing."""
    notices = Events(subscribe("events.collector."))
    main = start_collector(start_service, rpc_client, run_env, reader_spool_bytes=str(1 << 20))
    reader = rpc_client.call(TARGET, "health").value["reader_pid"]
    before = metrics(rpc_client)
    marker = f"overflow-{uuid.uuid4().hex[:8]}"
    with stopped(main.pid):
        burst(marker, COUNT)
    if not settle(lambda: metrics(rpc_client)["spool.dropped_frames"] > 0, 30):
        pytest.fail(f"no loss told in 30 s: {metrics(rpc_client)}\n{main.log()[-3000:]}")
    # the hole in the kernel numbers is counted once it stayed open over two settles
    wait_for(lambda: metrics(rpc_client)["collector.lost"] > 0, 15, "the loss counted")
    after = metrics(rpc_client)
    assert after["scans"] > before["scans"], "the loss was not repaired with a rescan"
    assert after["netlink.takeovers"] == 0
    assert after["lost_events"] == 0, "a spool overflow told as the kernel's overrun"
    assert health(rpc_client)["reader_pid"] == reader

    def told() -> list[dict[str, Any]]:
        notices.pump()
        return [b for _t, b in notices.seen if b.get("kind") == "lost_events"]

    found = wait_for(told, 10, "the lost_events notice")
    message = found[0]["message"]  # type: ignore[index]
    assert "spool overflowed" in message and "overrun" not in message, message
    # a new main: the same reader's hello, its spool's drops in it; counted already.
    # First the numbers written down (at each ack: an exec makes one due) with no hole
    # open, or the new main would rightly count the hole the first one left open.
    data = Path(run_env["DAEMONEYE_DATA_DIR"])

    def written_down() -> bool:
        os.waitpid(os.posix_spawn(SLEEP, [SLEEP, "0"], os.environ), 0)
        positions = list(data.glob("collector/*/wal/kernel-positions.json"))
        return bool(positions) and not json.loads(positions[0].read_text()).get("gaps")

    wait_for(written_down, 10, "the kernel numbers written down with no hole open")
    assert main.stop() == 0, main.log()
    start_collector(start_service, rpc_client, run_env, reader_spool_bytes=str(1 << 20))
    assert health(rpc_client)["reader_pid"] == reader, "the reader was not adopted"
    assert metrics(rpc_client)["collector.lost"] == 0, "the first main's loss counted again"


def test_the_reader_killed_while_the_main_is_stopped_loses_nothing_silently(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    """Frames the stopped main has not read wait in the reader's spool, which dies with
    it (docs/RELIABILITY.md); the journal keeps the newest for the spare. What the main
    then never gets is counted lost by its kernel numbers: a burst's process with no
    start is in collector.lost."""
    main = start_collector(start_service, rpc_client, run_env)
    first = rpc_client.call(TARGET, "health").value
    marker = f"killed-{uuid.uuid4().hex[:8]}"
    with stopped(main.pid):
        pids = burst(marker, COUNT)
        os.kill(first["reader_pid"], signal.SIGKILL)
        spare = psutil.Process(first["spare_pid"])
        wait_for(spare.children, 10, "the spare to take over (it forks its own spare)")
    mine = set(pids)

    def started() -> set[int]:
        events.pump()
        return {b["record"]["pid"] for t, b in events.seen if b["record"]["pid"] in mine}

    wait_for(lambda: health(rpc_client).get("reader_pid") == spare.pid, 15, "the new reader")
    settle(lambda: len(started()) == COUNT, 10)  # those it will get, if not all
    seen: list[dict[str, float]] = []

    def counted() -> bool:
        seen.append(metrics(rpc_client))
        return seen[-1]["collector.lost"] >= COUNT - len(started())

    # a missing number is counted once it stayed missing over two settles (kseq.py)
    if not settle(counted, 15):
        pytest.fail(
            f"{COUNT - len(started())} of {COUNT} starts missing, not counted lost: "
            f"collector {seen[-1]}"
        )
    assert seen[-1]["netlink.takeovers"] == 1


def test_a_new_main_gets_the_hello_and_the_spool_without_blocking_the_reader(
    made: reader.Reader,  # noqa: F811 - the unit tests' fixture: a reader on real sockets
    tmp_path: Any,
) -> None:
    """The hello and the spool's replay on a (re)connection go as the socket takes them,
    the rest when it has room."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "reader"))
    listener.listen(1)
    made.listener = listener
    made.spool_max = 64 << 20
    for _ in range(600):  # ~12 MB spooled with no main: more than the socket's 4+4 MB
        _pad_frame(made, 20_000)
    main = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        main.connect(str(tmp_path / "reader"))
        made._accept()
        assert made.client is not None and made.blocked and made.unsent > 0
        got = _Main(main)
        got.read_all(made, lambda msgs: len(msgs) == 601, 30)
        assert got.msgs[0][0] == "H" and got.msgs[0][1]["backlog"] == 600
        assert [m[1] for m in got.msgs[1:]] == list(range(1, 601))
    finally:
        main.close()
        listener.close()
