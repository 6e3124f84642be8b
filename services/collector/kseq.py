"""The kernel's per-CPU sequence numbers of process events: duplicates and losses.

Each CPU numbers every process event it sends (one counter per CPU, shared by every
listener), so two sockets see the same (cpu, seq) for the same event. That makes a
hand-over between two readers' sockets exact: an event already taken from one is a
duplicate when the other brings it (dropped), and a number skipped across the
hand-over is an event neither brought: a loss, counted (`lost`), never silent.

Gaps inside one socket's stream are not ours: the kernel numbers some events it then
delivers to no listener at all (two sockets read side by side miss exactly the same
numbers, without ENOBUFS; here about 1 in 2,000 events). They are counted apart
(`kernel_gaps`). The counter is 32 bits: numbers are compared modulo.
"""

from __future__ import annotations

from .netlink import ProcEvent

NONE = 0  # PROC_EVENT_NONE: the kernel's answer to a subscription, numbered apart
HALF = 1 << 31
MASK = (1 << 32) - 1


class SeqCheck:
    def __init__(self) -> None:
        self.last: dict[int, int] = {}  # cpu -> last seq taken
        self.lost = 0  # events skipped across a hand-over: no reader brought them
        self.kernel_gaps = 0  # events skipped inside one socket's stream (see above)
        self.duplicates = 0  # events brought twice (a hand-over's overlap), dropped
        self._across: set[int] = set()  # CPUs whose next event follows a hand-over

    def boundary(self) -> None:
        """What follows comes from another socket: the next gap on each CPU is ours."""
        self._across = set(self.last)

    def take(self, ev: ProcEvent) -> bool:
        """True when `ev` is new (use it), False for a duplicate (drop it)."""
        if ev.seq < 0 or ev.what == NONE:
            return True  # not numbered (a subscription's answer, a test's event)
        cpu = ev.cpu
        last = self.last.get(cpu)
        if last is not None:
            ahead = (ev.seq - last) & MASK
            if ahead == 0 or ahead >= HALF:
                self.duplicates += 1
                return False
            if ahead > 1:
                if cpu in self._across:
                    self.lost += ahead - 1
                else:
                    self.kernel_gaps += ahead - 1
        if self._across:
            self._across.discard(cpu)
        self.last[cpu] = ev.seq
        return True
