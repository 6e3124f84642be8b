"""Property tests (hypothesis) over the WAL reader and the rule loader/validator: no
input crashes or hangs them, and every rejection says what and where. (The atheris
fuzzers tests/fuzz/fuzz_wal.py and fuzz_rules.py explore the same code by coverage.)"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemoneye.rules.model import parse_rules_text
from daemoneye.rules.sandbox import BudgetExceeded
from daemoneye.rules.validate import Validator
from daemoneye.services.collector import wal as walmod

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALIDATOR = Validator()


def segment(records: list[tuple[int, str, bytes]]) -> bytes:
    """A well-formed segment holding these records, made by the real writer."""
    with tempfile.TemporaryDirectory(prefix="de-hyp-") as d:
        w = walmod.Wal(Path(d), segment_bytes=1 << 30)
        for seq, topic, data in records:
            w.append(seq, topic, data)
        w.close()
        return b"".join(p.read_bytes() for _, p in w.segments())


records_st = st.lists(
    st.tuples(st.sampled_from(["events.process.start", "events.process.stop"]), st.binary()),
    min_size=1,
    max_size=20,
).map(lambda rs: [(i + 1, t, d) for i, (t, d) in enumerate(rs)])


@FAST
@given(st.binary(max_size=4096))
def test_wal_reader_never_raises_on_any_bytes(data: bytes) -> None:
    end = 0
    for offset, entry, why in walmod._read_records(data):
        assert offset >= end
        if entry is None:
            assert why
            break
        end = offset


@FAST
@given(records_st, st.data())
def test_wal_recovery_keeps_exactly_the_records_before_damage(records, data) -> None:
    raw = segment(records)
    cut = data.draw(st.integers(0, len(raw)), label="cut at")
    flip = data.draw(st.one_of(st.none(), st.integers(0, max(0, cut - 1))), label="flip byte")
    damaged = bytearray(raw[:cut])
    if flip is not None and damaged:
        damaged[flip] ^= 0xFF
    good = [e for _, e, _ in walmod._read_records(raw[:cut]) if e is not None]
    if flip is not None and damaged:
        # a flipped byte damages its own record; every record wholly before it survives
        good = [e for e in good if _end_of(raw, e.seq) <= flip]
    with tempfile.TemporaryDirectory(prefix="de-hyp-") as d:
        path = Path(d) / "00000000000000000001.wal"
        path.write_bytes(bytes(damaged))
        w = walmod.Wal(Path(d))
        try:
            got = w.read(0, None, 1 << 20)
            assert [(e.seq, e.data) for e in got] == [(e.seq, e.data) for e in good]
            assert w.last_seq == (good[-1].seq if good else 0)
            if len(damaged) > sum(_size(e) for e in good):
                assert w.cuts, "damage must be reported as a cut"
            w.append(w.last_seq + 1, "events.process.start", b"after")  # writable again
            assert w.read(w.last_seq, w.last_seq)[0].data == b"after"
        finally:
            w.close()


def _size(e: walmod.Entry) -> int:
    return walmod.RECORD_HDR.size + walmod.PAYLOAD_HDR.size + len(e.topic.encode()) + len(e.data)


def _end_of(raw: bytes, seq: int) -> int:
    for offset, entry, _ in walmod._read_records(raw):
        if entry is not None and entry.seq == seq:
            return offset
    raise AssertionError(seq)


yaml_like = st.one_of(
    st.text(max_size=600),
    st.builds(
        lambda i, sev, sql, extra: f"id: {i}\nname: n\nseverity: {sev}\nsql: {sql}\n{extra}",
        st.text(max_size=20),
        st.sampled_from(["high", "low", "nope", "", "[1]"]),
        st.text(max_size=200),
        st.text(max_size=60),
    ),
)


@FAST
@given(yaml_like)
def test_rule_files_load_or_name_the_problem(text: str) -> None:
    rules, problems = parse_rules_text(text, "hyp.yml")
    for p in problems:
        assert p.path == "hyp.yml" and p.line >= 1 and p.reason
    for rule in rules:
        result = VALIDATOR.check(rule)
        if hasattr(result, "reason"):
            assert result.reason and result.path == "hyp.yml"


sql_like = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda cols, table, where: f"SELECT {cols} FROM {table} WHERE {where}",
        st.sampled_from(["*", "pid, name", "count(*)", "load_extension('x')", "readfile('/')"]),
        st.sampled_from(["processes", "process_events", "sqlite_master", "users", "x"]),
        st.text(max_size=80),
    ),
)


@FAST
@given(sql_like)
def test_validator_answers_any_sql(sql: str) -> None:
    reason = VALIDATOR.check_sql(sql)
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is None:  # what passes only reads: run it, under a budget
        before = VALIDATOR.sandbox.conn.total_changes
        with contextlib.suppress(BudgetExceeded, sqlite3.Error, ValueError, OverflowError):
            VALIDATOR.sandbox.run(sql, 0.05, 100)
        assert VALIDATOR.sandbox.conn.total_changes == before, sql
