"""The sink worker over a real RocksDB store: retries, dead letters, overflow to the
store and back, restart recovery, and a sink that raises beside one that works."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from daemoneye.services.alerter.delivery_db import DeliveryStore
from daemoneye.services.alerter.sinks import Delivery, Sink, SinkError
from daemoneye.services.alerter.worker import SinkWorker
from daemoneye.settings.alerter import FileSink as FileCfg
from tests.conftest import wait_for


class ListSink(Sink):
    """Records what it is sent; can be held shut, fail N times, or raise."""

    kind = "list"

    def __init__(self, name: str, **cfg) -> None:
        config = FileCfg(name=name, backoff_initial_s=0.01, backoff_max_s=0.02, **cfg)
        super().__init__(config, threading.Event(), Path("/nonexistent"), "h")
        self.got: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = 0
        self.raises: Exception | None = None
        self.permanent = False

    def send(self, batch: list[Delivery]) -> None:
        self.gate.wait()
        if self.raises is not None:
            raise self.raises
        if self.fail:
            self.fail -= 1
            raise SinkError("down", retryable=not self.permanent)
        self.got.extend(d.key for d in batch)


@pytest.fixture
def store(tmp_path: Path):
    s = DeliveryStore(tmp_path / "data")
    yield s
    s.close()


def put(store: DeliveryStore, sinks: list[str], n: int) -> list[Delivery]:
    items = []
    for i in range(n):
        key = store.next_key()
        data = json.dumps({"key": key, "alertId": f"a{i}"}).encode()
        items.append(Delivery(key, data, json.loads(data)))
    store.add([(d.key, d.data, sinks) for d in items])
    return items


def start(sink: Sink, store: DeliveryStore, reports: list | None = None) -> SinkWorker:
    halt = threading.Event()
    w = SinkWorker(sink, store, lambda *a: (reports if reports is not None else []).append(a),
                   halt)  # fmt: skip
    w.start()
    return w


def stop(w: SinkWorker) -> None:
    w.halt.set()
    w.wake()
    w.join(5)


def test_a_raising_sink_retries_and_does_not_stop_the_other(store) -> None:
    bad, good = ListSink("bad"), ListSink("good")
    bad.raises = RuntimeError("bug in sink")
    reports: list = []
    wb, wg = start(bad, store, reports), start(good, store)
    items = put(store, ["bad", "good"], 10)
    wb.submit(list(items))
    wg.submit(list(items))
    wait_for(lambda: len(good.got) == 10, 5, "the good sink")
    wait_for(lambda: wb.failed_attempts >= 3, 5, "repeated failures")
    assert wb.pending == 10 and store.count(b"p/", "bad") == 10
    assert any(r[0] == "alert.delivery_failed" and "bug in sink" in r[2]["error"] for r in reports)
    bad.raises = None
    wait_for(lambda: len(bad.got) == 10, 5, "the bad sink once fixed")
    assert bad.got == [d.key for d in items]  # in order, each once
    assert wb.pending == 0 and store.count(b"p/", "bad") == 0
    stop(wb), stop(wg)


def test_exhausted_retries_go_dead_letter_and_retry_revives_them(store) -> None:
    sink = ListSink("s", max_attempts=3)
    sink.fail = 3
    reports: list = []
    w = start(sink, store, reports)
    items = put(store, ["s"], 2)
    w.submit(items)
    wait_for(lambda: len(sink.got) == 1, 5, "the second item after the first died")
    assert sink.got == [items[1].key]
    dead = list(store.failed())
    assert [(s, k, m["attempts"], m["error"]) for s, k, m in dead] == [
        ("s", items[0].key, 3, "down")
    ]
    assert [r[0] for r in reports].count("alert.dead_letter") == 1
    assert w.pending == 0 and w.dead == 1
    moved = store.retry("s")
    w.retried(len(moved))
    wait_for(lambda: len(sink.got) == 2, 5, "the revived item")
    assert sink.got == [items[1].key, items[0].key] and list(store.failed()) == []
    stop(w)


def test_permanent_failure_dead_letters_at_once(store) -> None:
    sink = ListSink("s", max_attempts=10)
    sink.fail, sink.permanent = 1, True
    w = start(sink, store)
    items = put(store, ["s"], 3)
    w.submit(items)
    wait_for(lambda: len(sink.got) == 2, 5, "the rest")
    assert [k for _, k, _ in store.failed()] == [items[0].key]
    stop(w)


def test_overflow_waits_in_the_store_and_is_delivered_once(store) -> None:
    sink = ListSink("s", queue_size=5, batch_size=3)
    sink.gate.clear()  # a stuck sink
    w = start(sink, store)
    items = put(store, ["s"], 50)
    for d in items:
        w.submit([d])
    assert w.overflows >= 40 and w.pending == 50
    sink.gate.set()
    wait_for(lambda: w.pending == 0, 10, "all 50 delivered")
    assert sorted(sink.got) == [d.key for d in items]
    assert len(sink.got) == 50  # none twice
    stop(w)


def test_restart_reloads_pending_and_skips_confirmed(store) -> None:
    first = ListSink("s")
    w = start(first, store)
    confirmed = put(store, ["s"], 3)
    w.submit(confirmed)  # also found by the start-up reload: must still go out once
    wait_for(lambda: w.pending == 0, 5, "first run deliveries")
    stop(w)
    assert sorted(first.got) == [d.key for d in confirmed] and len(first.got) == 3
    crashed = put(store, ["s"], 3)  # stored pending, then the process died
    second = ListSink("s")
    w2 = SinkWorker(second, store, lambda *a: None, threading.Event())
    assert w2.pending == 3  # counted from the store at start
    w2.start()
    wait_for(lambda: len(second.got) == 3, 5, "redelivery after restart")
    assert second.got == [d.key for d in crashed]
    stop(w2)


def test_prune_keeps_records_still_pending_or_failed(store) -> None:
    done = put(store, [], 3)  # delivered everywhere (no sinks pending)
    waiting = put(store, ["s"], 1)
    later = put(store, [], 2)
    removed = store.prune(before_ns=later[-1].key + 1)
    assert removed == 3  # older than the oldest pending record only
    assert [k for k, _ in store.history(newest_first=False)] == [d.key for d in waiting + later]
    assert store.record(done[0].key) is None
