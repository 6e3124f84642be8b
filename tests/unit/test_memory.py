"""daemoneye.memory: glibc malloc tuning (fixed mmap threshold, capped arenas), trim and
the heap figures, checked against what glibc and the kernel report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemoneye import memory

glibc = pytest.mark.skipif(not memory.available(), reason="needs glibc >= 2.33 (mallinfo2)")
MB = 1 << 20

# Run in a fresh interpreter: tune() must come before any thread exists, and the
# dynamic mmap threshold is process-wide state that one test would leave to the next.
PROBE = """
import json, sys, threading
from daemoneye import memory
tuned = memory.tune() if sys.argv[1] == "tuned" else None
big = bytes(4 << 20)  # above 128 KiB: mmapped either way
del big  # freeing it raises glibc's dynamic mmap threshold to 4 MiB, unless tuned
before = memory.heap_stats()
mid = bytes(1 << 20)  # 1 MiB: from the heap after the raise, mmapped when tuned
during = memory.heap_stats()
barrier = threading.Barrier(7)
def work():
    held = [bytes(1000) for _ in range(100)]  # > 512 B: malloc, in this thread's arena
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
barrier.wait()
arenas = len(memory.arenas())
for t in threads:
    t.join()
print(json.dumps({"tuned": tuned, "mmapped_growth": during.mmapped - before.mmapped,
                  "arena_growth": during.arena - before.arena, "arenas": arenas}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@glibc
def test_untuned_glibc_carves_megabyte_buffers_from_the_heap() -> None:
    """The cause of the ledger's growth, shown: after one big block is freed, a 1 MiB
    buffer no longer gets its own mapping but comes out of the heap."""
    got = probe("default")
    assert got["mmapped_growth"] < MB
    assert got["arena_growth"] >= MB // 2  # the heap grew (by less where it had free room)
    assert got["arenas"] > memory.ARENA_MAX  # a new arena per thread that mallocs


@glibc
def test_tune_keeps_megabyte_buffers_mmapped_and_caps_arenas() -> None:
    got = probe("tuned")
    assert got["tuned"] is True
    assert got["mmapped_growth"] >= MB  # given back to the kernel the moment it is freed
    assert got["arena_growth"] < MB
    assert got["arenas"] <= memory.ARENA_MAX


@glibc
def test_heap_stats_follow_allocations() -> None:
    before = memory.heap_stats()
    held = [bytes(2000) for _ in range(20_000)]  # ~40 MB of malloc'd blocks
    during = memory.heap_stats()
    assert during.in_use - before.in_use >= 30 * MB
    del held
    after = memory.heap_stats()
    assert during.in_use - after.in_use >= 30 * MB
    assert after.held >= after.in_use


@glibc
def test_trim_returns_free_pages_held_between_live_blocks() -> None:
    """Free memory pinned below a live block stays in RSS until trim() madvises it away."""
    blocks = [bytes(1000) for _ in range(100_000)]
    keep = blocks[::50]  # one live block every ~50 KB: no heap top to shrink
    del blocks
    held = memory.rss_breakdown()["Anonymous"]
    assert memory.trim() is True
    assert held - memory.rss_breakdown()["Anonymous"] >= 40 * MB
    assert len(keep) == 2000


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="no smaps_rollup")
def test_rss_breakdown_reads_the_process() -> None:
    own = memory.rss_breakdown()
    assert own["Rss"] >= own["Anonymous"] > 0
    assert memory.rss_breakdown(999_999_999) == {}  # no such process: empty, no error


@glibc
def test_malloc_info_lists_every_arena() -> None:
    assert memory.malloc_info().startswith("<malloc")
    arenas = memory.arenas()
    assert arenas and all(held >= free >= 0 for held, free in arenas)
