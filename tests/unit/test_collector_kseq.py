"""The kernel's per-CPU sequence numbers: a duplicate is dropped, a skipped number is a
counted loss, each CPU on its own, modulo 2**32."""

from __future__ import annotations

import json

from daemoneye.services.collector import kseq
from daemoneye.services.collector.kseq import SeqCheck
from daemoneye.services.collector.netlink import EXEC, ProcEvent


def ev(cpu: int, seq: int, what: int = EXEC) -> ProcEvent:
    return ProcEvent(what, 0, 1, 1, cpu=cpu, seq=seq)


def test_in_order_on_each_cpu_is_new() -> None:
    check = SeqCheck()
    assert all(check.take(ev(cpu, seq)) for seq in range(5) for cpu in (0, 1))
    assert (check.lost, check.duplicates) == (0, 0)


def test_a_hand_over_overlap_is_dropped_and_a_hole_counted() -> None:
    check = SeqCheck()
    old = [ev(0, s) for s in range(10, 20)]  # the old reader's stream, to its end
    new = [ev(0, s) for s in range(15, 25)]  # the new one started before the old stopped
    taken = [e.seq for e in old + new if check.take(e)]
    assert taken == list(range(10, 25)) and check.duplicates == 5 and check.lost == 0
    assert check.take(ev(0, 28))  # 25, 26, 27 never came
    assert check.lost == 3 and check.last_loss == (0, 24, 28)


def test_cpus_are_numbered_apart() -> None:
    check = SeqCheck()
    check.take(ev(0, 100))
    check.take(ev(1, 7))
    assert check.take(ev(1, 8)) and check.take(ev(0, 101))
    assert check.lost == 0


def test_the_counter_wraps_at_32_bits() -> None:
    check = SeqCheck()
    check.take(ev(0, 2**32 - 2))
    assert check.take(ev(0, 2**32 - 1))
    assert check.take(ev(0, 0)) and check.take(ev(0, 2))  # 1 is lost across the wrap
    assert check.lost == 1
    assert not check.take(ev(0, 2**32 - 1))  # behind: a duplicate, not 4 billion lost


def test_unnumbered_events_pass() -> None:
    check = SeqCheck()
    assert check.take(ProcEvent(EXEC, 0, 1, 1))  # seq -1: built by hand (tests)
    assert check.take(ev(0xFFFFFFFF, 0, what=0))  # an old kernel's subscription answer
    assert check.take(ev(0xFFFFFFFF, 0, what=0))
    assert check.last == {} and check.duplicates == 0


def test_numbers_written_down_are_continued_only_this_boot_and_recently(tmp_path) -> None:
    path = tmp_path / kseq.POSITIONS_FILE
    kseq.save(path, {0: 41, 3: 7})
    assert kseq.load(path, 60) == {0: 41, 3: 7}
    assert kseq.load(path, -1) == {}  # older than allowed: a collector that was off
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "boot_id": "another-boot"}))
    assert kseq.load(path, 60) == {}  # the counters start again at each boot
    path.write_text("{torn")
    assert kseq.load(path, 60) == {}
    assert kseq.load(tmp_path / "absent", 60) == {}


def test_a_main_continuing_counts_what_came_between() -> None:
    check = SeqCheck()
    check.last = {0: 41}  # where the previous main stopped
    assert not check.take(ev(0, 40))  # given again: a duplicate
    assert check.take(ev(0, 45))  # 42-44 went with a reader's spool
    assert check.lost == 3
