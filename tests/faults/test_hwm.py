"""A subscriber stopped (SIGSTOP) while events flow, with small high-water marks:
the broker drops what overflows, the subscriber sees a gap when it runs again and
repairs it by replay from the collector's WAL. The ledger is the subscriber here
(the detector's missing replay is shown in test_kill's broker case)."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import World, wait_for
from tests.faults.harness import Storm, System, needs_realtime

pytestmark = needs_realtime()

RATE = 60
HWM = "100"


@pytest.mark.parametrize(
    "stopped_s", [pytest.param(3, id="3s"), pytest.param(10, id="10s", marks=pytest.mark.slow)]
)
def test_stopped_subscriber_overflows_and_repairs(tmp_path, stopped_s: int) -> None:
    world = World(tmp_path)
    system = System(world)
    small = {**world.env, "DAEMONEYE_BUS__SEND_HWM": HWM, "DAEMONEYE_BUS__RECV_HWM": HWM}
    storm = Storm(RATE, f"fault-hwm-{uuid.uuid4().hex[:6]}")
    try:
        system.start("broker", env=small)
        system.start("ledger", env=small)
        system.start("detector")
        system.start("collector")
        storm.start()
        wait_for(lambda: len(system.ledger_seqs()) > 0, 20, "events to reach the ledger")
        before = system.collector_last_seq()
        system.sigstop("ledger")
        storm.wait_more(int(RATE * stopped_s), timeout=stopped_s * 3 + 10)
        # and until enough envelopes to overflow its queue have gone (stops are batched)
        sent_meanwhile = system.wait_sent(before, 3 * int(HWM), timeout=stopped_s * 3 + 20)
        system.sigcont("ledger")
        storm.wait_more(RATE)
        storm.stop()
        out = system.finish(storm)
    finally:
        storm.stop()
        world.close()
    assert sent_meanwhile > 3 * int(HWM), f"too few events to overflow: {sent_meanwhile}"
    ledger = out.metrics["ledger"]
    assert ledger["bus.gaps"] >= 1, f"no overflow seen as a gap: {ledger}"
    assert ledger["ledger.replayed"] >= ledger["bus.missing"] > 0, str(ledger)
    problems = out.ledger_problems()
    assert not problems, problems
    assert not out.storm_not_in_wal, out.storm_not_in_wal  # by the storm's own record
    assert not out.storm_not_in_ledger, out.storm_not_in_ledger
    assert out.ledger_gaps == []
    assert out.verify_rc == 0, out.verify_out
