"""The detector's history writes (built in this process, real RocksDB): each batch's
rows and cursors are staged and written together once `history_wait_ms` has passed, a
batch that fires an alert is written at once (with what earlier batches staged), and
the `history` verb and a stop write what is staged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from daemoneye import wire
from daemoneye.config import load_settings
from daemoneye.rpc import Request
from daemoneye.rules.engine import Firing
from daemoneye.services.detector.history import History
from daemoneye.services.detector.history_db import DetectorStore
from daemoneye.services.detector.service import Detector
from tests.conftest import close_in_process, open_in_process

pytestmark = pytest.mark.usefixtures("no_host_config")

RULE = """id: marker
name: marker
severity: high
sql: "SELECT pid, path FROM processes WHERE path LIKE '%/marker-exe'"
"""


@contextmanager
def running_detector(tmp_path: Path, wait_ms: float) -> Iterator[Detector]:
    """A detector built in this process with `history_wait_ms`, closed (a stop) after."""
    rules = tmp_path / "rules"
    rules.mkdir(parents=True)
    (rules / "marker.yml").write_text(RULE)
    path = tmp_path / "daemoneye.toml"
    path.write_text(
        f'[detector]\nrules_dir = "{rules}"\nhistory_wait_ms = {wait_ms}\n'
        "snapshot_timeout_s = 0.05\n"
    )
    settings = load_settings(config_file=path, data_dir=tmp_path / "data", run_dir=tmp_path / "run")
    det = open_in_process(Detector(settings))
    try:
        yield det
    finally:
        close_in_process(det)


def apply(det: Detector, seq: int, exe: str) -> None:
    """One start event from collector@t with `seq`, applied as a batch."""
    header = wire.Header("collector@t", "boot", seq, time.time_ns())
    record = {"pid": 1000 + seq, "ppid": 1, "startTicks": seq, "exePath": exe, "name": "x"}
    body = {"kind": "start", "source": "netlink", "timeNs": time.time_ns(), "record": record}
    data = wire.encode_envelope(header, "processEvent", body)
    det.take("events.process.start", wire.decode_envelope(data), "processEvent")
    det.flush()


def stored(det: Detector) -> tuple[list[int], list[tuple]]:
    """The pids in the history and its cursors, as RocksDB holds them now."""
    history = det.history
    assert history is not None
    return [r["pid"] for r in history.by_time()], history.cursors()


def test_benign_batches_share_a_write_an_alerting_batch_is_written_at_once(
    tmp_path: Path,
) -> None:
    with running_detector(tmp_path, wait_ms=60_000) as det:
        apply(det, 1, "/bin/true")
        apply(det, 2, "/bin/true")
        assert stored(det) == ([], [])  # staged: nothing written yet
        assert det.history is not None and det.history.pending == 2
        apply(det, 3, "/opt/marker-exe")
        assert det.alerts_sent == 1
        # the alerting batch and the two before it, with the cursor of the last
        assert stored(det) == ([1001, 1002, 1003], [("collector@t", "events.process", "boot", 3)])
        apply(det, 4, "/bin/true")
        assert stored(det)[0] == [1001, 1002, 1003]
        det.rpc_history(Request("history", {}))  # answers with what is staged too
        assert stored(det) == (
            [1001, 1002, 1003, 1004],
            [("collector@t", "events.process", "boot", 4)],
        )
        apply(det, 5, "/bin/true")
    store = DetectorStore(tmp_path / "data" / "detector", read_only=True)
    try:  # a stop writes what is staged
        pids = [r["pid"] for r in History(store).by_time()]
        assert pids == [1001, 1002, 1003, 1004, 1005]
        assert History(store).cursors() == [("collector@t", "events.process", "boot", 5)]
    finally:
        store.close()


def test_staged_rows_are_written_once_they_have_waited(tmp_path: Path) -> None:
    with running_detector(tmp_path, wait_ms=0) as det:  # 0: every batch written at once
        apply(det, 1, "/bin/true")
        assert stored(det) == ([1001], [("collector@t", "events.process", "boot", 1)])
    with running_detector(tmp_path / "b", wait_ms=50) as det:
        apply(det, 1, "/bin/true")
        assert stored(det) == ([], [])
        assert det.history is not None
        deadline = time.monotonic() + 5
        while not det.history.due(0.05, det.cfg.max_batch):  # the wait running out
            assert time.monotonic() < deadline, "staged rows never came due"
            time.sleep(0.01)
        det.run_scheduled()  # the service's 4 Hz timer: no new event needed
        assert stored(det) == ([1001], [("collector@t", "events.process", "boot", 1)])


def test_any_alert_writes_what_is_staged_before_its_ancestry_reads_history(
    tmp_path: Path,
) -> None:
    """A scheduled rule's alert, or one of a snapshot rebuild, as much as a batch's."""
    with running_detector(tmp_path, wait_ms=60_000) as det:
        apply(det, 1, "/bin/true")
        assert stored(det) == ([], [])
        assert det.engine is not None
        rule = det.engine.rules["marker"].rule
        det.publish_alerts([Firing(rule, {"count": 60}, None, "aggregate")])
        assert det.alerts_sent == 1
        assert stored(det) == ([1001], [("collector@t", "events.process", "boot", 1)])
