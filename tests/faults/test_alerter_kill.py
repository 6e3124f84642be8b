"""kill -9 of the alerter during an exec storm whose every process matches a rule,
then a restart: every alert the detector published is in the file sink (those sent
while the alerter was down are replayed from the detector's alert log), and none
twice."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from daemoneye.bus import Subscriber
from tests.conftest import World, wait_for
from tests.faults.harness import Storm, System, needs_realtime
from tests.sink_lines import records_of

pytestmark = needs_realtime()
RATE = 30


def sink_ids(data_dir: Path) -> Counter:
    """alertId -> lines, over every alerts.jsonl under the data dir."""
    ids: Counter = Counter()
    for record in records_of(data_dir.rglob("alerts.jsonl*")):
        ids[record.get("alertId", "")] += 1
    return ids


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Iterator[tuple[Counter, Counter]]:
    base = tmp_path_factory.mktemp("alerter-kill")
    marker = f"fault-alert-{uuid.uuid4().hex[:6]}"
    rules = base / "rules"
    rules.mkdir()
    (rules / "storm.yml").write_text(
        "id: fault-storm\nname: fault storm\ndescription: the fault suite's storm\n"
        f"severity: low\nsql: SELECT pid, name, cmdline FROM processes "
        f"WHERE cmdline LIKE '%{marker}%'\n"
    )
    world = World(base, {"DAEMONEYE_RULES_DIR": str(rules)})
    system = System(world)
    data = Path(world.settings.data_dir)
    sock = world.factory.connect(zmq.SUB, world.settings.endpoint("events-out"))
    sub = Subscriber(sock, ("alerts.", "control.health."), world.settings.bus.max_event_bytes)
    published: Counter = Counter()

    def pump() -> None:
        for msg in sub.drain(10_000):
            if msg.kind == "alert" and marker in msg.body.title + msg.body.rowJson:
                published[msg.body.alertId] += 1

    storm = Storm(RATE, marker)
    try:
        for name in ("broker", "ledger", "alerter", "detector", "collector"):
            system.start(name)
        wait_for(lambda: sub.recv(100) is not None, 20, "our subscription to be live")
        storm.start()
        wait_for(lambda: (pump(), published)[1] and sink_ids(data), 30, "alerts in the sink")
        storm.wait_more(RATE)
        system.kill9("alerter")
        storm.wait_more(RATE)  # alerts published while no alerter runs
        system.restart("alerter")
        pump()
        before_restart = set(published)  # what was published until it answers again
        storm.wait_more(RATE)
        storm.stop()

        def settled() -> bool:
            # every alert published so far in the sink, those of the dead window (the
            # alert log's replay) included; a last pump after this check could take an
            # alert the detector published meanwhile, before the alerter wrote it
            pump()
            after = set(published) - before_restart
            return bool(after) and set(published) <= set(sink_ids(data))

        with contextlib.suppress(pytest.fail.Exception):  # the tests below say what is missing
            wait_for(settled, 30, "every published alert in the sink")
        yield published, sink_ids(data)
    finally:
        storm.stop()
        world.close()


def test_no_alert_delivered_twice(outcome) -> None:
    published, sink = outcome
    assert len(published) > 2 * RATE
    assert max(published.values()) == 1, "the bus carried an alert twice"
    dups = {a: n for a, n in sink.items() if n > 1}
    assert not dups, f"{len(dups)} alerts written twice to the file sink"


def test_every_published_alert_reaches_the_sink(outcome) -> None:
    published, sink = outcome
    missing = set(published) - set(sink)
    assert not missing, f"{len(missing)} of {len(published)} alerts never reached the sink"
