"""The collector's write-ahead log: every event is appended here before it is published.

A log is a directory of segment files named by the first seq they hold
(`00000000000000000001.wal`). A record is `length:u32 crc32c:u32 payload`, the
payload `seq:u64 topic_len:u16 topic envelope`. On open the newest segment is
read to its end: a torn or corrupt tail is cut (truncated), counted and reported,
never fatal. Old segments go when the log passes its size or age limit.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import crc32c

RECORD_HDR = struct.Struct("<II")  # length of payload, crc32c of payload
PAYLOAD_HDR = struct.Struct("<QH")  # seq, topic length
SUFFIX = ".wal"
MAX_RECORD = 64 << 20  # a length above this is garbage, not a record


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    topic: str
    data: bytes


@dataclass
class CutReport:
    segment: str
    offset: int
    bytes_cut: int
    reason: str


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def _read_records(data: bytes) -> Iterator[tuple[int, Entry | None, str]]:
    """(offset after record, entry, "") per good record; (offset, None, why) at the first bad."""
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < RECORD_HDR.size:
            yield offset, None, "torn record header"
            return
        length, crc = RECORD_HDR.unpack_from(data, offset)
        body_at = offset + RECORD_HDR.size
        if length < PAYLOAD_HDR.size or length > MAX_RECORD:
            yield offset, None, f"impossible record length {length}"
            return
        if body_at + length > end:
            yield offset, None, "torn record (shorter than its length)"
            return
        payload = data[body_at : body_at + length]
        if crc32c.crc32c(payload) != crc:
            yield offset, None, "checksum mismatch"
            return
        seq, topic_len = PAYLOAD_HDR.unpack_from(payload, 0)
        topic_end = PAYLOAD_HDR.size + topic_len
        if topic_end > length:
            yield offset, None, "topic longer than its record"
            return
        topic = payload[PAYLOAD_HDR.size : topic_end].decode(errors="replace")
        offset = body_at + length
        yield offset, Entry(seq, topic, payload[topic_end:]), ""


class Wal:
    def __init__(
        self,
        path: Path,
        segment_bytes: int = 16 << 20,
        max_bytes: int = 256 << 20,
        max_age_s: float = 7 * 86400,
        fsync: str = "interval",
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.fsync_policy = fsync
        self.cuts: list[CutReport] = []
        self.appended = 0
        self.write_errors = 0
        self.removed_segments = 0
        self.last_seq = 0
        self._dirty = False
        self._fd = -1
        self._size = 0
        self._open_tail()

    # --- opening --------------------------------------------------------------

    def segments(self) -> list[tuple[int, Path]]:
        """(first seq, path) of every segment, oldest first."""
        out = []
        for p in self.path.iterdir():
            if p.name.endswith(SUFFIX) and p.name[: -len(SUFFIX)].isdigit():
                out.append((int(p.name[: -len(SUFFIX)]), p))
        return sorted(out)

    def _open_tail(self) -> None:
        segs = self.segments()
        # The newest non-empty segment gives the last seq; empty ones are leftovers.
        while segs:
            _first, path = segs[-1]
            last = self._recover(path)
            if last:
                self.last_seq = last
                self._open_segment(path)
                return
            path.unlink()
            segs.pop()

    def _recover(self, path: Path) -> int:
        """Read a segment to its end, cut a bad tail; the last good seq (0 when none)."""
        data = path.read_bytes()
        last = 0
        good_end = 0
        for offset, entry, why in _read_records(data):
            if entry is None:
                self.cuts.append(CutReport(path.name, offset, len(data) - offset, why))
                break
            last, good_end = entry.seq, offset
        if good_end < len(data):
            if not self.cuts or self.cuts[-1].segment != path.name:
                self.cuts.append(CutReport(path.name, good_end, len(data) - good_end, "bad tail"))
            os.truncate(path, good_end)
        return last

    def _open_segment(self, path: Path) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1  # a failed open below must not leave a closed fd in use
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    # --- writing --------------------------------------------------------------

    def append(self, seq: int, topic: str, data: bytes) -> None:
        record = self._record(seq, self.last_seq, topic, data)
        if self._fd < 0 or (self._size + len(record) > self.segment_bytes and self._size > 0):
            try:
                self._rotate(seq)
            except OSError:
                self.write_errors += 1
                raise
        self._write(record, seq, 1)

    def append_many(self, entries: list[tuple[int, str, bytes]]) -> None:
        """Append (seq, topic, envelope) records in order with one write: what one
        wake-up of the service produced. The same records as `append` each, so a torn
        write is cut on open as one torn record would be. A batch that would cross the
        segment limit goes record by record (each may open a new segment)."""
        if len(entries) == 1:
            self.append(*entries[0])
            return
        records = []
        last = self.last_seq
        for seq, topic, data in entries:
            records.append(self._record(seq, last, topic, data))
            last = seq
        blob = b"".join(records)
        if self._fd < 0 or self._size + len(blob) > self.segment_bytes:
            for entry in entries:
                self.append(*entry)
            return
        self._write(blob, last, len(entries))

    @staticmethod
    def _record(seq: int, after: int, topic: str, data: bytes) -> bytes:
        """One record (length, CRC32C, seq, topic, envelope); its seq must follow `after`."""
        if seq <= after:
            raise ValueError(f"WAL seq must grow: {seq} after {after}")
        t = topic.encode()
        payload = PAYLOAD_HDR.pack(seq, len(t)) + t + data
        return RECORD_HDR.pack(len(payload), crc32c.crc32c(payload)) + payload

    def _write(self, blob: bytes, last_seq: int, records: int) -> None:
        """Write whole records to the open segment; on failure none of them stays."""
        try:
            written = os.write(self._fd, blob)
            if written != len(blob):
                raise OSError(28, f"short WAL write ({written} of {len(blob)} bytes)")
        except OSError:
            # A full disk: cut what part of the records got out, so the log stays readable
            # past this point and later appends (when space returns) are good records.
            self.write_errors += 1
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(blob)
        self.last_seq = last_seq
        self.appended += records
        if self.fsync_policy == "always":
            os.fsync(self._fd)
        else:
            self._dirty = True

    def _rotate(self, first_seq: int) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
        self.enforce_limits(reserve=self.segment_bytes)  # room for the new one first
        self._open_segment(self.path / _segment_name(first_seq))

    @property
    def unsynced(self) -> bool:
        """Written since the last fsync."""
        return self._dirty

    def sync(self) -> None:
        """The `interval` policy's periodic fsync."""
        if self._dirty and self._fd >= 0:
            os.fsync(self._fd)
            self._dirty = False

    def enforce_limits(self, now: float | None = None, reserve: int = 0) -> int:
        """Remove the oldest sealed segments past the size or age limit (counting
        `reserve` bytes about to be written); how many went."""
        now = time.time() if now is None else now
        segs = self.segments()
        sizes = {p: p.stat().st_size for _, p in segs}
        total = sum(sizes.values()) + reserve
        removed = 0
        sealed = segs if reserve else segs[:-1]  # while rotating, the last one is sealed too
        for _, path in sealed:  # never the segment being written
            too_big = total > self.max_bytes
            too_old = now - path.stat().st_mtime > self.max_age_s
            if not (too_big or too_old):
                break
            total -= sizes[path]
            path.unlink()
            removed += 1
        self.removed_segments += removed
        return removed

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def size_bytes(self) -> int:
        """Bytes on disk now (what the size limit bounds)."""
        total = 0
        for _, path in self.segments():
            with contextlib.suppress(FileNotFoundError):  # retention may remove it meanwhile
                total += path.stat().st_size
        return total

    # --- reading --------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        segs = self.segments()
        return segs[0][0] if segs else 0

    def read(
        self,
        from_seq: int,
        to_seq: int | None = None,
        limit: int = 10_000,
        max_bytes: int | None = None,
    ) -> list[Entry]:
        """Entries with from_seq <= seq <= to_seq, oldest first, at most `limit`; with
        `max_bytes`, it stops one entry after their sizes (envelope + topic + 16, as a
        replay answer counts them) pass it, so an answer cut there knows more followed
        without every later entry being read and copied."""
        segs = self.segments()
        used, past = 0, 0
        start = 0
        for i, (first, _) in enumerate(segs):
            if first <= from_seq:
                start = i
        out: list[Entry] = []
        for _, path in segs[start:]:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed by retention meanwhile
                continue
            for _, entry, _why in _read_records(data):
                if entry is None:
                    break  # a corrupt sealed segment: serve what is before it
                if entry.seq < from_seq:
                    continue
                if to_seq is not None and entry.seq > to_seq:
                    return out
                out.append(entry)
                if len(out) >= limit:
                    return out
                if max_bytes is not None:
                    used += len(entry.data) + len(entry.topic) + 16
                    past += used > max_bytes
                    if past >= 2:
                        return out
        return out
