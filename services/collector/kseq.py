"""The kernel's per-CPU sequence numbers of process events: duplicates and losses.

Each CPU numbers every process event it sends, the answers to subscriptions
included (one counter per CPU, shared by every listener), so two sockets see the
same (cpu, seq) for the same event and a socket that gets every event sees every
number. That makes a hand-over between two readers exact: an event already taken
from one is a duplicate when the other brings it (dropped), and a number skipped
is an event no reader brought (an overrun, or a hand-over that left a hole): a
loss, counted in `lost`, never silent. The counter is 32 bits: compared modulo.

A reader reads its three sockets (netlink.open_sockets) at different times, so one
CPU's numbers come out of order: exits wait in EXITS while later execs pass, and a
fork queued after the reader drained OTHER comes a frame after the exec it precedes.
So a number skipped is first a *gap*, remembered per CPU: when it comes later it is
taken; a gap still open after two `settle` periods (the reader holds OTHER and EXITS
`reader_hold_ms` at most) is a loss; a number seen twice is a duplicate. Gaps are
kept within WINDOW numbers of the highest one taken: what falls out of it is a loss,
and what comes from below it a duplicate. A gap counted lost that still comes is
taken (`late`): it was never taken, so it cannot be a duplicate.

A main writes down where it stands for the next one (`save`) when it acks the reader
(and when it stops):
the numbers and gaps noted when it took the last frame acked (`state`), since the
reader gives the next main every frame after that again. What it counted lost since
(`counted_since`: gaps open then, numbers skipped by a frame after) goes with them, so
the next main, taking those frames again, does not count the same loss a second time.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .netlink import ProcEvent

POSITIONS_FILE = "kernel-positions.json"  # beside the WAL: where the last main stopped
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # the numbers start again at each boot

NO_CPU = 0xFFFFFFFF  # an answer to a subscription on older kernels: not numbered per CPU
HALF = 1 << 31
MASK = (1 << 32) - 1
WINDOW = 1 << 14  # numbers kept per CPU below the highest: far more than a hold reorders
SETTLE_S = 0.25  # a gap open over two of these is a loss (the reader's hold is <= 0.1 s)


class SeqCheck:
    def __init__(self) -> None:
        self.last: dict[int, int] = {}  # cpu -> highest seq taken
        self.gaps: dict[int, set[int]] = {}  # cpu -> numbers below it not taken yet
        self.lost = 0  # events the kernel numbered that no reader brought us
        self.duplicates = 0  # events brought twice (a hand-over's overlap), dropped
        self.late = 0  # counted lost, then brought after all (taken)
        self.settles = 0  # settles that acted: two on, a gap open now is taken or counted
        self.last_loss: tuple[int, int, int] = (0, 0, 0)  # (cpu, last seq, next seq)
        self._written_off: dict[int, set[int]] = {}  # gaps counted lost, still takeable
        self._aging: dict[int, set[int]] = {}  # the gaps open at the last settle
        # a CPU first seen: numbers below its first one may still come (late) for two
        # settles; those taken meanwhile, so a second copy is a duplicate
        self._below: dict[int, tuple[int, set[int]]] = {}
        self._below_old: dict[int, tuple[int, set[int]]] = {}
        self._next_settle = 0.0

    def take(self, ev: ProcEvent) -> bool:
        """True when `ev` is new (use it), False for a duplicate (drop it)."""
        if ev.seq < 0 or ev.cpu == NO_CPU:
            return True  # not numbered (an old kernel's subscription answer, a test's event)
        cpu, seq = ev.cpu, ev.seq
        last = self.last.get(cpu)
        if last is None:
            self.last[cpu] = seq
            self._below[cpu] = (seq, set())
            return True
        ahead = (seq - last) & MASK
        if 0 < ahead < HALF:
            if ahead > 1:
                self._open(cpu, last, seq, ahead - 1)
            self.last[cpu] = seq
            return True
        gaps = self.gaps.get(cpu)
        if gaps and seq in gaps:
            gaps.discard(seq)
            return True
        off = self._written_off.get(cpu)
        if off and seq in off:
            off.discard(seq)
            self.late += 1
            return True
        below = self._below.get(cpu) or self._below_old.get(cpu)
        if below and 0 < (below[0] - seq) & MASK <= WINDOW and seq not in below[1]:
            below[1].add(seq)
            return True
        self.duplicates += 1
        return False

    def _open(self, cpu: int, last: int, seq: int, skipped: int) -> None:
        """Numbers `last`+1 .. `seq`-1 were skipped: gaps, but a loss at once for those
        beyond the window."""
        beyond = skipped - WINDOW
        if beyond > 0:
            self._count(cpu, last, seq, beyond)
            last = (last + beyond) & MASK
            skipped = WINDOW
        gaps = self.gaps.setdefault(cpu, set())
        skips = ((last + i) & MASK for i in range(1, skipped + 1))
        off = self._written_off.get(cpu)  # numbers ahead of `last`: a predecessor's count
        gaps.update(skips if not off else (s for s in skips if s not in off))

    def _count(self, cpu: int, last: int, seq: int, n: int) -> None:
        self.lost += n
        self.last_loss = (cpu, last, seq)

    def unsettled(self) -> bool:
        """A later settle still has something to decide (a gap open, a CPU first seen)."""
        return (
            any(self.gaps.values())
            or any(self._aging.values())
            or bool(self._below)
            or bool(self._below_old)
        )

    def settle(self, now: float) -> int:
        """Count as lost the gaps open since the settle before the last one (called
        often; it acts every SETTLE_S). Returns how many it counted."""
        if now < self._next_settle:
            return 0
        self._next_settle = now + SETTLE_S
        self.settles += 1
        counted = 0
        for cpu, gaps in self.gaps.items():
            top = self.last[cpu]
            if len(gaps) > WINDOW:  # fell out of the window: counted at once
                for seq in [s for s in gaps if (top - s) & MASK > WINDOW]:
                    gaps.discard(seq)
                    counted += 1
            old = self._aging.get(cpu)
            stale = gaps & old if old else set()
            if stale:
                gaps -= stale
                counted += len(stale)
                off = self._written_off.setdefault(cpu, set())
                off |= stale
                for seq in [s for s in off if (top - s) & MASK > WINDOW]:
                    off.discard(seq)
                self.last_loss = (cpu, max(stale, key=lambda s: (top - s) & MASK), top)
            self._aging[cpu] = set(gaps)
        self._below_old, self._below = self._below, {}
        self.lost += counted
        return counted

    def state(self) -> dict[str, Any]:
        """What a main continuing from us needs: the numbers taken and the gaps open."""
        return {
            "last": dict(self.last),
            "gaps": {cpu: sorted(g) for cpu, g in self.gaps.items() if g},
        }

    def counted_since(self, noted: dict[str, Any]) -> dict[int, list[int]]:
        """Of the numbers a main continuing from `noted` (an earlier `state()`) would
        count again, those counted lost by now: its open gaps, and numbers beyond its
        last (skipped by frames it will be given again). Gone from the window: left out."""
        out: dict[int, list[int]] = {}
        last, gaps = noted.get("last", {}), noted.get("gaps", {})
        for cpu, off in self._written_off.items():
            top, open_then = last.get(cpu), set(gaps.get(cpu, ()))
            mine = [
                s
                for s in off
                if s in open_then or (top is not None and 0 < (s - top) & MASK < HALF)
            ]
            if mine:
                out[cpu] = sorted(mine)
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state()` of a previous main (`load` of its file), with what it
        counted lost since (`counted_since`): taken late if it comes, counted no more."""
        self.last = dict(state.get("last", {}))
        counted = {int(cpu): set(c) for cpu, c in state.get("counted", {}).items()}
        self.gaps = {
            int(cpu): set(g) - counted.get(int(cpu), set())
            for cpu, g in state.get("gaps", {}).items()
        }
        self._aging, self._below, self._below_old = {}, {}, {}
        self._written_off = counted


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _since_boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def save(path: Path, state: dict[str, Any]) -> None:
    """Write down the numbers taken and the gaps open (`SeqCheck.state`; replaced
    whole: a crash leaves the old or the new)."""
    tmp = path.with_suffix(".tmp")
    data = {"boot_id": _boot_id(), "time": time.time(), "since_boot": _since_boot(), **state}
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load(path: Path, max_age_s: float) -> dict[str, Any]:
    """The state a previous main wrote down (`SeqCheck.restore`), when it can be
    continued from: this boot, and recent (a collector off for longer was off, not
    handing over; and an old number could pass for one ahead modulo 2**32). Empty
    otherwise. A file without gaps (written before the reader split its sockets) has none."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
        data = json.loads(path.read_text())
        # its age by the boot clock, which no step of the wall clock moves (NTP, a VM
        # resumed); by the wall clock for a file written before it was noted
        if "since_boot" in data:
            age = _since_boot() - float(data["since_boot"])
        else:
            age = time.time() - float(data["time"])
        fresh = 0 <= age <= max_age_s
        if data.get("boot_id") == _boot_id() != "" and fresh:
            last = {int(cpu): int(seq) & MASK for cpu, seq in data["last"].items()}
            gaps, counted = (
                {int(cpu): [int(s) & MASK for s in seqs] for cpu, seqs in data.get(k, {}).items()}
                for k in ("gaps", "counted")
            )
            out = {"last": last, "gaps": gaps}
            if counted:
                out["counted"] = counted
            return out
    return {}
