"""The netlink reader's send wait (`collector.reader_send_ms`) end to end: the execs of
a moderate, steady rate reach the bus several to an envelope of starts (one wake-up
of the main and of each subscriber for a few execs), none lost; what waits at the end
of the run goes when its wait is up, with nothing after it."""

from __future__ import annotations

import os
import select
import shutil
import time
from collections.abc import Callable
from typing import Any

from daemoneye.bus import Subscriber
from daemoneye.rpc import RpcClient

from .test_collector_capture import _netlink_or_skip
from .test_collector_live import process_events, start_collector

COUNT = 60
GAP_S = 0.01  # 100 exec/s: a gap well under the wait below
SEND_MS = "40"  # so the execs of a wait are several whatever the machine's load
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


def spawn_paced(count: int) -> list[int]:
    """`sleep 0.2`, one every GAP_S (a pace for the load, not a wait for a condition:
    nothing here waits for the collector); they live long enough for every /proc read,
    so each one's start is told by its pid."""
    pids = []
    due = time.monotonic()
    for _ in range(count):
        pids.append(os.posix_spawn(SLEEP, ["sleep", "0.2"], os.environ))
        due += GAP_S
        left = due - time.monotonic()
        if left > 0:
            select.select([], [], [], left)
    for pid in pids:
        os.waitpid(pid, 0)
    return pids


def test_execs_close_together_share_envelopes_and_all_arrive(
    broker: Any,
    subscribe: Callable[..., Subscriber],
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict[str, str],
) -> None:
    _netlink_or_skip()
    sub = subscribe("events.process.start")
    collector = start_collector(
        start_service, rpc_client, run_env, reader_send_ms=SEND_MS, gather_ms="0"
    )
    pids = spawn_paced(COUNT)
    wanted = set(pids)
    seen: list[int] = []
    envelopes: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < COUNT and time.monotonic() < deadline:
        msg = sub.recv(200)
        if msg is None:
            continue
        for event in process_events(msg):
            if event.record.pid in wanted and event.record.exePath == SLEEP:
                seen.append(event.record.pid)
                envelopes.add(msg.envelope.seq)
    assert sorted(seen) == sorted(pids), f"{COUNT - len(set(seen))} execs not seen"
    # at 100 exec/s with a 40 ms wait, ~4 execs share each wait; at once, one envelope
    # each (the main gathers nothing here: gather_ms 0)
    assert len(envelopes) <= COUNT // 2, (
        f"{COUNT} execs 10 ms apart came in {len(envelopes)} envelopes: they were sent one by one"
    )
    assert collector.proc.poll() is None
