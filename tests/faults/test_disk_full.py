"""Disk full: the data dir is a small tmpfs the test fills while events flow. The
collector reports it, keeps publishing and keeps its WAL bounded; the ledger and the
detector report it and keep what they received pending; when space returns all
resume, nothing the collector published is missing from the ledger or the detector's
history, and the ledger still verifies."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import World, wait_for
from tests.faults.harness import Outcome, Storm, System, needs_realtime
from tests.tmpfs import fill, mount_tmpfs, unmount

pytestmark = needs_realtime()

RATE = 40
SEGMENT = 64 << 10
WAL_MAX = 256 << 10
TMPFS = "32m"


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory) -> Iterator[tuple[Outcome, dict]]:
    base = tmp_path_factory.mktemp("diskfull")
    data = base / "data"
    why = mount_tmpfs(data, TMPFS)
    if why:
        pytest.skip(why)
    try:
        yield from _scenario(base, data)
    finally:  # whatever happened in it, the tmpfs goes
        unmount(data)


def _scenario(base: Path, data: Path) -> Iterator[tuple[Outcome, dict]]:
    seen: dict = {}
    world = World(
        base,
        {
            "DAEMONEYE_COLLECTOR__WAL_SEGMENT_BYTES": str(SEGMENT),
            "DAEMONEYE_COLLECTOR__WAL_MAX_BYTES": str(WAL_MAX),
        },
    )
    system = System(world)
    storm = Storm(RATE, f"fault-disk-{uuid.uuid4().hex[:6]}")
    try:
        system.start_all()
        storm.start()
        wait_for(lambda: len(system.ledger_seqs()) > 0, 20, "events to reach the ledger")
        filler = fill(data, 64 << 10)
        storm.wait_more(RATE)

        def reported(name: str, text: str) -> dict | None:
            health = system.health(name)
            return health if any(text in n for n in health["notes"]) else None

        seen["collector_full"] = wait_for(
            lambda: reported("collector", "WAL writes failing"), 20, "the collector to report"
        )
        seen["ledger_full"] = wait_for(
            lambda: reported("ledger", "ledger writes failing"), 20, "the ledger to report"
        )
        seen["detector_full"] = wait_for(
            lambda: reported("detector", "history writes failing"), 20, "the detector to report"
        )
        storm.wait_more(RATE)  # a second more on a full disk
        seen["wal_bytes_full"] = system.health("collector")["metrics"]["wal.bytes"]
        filler.unlink()
        wait_for(lambda: not reported("collector", "WAL writes failing"), 20, "collector ok")
        wait_for(lambda: not reported("ledger", "ledger writes failing"), 20, "ledger ok")
        wait_for(lambda: not reported("detector", "history writes failing"), 20, "detector ok")
        storm.wait_more(RATE)
        storm.stop()
        yield system.finish(storm), seen
    finally:
        storm.stop()
        world.close()


def test_services_report_a_full_disk(disk_full) -> None:
    _, seen = disk_full
    assert seen["collector_full"]["state"] == "degraded"
    assert seen["ledger_full"]["state"] == "degraded"
    assert seen["detector_full"]["state"] == "degraded"


def test_wal_stays_bounded(disk_full) -> None:
    out, seen = disk_full
    assert seen["wal_bytes_full"] <= WAL_MAX + SEGMENT
    assert out.metrics["collector"]["wal.bytes"] <= WAL_MAX + SEGMENT


def test_ledger_has_every_published_event_once(disk_full) -> None:
    out, _ = disk_full
    unlogged = int(out.metrics["collector"]["wal.unlogged"])
    assert unlogged > 0, "the disk never filled under the collector"
    # every seq up to the last was published: logged (the WAL keeps the newest, bounded),
    # or counted as unlogged while the disk was full; the WAL reads back whole
    assert len(out.wal) + unlogged <= out.last_seq
    assert max(out.wal) == out.last_seq
    assert set(out.ledger_seqs) == set(range(1, out.last_seq + 1)), out.ledger_problems()
    assert max(out.ledger_seqs.values()) == 1
    assert out.ledger_gaps == []


def test_ledger_has_every_storm_process(disk_full) -> None:
    """By the storm's own record (the WAL lacks what was unlogged while the disk was full
    and what its bound cut, so the ledger is where every process must be)."""
    out, _ = disk_full
    assert out.storm_ran > 3 * RATE, f"too few storm processes: {out.storm_ran}"
    assert not out.storm_not_in_ledger, out.storm_not_in_ledger


def test_ledger_verifies_after_a_full_disk(disk_full) -> None:
    out, _ = disk_full
    assert out.metrics["ledger"]["ledger.write_errors"] > 0
    assert out.verify_rc == 0, out.verify_out


def test_detector_history_resumes_after_a_full_disk(disk_full) -> None:
    out, _ = disk_full
    after = max(out.wal)  # the last event, logged once the disk had room again
    assert out.detector_times[out.wal[after][-1]] == 1, out.detector_problems()
    metrics = out.metrics["detector"]
    assert metrics["detector.store_errors"] > 0 and metrics["detector.store_reopens"] > 0
    assert metrics["detector.history_dropped"] == 0 and metrics["detector.history_pending"] == 0
    # every event the WAL holds (the disk-full stretch is unlogged there) is in history once;
    # what was held in memory while the disk was full was written when space returned
    want = Counter(t for times in out.wal.values() for t in times)
    missing = want - out.detector_times
    assert not missing, f"history lacks {sum(missing.values())} of the WAL's events"
    assert all(out.detector_times[t] == 1 for t in want), "an event is in history twice"
