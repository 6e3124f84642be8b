"""The kernel's per-CPU sequence numbers of process events: duplicates and losses.

Each CPU numbers every process event it sends, the answers to subscriptions
included (one counter per CPU, shared by every listener), so two sockets see the
same (cpu, seq) for the same event and a socket that gets every event sees every
number. That makes a hand-over between two readers exact: an event already taken
from one is a duplicate when the other brings it (dropped), and a number skipped
is an event no reader brought (an overrun, or a hand-over that left a hole): a
loss, counted in `lost`, never silent. The counter is 32 bits: compared modulo.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from .netlink import ProcEvent

POSITIONS_FILE = "kernel-positions.json"  # beside the WAL: where the last main stopped
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # the numbers start again at each boot

NO_CPU = 0xFFFFFFFF  # an answer to a subscription on older kernels: not numbered per CPU
HALF = 1 << 31
MASK = (1 << 32) - 1


class SeqCheck:
    def __init__(self) -> None:
        self.last: dict[int, int] = {}  # cpu -> last seq taken
        self.lost = 0  # events the kernel numbered that no reader brought us
        self.duplicates = 0  # events brought twice (a hand-over's overlap), dropped
        self.last_loss: tuple[int, int, int] = (0, 0, 0)  # (cpu, last seq, next seq)

    def take(self, ev: ProcEvent) -> bool:
        """True when `ev` is new (use it), False for a duplicate (drop it)."""
        if ev.seq < 0 or ev.cpu == NO_CPU:
            return True  # not numbered (an old kernel's subscription answer, a test's event)
        cpu = ev.cpu
        last = self.last.get(cpu)
        if last is not None:
            ahead = (ev.seq - last) & MASK
            if ahead == 0 or ahead >= HALF:
                self.duplicates += 1
                return False
            if ahead > 1:
                self.lost += ahead - 1
                self.last_loss = (cpu, last, ev.seq)
        self.last[cpu] = ev.seq
        return True


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def save(path: Path, last: dict[int, int]) -> None:
    """Write down the numbers taken (replaced whole: a crash leaves the old or the new)."""
    tmp = path.with_suffix(".tmp")
    data = {"boot_id": _boot_id(), "time": time.time(), "last": last}
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load(path: Path, max_age_s: float) -> dict[int, int]:
    """The numbers a previous main wrote down, when they can be continued from: this
    boot, and recent (a collector off for longer was off, not handing over; and an old
    number could pass for one ahead modulo 2**32)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
        data = json.loads(path.read_text())
        fresh = 0 <= time.time() - float(data["time"]) <= max_age_s
        if data.get("boot_id") == _boot_id() != "" and fresh:
            return {int(cpu): int(seq) & MASK for cpu, seq in data["last"].items()}
    return {}
