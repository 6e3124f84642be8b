"""What a stopped system holds, read from its stores: the collector's WAL (the ground
truth: every event is logged before it is published), the ledger and the detector's
history. Used by the fault suite and by bench/soak.py, so both count the same way;
no pytest here, so a bench script can import it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemoneye import wire
from daemoneye.config import Settings
from daemoneye.ledger import entry as entries
from daemoneye.ledger.store import LedgerStore, open_store
from daemoneye.services.collector.wal import Wal
from daemoneye.services.detector.history import History
from daemoneye.store import Store

PROCESS_PREFIX = "events.process."


def read_wal(settings: Settings, collector_id: str) -> dict[int, tuple[int, ...]]:
    """seq -> events' timeNs of every process envelope the collector's WAL still holds
    (retention may have cut its oldest segments; a batch envelope is one seq)."""
    wal = Wal(_wal_path(settings, collector_id))
    try:
        out = {}
        for e in wal.read(0, None, 10**9):
            if e.topic.startswith(PROCESS_PREFIX):
                out[e.seq] = event_times(wire.decode_envelope(e.data))
        return out
    finally:
        wal.close()


def wal_process_events(settings: Settings, collector_id: str) -> Iterator[Any]:
    """Every ProcessEvent of the process envelopes the collector's WAL still holds."""
    wal = Wal(_wal_path(settings, collector_id))
    try:
        for e in wal.read(0, None, 10**9):
            if e.topic.startswith(PROCESS_PREFIX):
                yield from wire.process_events(wire.decode_envelope(e.data))
    finally:
        wal.close()


def wal_pids(settings: Settings, collector_id: str) -> set[int]:
    """Pids of every process event the collector's WAL still holds."""
    return {ev.record.pid for ev in wal_process_events(settings, collector_id)}


def wal_argv_pids(settings: Settings, collector_id: str, marker: str) -> dict[str, set[int]]:
    """argv[2] (a storm's process number) -> pids of WAL events whose argv[1] is
    `marker`: tells a process logged under another pid from one never logged."""
    out: dict[str, set[int]] = {}
    for ev in wal_process_events(settings, collector_id):
        argv = list(ev.record.cmdline)
        if len(argv) >= 3 and argv[1] == marker:
            out.setdefault(argv[2], set()).add(ev.record.pid)
    return out


def wal_pids_without_argv(settings: Settings, collector_id: str, exe: str) -> set[int]:
    """Pids of WAL events named as `exe` is (the kernel's comm: its base name, 15 bytes)
    never logged with `exe` as argv[0]: execs of it whose /proc read came after they
    exited, so the collector had their name from stat but not their argv."""
    name = Path(exe).name[:15]
    named: set[int] = set()
    with_argv: set[int] = set()
    for ev in wal_process_events(settings, collector_id):
        record = ev.record
        if record.name != name:
            continue
        named.add(record.pid)
        if len(record.cmdline) and record.cmdline[0] == exe:
            with_argv.add(record.pid)
    return named - with_argv


LOSS_METRICS = ("collector.lost", "netlink.duplicates", "lost_events", "wal.unlogged")


def capture_diagnosis(
    settings: Settings, collector_id: str, marker: str, missing: list[Any], metrics: dict
) -> str:
    """Why storm processes are missing from the WAL: logged under another pid, or
    never logged, and the collector's loss counters."""
    by_n = wal_argv_pids(settings, collector_id, marker)
    seen = {r.n: sorted(by_n.get(str(r.n), ())) for r in missing[:5]}
    counters = {k: metrics.get(k) for k in LOSS_METRICS}
    return f"argv found under pids {seen}; collector {counters}"


def ledger_pids(settings: Settings, collector_id: str) -> set[int]:
    """Pids of every process event of this collector the ledger holds (with payload)."""
    ledger = LedgerStore(open_store(settings.ledger.db_path(settings.data_dir), read_only=True))
    pids: set[int] = set()
    try:
        for seq, value in ledger.entries():
            e = entries.parse_record(value)
            payload = ledger.payload(seq)
            if e.actor == collector_id and e.action.startswith(PROCESS_PREFIX) and payload:
                pids.update(event_pids(wire.decode_envelope(payload)))
    finally:
        ledger.close()
    return pids


def event_pids(envelope: Any) -> tuple[int, ...]:
    """Pids of the event(s) of a processEvent or processEventBatch envelope."""
    return tuple(e.record.pid for e in wire.process_events(envelope))


def _wal_path(settings: Settings, collector_id: str) -> Path:
    return Path(settings.data_dir) / "collector" / collector_id.replace("/", "_") / "wal"


def event_times(envelope: Any) -> tuple[int, ...]:
    """timeNs of the event(s) of a processEvent or processEventBatch envelope."""
    return tuple(e.timeNs for e in wire.process_events(envelope))


def read_ledger(settings: Settings, collector_id: str) -> tuple[Counter, list[str]]:
    """(collector seq -> entries holding it, ledger.gap payloads)."""
    ledger = LedgerStore(open_store(settings.ledger.db_path(settings.data_dir), read_only=True))
    seqs: Counter = Counter()
    gaps: list[str] = []
    try:
        for seq, value in ledger.entries():
            e = entries.parse_record(value)
            if e.actor != collector_id:
                continue
            if e.action == "ledger.gap":
                gaps.append((ledger.payload(seq) or b"").decode())
            elif e.action.startswith(PROCESS_PREFIX):
                seqs[wire.decode_envelope(ledger.payload(seq)).seq] += 1
    finally:
        ledger.close()
    return seqs, gaps


def read_history(settings: Settings, collector_id: str) -> Counter:
    """event time_ns -> rows in a (stopped) detector's history, for one collector."""
    store = Store(Path(settings.data_dir) / "detector", read_only=True)
    try:
        rows = History(store).by_time(0, 10**9)
    finally:
        store.close()
    return Counter(r["time_ns"] for r in rows if r.get("collector") == collector_id)
