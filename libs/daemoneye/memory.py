"""glibc malloc tuning and heap figures for long-running services.

Why the ledger's RSS grew in the soak while neither Python nor RocksDB held more:
glibc raises its mmap threshold to the size of every mmapped block freed (up to
32 MiB), and its trim threshold to twice that. Once RocksDB frees a memtable's
megabyte blocks or a multi-megabyte write batch, such buffers are carved from the
heaps instead of mmapped, and what is freed stays held (tens of MB, measured with
`arenas()`). Each thread that mallocs also gets an arena of its own (up to 8 per
core), and a heap whose top is pinned by one live block (ZeroMQ's queue after a
backlog drained) never shrinks by itself.

`tune()`, called once before any thread starts, fixes the mmap threshold (which
turns the dynamic raise off) and caps the arenas; `trim()`, called now and then
from the service's timer, hands free pages in the middle of every heap back.
On a libc without these calls (musl, macOS) all of it does nothing.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path

from daemoneye.libc import libc as c_library

# mallopt parameters (glibc malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENA_MAX = 2  # one for the main thread, one shared by every other thread
MMAP_THRESHOLD = 128 << 10  # glibc's initial value, kept: blocks above it are mmapped
TRIM_INTERVAL_S = 10.0  # how often a service calls trim(): ms each (~20 ms per 100 MB free)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes obtained from the kernel with brk/mmap for arenas
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in chunks mmapped one by one (large allocations)
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # bytes free inside the arenas
            "keepcost",
        )
    ]


def _load_libc() -> ctypes.CDLL | None:
    libc = c_library()
    if libc is None:
        return None
    needed = ("mallopt", "malloc_trim", "mallinfo2")
    if not all(hasattr(libc, name) for name in needed):
        return None  # not glibc >= 2.33
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.mallinfo2.argtypes = []
    libc.mallinfo2.restype = _Mallinfo2
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.malloc_info.restype = ctypes.c_int
    libc.open_memstream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libc.open_memstream.restype = ctypes.c_void_p
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


_LIBC = _load_libc()


def available() -> bool:
    """Whether this process runs on a glibc whose malloc can be tuned here."""
    return _LIBC is not None


@dataclass(frozen=True)
class HeapStats:
    """glibc's own account of its heap, in bytes (all arenas)."""

    arena: int  # held in arenas (brk heap + mmapped arena heaps)
    mmapped: int  # held in large chunks mmapped one by one
    in_use: int  # handed out and not yet freed
    free: int  # free inside the arenas: what fragmentation or a missed trim keeps

    @property
    def held(self) -> int:
        return self.arena + self.mmapped


def tune(arena_max: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix the mmap threshold and cap malloc arenas. Call once, first thing, before
    any thread (ZeroMQ's, RocksDB's) starts: a thread keeps the arena it was given.
    Returns whether both settings took (False off glibc)."""
    if _LIBC is None:
        return False
    ok = _LIBC.mallopt(M_MMAP_THRESHOLD, mmap_threshold)  # also stops the dynamic raise
    return bool(_LIBC.mallopt(M_ARENA_MAX, arena_max) and ok)


def trim() -> bool:
    """Give free heap pages of every arena back to the kernel; True if any were."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


def heap_stats() -> HeapStats | None:
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2()
    return HeapStats(info.arena, info.hblkhd, info.uordblks, info.fordblks)


def malloc_info() -> str:
    """glibc's malloc_info(3) XML: every arena's held and free bytes ("" off glibc)."""
    if _LIBC is None:
        return ""
    buf, size = ctypes.c_void_p(), ctypes.c_size_t()
    stream = _LIBC.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return ""
    try:
        _LIBC.malloc_info(0, stream)
    finally:
        _LIBC.fclose(stream)  # flushes buf and size
    try:
        return ctypes.string_at(buf, size.value).decode("ascii", "replace")
    finally:
        _LIBC.free(buf)


def arenas() -> list[tuple[int, int]]:
    """(held, free) bytes of each malloc arena, the main one first."""
    out = []
    for heap in re.finditer(r'<heap nr="\d+">(.*?)</heap>', malloc_info(), re.S):
        held = re.search(r'<system type="current" size="(\d+)"/>', heap.group(1))
        free = re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"/>', heap.group(1))
        out.append((int(held.group(1)) if held else 0, sum(int(f) for f in free)))
    return out


def rss_breakdown(pid: int | str = "self") -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in bytes (Rss, Anonymous, ...); empty where missing."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key.strip()] = int(parts[0]) * 1024
    return out
