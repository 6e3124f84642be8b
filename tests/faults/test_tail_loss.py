"""The alerter stopped (SIGSTOP) during a storm of processes that each match a rule,
with small high-water marks, and the storm over before it runs again: the alerts the
broker dropped were the end of the detector's alert stream, so no later alert shows
the gap. The detector's heartbeats carry the last seq it sent on each stream; the
alerter compares them with what it holds, sees the lost tail as a gap and replays it
from the detector's alert log. Every storm process the collector logged an exec for
has exactly one alert in the file sink."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import wait_for
from tests.faults.harness import Storm, System, needs_realtime
from tests.faults.test_detector_overflow import (
    alert_storm_world,
    settle,
    sink_alerts,
    wal_execs,
)
from tests.stored import wal_pids

pytestmark = needs_realtime()

RATE = 150
HWM = "50"
WHILE_STOPPED = 600  # storm processes run while the alerter is stopped: alerts to drop


def test_a_lost_tail_of_alerts_is_repaired_without_a_later_alert(tmp_path: Path) -> None:
    marker = f"fault-tail-{uuid.uuid4().hex[:6]}"
    world = alert_storm_world(tmp_path, marker)
    system = System(world)
    data = Path(world.settings.data_dir)
    small = {**world.env, "DAEMONEYE_BUS__SEND_HWM": HWM, "DAEMONEYE_BUS__RECV_HWM": HWM}
    storm = Storm(RATE, marker)
    try:
        system.start("broker", env=small)
        system.start("ledger")
        system.start("alerter", env=small)
        system.start("detector")
        system.start("collector")
        storm.start()
        wait_for(lambda: sink_alerts(data, marker)[0], 30, "the first storm alert in the sink")
        system.sigstop("alerter")
        storm.wait_more(WHILE_STOPPED, timeout=WHILE_STOPPED / RATE * 3 + 10)
        storm.stop()
        assert system.procs["collector"].stop() == 0, system.procs["collector"].log()
        execs = wal_execs(world.settings, system.collector_id, marker)
        unlogged = storm.unseen(wal_pids(world.settings, system.collector_id))

        def fired() -> float:
            health = world.rpc.call("control.detector", "health", timeout_s=2).value
            return health["metrics"]["detector.alerts"]

        # every alert the detector will send is sent before the alerter runs again: no
        # later alert can show it the gap, only the detector's heartbeats
        wait_for(lambda: fired() >= len(execs), 30, "the detector to fire for every exec")
        system.sigcont("alerter")
        settled = settle(lambda: set(execs) <= set(sink_alerts(data, marker)[0]), 30)
        alerter = world.rpc.call("control.alerter", "health", timeout_s=10).value["metrics"]
        for name in ("alerter", "detector", "ledger"):
            assert system.procs[name].stop() == 0, system.procs[name].log()
        per_storm, others = sink_alerts(data, marker)
    finally:
        storm.stop()
        world.close()

    assert not unlogged, unlogged  # by the storm's own record of what it ran
    assert alerter["bus.tail_gaps"] >= 1, f"no lost tail seen (did the HWM overflow?): {alerter}"
    assert alerter["bus.missing"] > 0, alerter
    missing = sorted(set(execs) - set(per_storm))
    assert not missing, f"{len(missing)} of {len(execs)} storm execs without an alert: {alerter}"
    assert settled
    assert not [n for n, c in per_storm.items() if c > 1], "an alert delivered twice"
    assert not set(per_storm) - set(execs) and others == 0
