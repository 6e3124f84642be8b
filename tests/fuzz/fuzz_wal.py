"""Coverage-guided fuzzing of the collector's WAL reader and crash recovery.

    .venv/bin/python tests/fuzz/fuzz_wal.py -runs=100000
    .venv/bin/python tests/fuzz/fuzz_wal.py -max_total_time=600 corpus_dir/

Each input is the bytes of a segment file as a crash (or an attacker with write
access to the data dir) may leave it. Reading never raises; opening the log cuts a
bad tail (counted, reported) and keeps the good prefix exactly; the log then accepts
appends and reads them back. Any other exception, an abort or a hang is a finding.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from daemoneye.services.collector import wal as walmod

WORK = Path(tempfile.mkdtemp(prefix="fuzz-wal-"))
MAX_SEQ = (1 << 64) - 1


def seeds() -> list[bytes]:
    d = Path(tempfile.mkdtemp(prefix="fuzz-wal-seed-"))
    w = walmod.Wal(d, segment_bytes=1 << 20)
    for seq in range(1, 6):
        w.append(seq, f"events.process.{'start' if seq % 2 else 'stop'}", b"x" * (seq * 7))
    w.close()
    data = [p.read_bytes() for _, p in w.segments()]
    shutil.rmtree(d)
    good = data[0]
    return [good, good[:-3], good + b"\x01\x02", good[:20] + b"\xff" * 8 + good[28:]]


def good_prefix(data: bytes) -> tuple[int, list[walmod.Entry]]:
    """(end of the last good record, the good entries) by the pure reader."""
    end, out = 0, []
    for offset, entry, why in walmod._read_records(data):
        if entry is None:
            assert why, "a bad record without a reason"
            break
        assert offset > end, "the reader went backwards"
        end = offset
        out.append(entry)
    return end, out


def one_input(data: bytes) -> None:
    end, entries = good_prefix(data)
    d = WORK / "wal"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    (d / "00000000000000000001.wal").write_bytes(data)
    w = walmod.Wal(d)
    try:
        last = entries[-1].seq if entries else 0
        assert w.last_seq == last, (w.last_seq, last)
        if end < len(data):
            assert w.cuts and w.cuts[0].bytes_cut == len(data) - end, w.cuts
        if last:  # the segment was kept, cut to exactly its good prefix
            assert (d / "00000000000000000001.wal").read_bytes() == data[:end]
        if last < MAX_SEQ:
            w.append(last + 1, "events.process.start", b"after")
            back = w.read(0, None, 1 << 20)
            assert (back[-1].seq, back[-1].data) == (last + 1, b"after"), back[-3:]
            assert [e.seq for e in back[:-1]] == [e.seq for e in entries if e.seq >= 0]
    finally:
        w.close()
    again = walmod.Wal(d)  # what recovery left is a clean log
    try:
        assert not again.cuts, again.cuts
    finally:
        again.close()


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith("-timeout=") for a in argv):
        argv.append("-timeout=10")  # a hang is a finding, found in seconds
    if not any(a.startswith("-max_total_time=") for a in argv):
        argv.append("-max_total_time=120")  # -runs=N stops at N inputs or 2 minutes
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="fuzz-wal-corpus-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed{i}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
