"""The collector's batching, on by default: a lone event goes out at once as a
processEvent; events produced together (one netlink read) share processEventBatch
envelopes of one kind, in order, cut by count, by kind and by size (an envelope above
the bus's event limit would be dropped). What went out is read back from the WAL,
which gets every envelope before the bus does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from daemoneye import procfs, wire
from daemoneye.bus import Publisher
from daemoneye.config import Settings
from daemoneye.services.collector.service import Collector
from daemoneye.services.collector.tracker import Out
from daemoneye.services.collector.wal import Wal


@pytest.fixture
def collector(settings: Settings, tmp_path: Path) -> Iterator[Collector]:
    c = Collector(settings)
    pub = c.factory.bind(zmq.PUB, f"inproc://batching-{id(c)}")  # nobody listens: the WAL tells
    c.publisher = Publisher(pub, c.service_id, c.boot_id)
    c.wal = Wal(tmp_path / "wal")
    yield c
    c.wal.close()
    c.factory.close_all(linger_ms=0)


def out(kind: str, pid: int, argv_bytes: int = 0) -> Out:
    rec = procfs.empty_record(pid)
    rec["cmdline"] = ["x" * argv_bytes] if argv_bytes else [f"p{pid}"]
    return Out(kind, "netlink", rec)


def sent(c: Collector) -> list[tuple[str, str, list[int], int]]:
    """(topic, body kind, pids, bytes) of every envelope so far."""
    assert c.wal is not None
    rows = []
    for e in c.wal.read(0, None, 10_000):
        env = wire.decode_envelope(e.data)
        kind = wire.body_kind(env)
        body = wire.body_of(env)
        events = list(body.events) if kind == "processEventBatch" else [body]
        rows.append((e.topic, kind, [ev.record.pid for ev in events], len(e.data)))
    return rows


def test_batching_is_on_by_default(settings: Settings) -> None:
    assert settings.collector.publish_batch_max > 1
    assert settings.collector.publish_batch_ms <= 2


def test_a_lone_event_goes_out_at_once(collector: Collector) -> None:
    collector._publish_all([out("start", 10)])
    assert [r[:3] for r in sent(collector)] == [("events.process.start", "processEvent", [10])]


def test_events_read_together_share_envelopes_in_order(collector: Collector) -> None:
    collector._holding = True  # as _on_realtime: one read of the kernel's events
    collector._publish_all([out("start", p) for p in range(1, 6)])
    collector._publish_all([out("stop", 1), out("stop", 2), out("start", 7)])
    assert len(collector._staged) == 2, "a change of kind encodes what came before"
    assert sent(collector) == [], "the WAL write (one for the hold) comes when it ends"
    collector._holding = False
    collector._send_batch()  # the handler is done: the last batch goes too
    rows = [(t, k, p) for t, k, p, _ in sent(collector)]
    assert rows == [
        ("events.process.start", "processEventBatch", [1, 2, 3, 4, 5]),
        ("events.process.stop", "processEventBatch", [1, 2]),
        ("events.process.start", "processEvent", [7]),
    ]


def publish_in_one_hold(collector: Collector, outs: list[Out]) -> None:
    """As _on_realtime does for one take of the reader's frames: within it, batches are
    cut by count, kind and size only, never by time (so a slow run cuts nothing more)."""
    collector._holding = True
    collector._publish_all(outs)
    collector._holding = False
    collector._send_batch()


def test_batches_are_cut_by_count_and_by_size(collector: Collector) -> None:
    limit = collector.cfg.publish_batch_max
    publish_in_one_hold(collector, [out("start", p) for p in range(1, 2 * limit + 3)])
    assert [len(p) for _, _, p, _ in sent(collector)] == [limit, limit, 2]
    big = collector.settings.bus.max_event_bytes // 3  # two fit the limit, three do not
    publish_in_one_hold(collector, [out("stop", p, big) for p in range(100, 106)])
    bigs = [(p, n) for t, _, p, n in sent(collector) if t == "events.process.stop"]
    assert [pid for pids, _ in bigs for pid in pids] == list(range(100, 106))
    assert all(n <= collector.settings.bus.max_event_bytes for _, n in bigs)
    assert len(bigs) >= 3  # cut by size, not by count


def test_an_event_the_schema_refuses_does_not_take_its_batch_down(collector: Collector) -> None:
    bad = out("start", 21)
    bad.record["pgroup"] = -1  # out of range for the wire's UInt32
    collector._holding = True  # one netlink read: the three would share an envelope
    collector._publish_all([out("start", 20), bad, out("start", 22)])
    collector._holding = False
    collector._send_batch()
    assert [pid for r in sent(collector) for pid in r[2]] == [20, 22]
    assert collector.unencodable == 1


def test_a_negative_process_group_in_stat_reads_as_none() -> None:
    raw = b"5 (x) S 1 -1 -1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0"
    st = procfs.parse_stat(5, raw)
    assert st is not None and (st.pgroup, st.session_id) == (0, 0)
