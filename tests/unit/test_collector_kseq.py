"""The kernel's per-CPU sequence numbers: a duplicate is dropped, a skipped number is a
counted loss once it stayed missing over two settles (it may come late: the reader reads
two sockets), each CPU on its own, modulo 2**32."""

from __future__ import annotations

import json
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from daemoneye.services.collector import kseq
from daemoneye.services.collector.kseq import SETTLE_S, WINDOW, SeqCheck
from daemoneye.services.collector.netlink import EXEC, FORK, ProcEvent


def ev(cpu: int, seq: int, what: int = EXEC) -> ProcEvent:
    return ProcEvent(what, 0, 1, 1, cpu=cpu, seq=seq)


def settled(check: SeqCheck) -> int:
    """Two settles, SETTLE_S apart: a gap open through both is a loss."""
    t = 1000.0
    return check.settle(t) + check.settle(t + SETTLE_S)


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
    assert check.lost == 0  # not yet: they may come late
    assert settled(check) == 3
    assert check.lost == 3 and check.last_loss == (0, 25, 28)


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
    assert settled(check) == 1 and check.lost == 1
    assert not check.take(ev(0, 2**32 - 1))  # behind: a duplicate, not 4 billion lost


def test_unnumbered_events_pass() -> None:
    check = SeqCheck()
    assert check.take(ProcEvent(EXEC, 0, 1, 1))  # seq -1: built by hand (tests)
    assert check.take(ev(0xFFFFFFFF, 0, what=0))  # an old kernel's subscription answer
    assert check.take(ev(0xFFFFFFFF, 0, what=0))
    assert check.last == {} and check.duplicates == 0


def test_numbers_written_down_are_continued_only_this_boot_and_recently(tmp_path) -> None:
    path = tmp_path / kseq.POSITIONS_FILE
    kseq.save(path, {"last": {0: 41, 3: 7}, "gaps": {3: [5]}})
    assert kseq.load(path, 60) == {"last": {0: 41, 3: 7}, "gaps": {3: [5]}}
    assert kseq.load(path, -1) == {}  # older than allowed: a collector that was off
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "boot_id": "another-boot"}))
    assert kseq.load(path, 60) == {}  # the counters start again at each boot
    path.write_text("{torn")
    assert kseq.load(path, 60) == {}
    assert kseq.load(tmp_path / "absent", 60) == {}


def test_their_age_is_the_boot_clock_s_not_a_stepped_wall_clock_s(tmp_path) -> None:
    path = tmp_path / kseq.POSITIONS_FILE
    kseq.save(path, {"last": {0: 41}, "gaps": {}})
    data = json.loads(path.read_text())
    # the wall clock stepped back an hour since the save (NTP correcting a fast clock)
    path.write_text(json.dumps({**data, "time": data["time"] + 3600}))
    assert kseq.load(path, 60) == {"last": {0: 41}, "gaps": {}}
    # a file from before the boot clock was noted is judged by the wall clock
    del data["since_boot"]
    path.write_text(json.dumps({**data, "time": data["time"] - 3600}))
    assert kseq.load(path, 60) == {}
    path.write_text(json.dumps(data))
    assert kseq.load(path, 60) == {"last": {0: 41}, "gaps": {}}


def test_a_main_continuing_counts_what_came_between() -> None:
    check = SeqCheck()
    check.restore({"last": {0: 41}, "gaps": {0: [39]}})  # where the previous main stopped
    assert not check.take(ev(0, 40))  # given again: a duplicate
    assert check.take(ev(0, 39))  # a fork the previous main was still waiting for
    assert check.take(ev(0, 45))  # 42-44 went with a reader's spool
    assert settled(check) == 3 and check.lost == 3


def test_a_loss_counted_before_a_restart_is_not_counted_again(tmp_path) -> None:
    """The numbers are written down as they were when the last frame acked was taken:
    the next main is given every later frame again. What the first main counted lost
    meanwhile (a gap open then, numbers skipped by a later frame) goes with them."""
    old = SeqCheck()
    for seq in (10, 11, 12, 13, 14, 17):  # 15 and 16 skipped: open at the ack's mark
        old.take(ev(0, seq))
    noted = old.state()
    again = [ev(0, 15, FORK), ev(0, 20), ev(0, 21)]  # after the mark: 18 and 19 skipped
    assert all(old.take(e) for e in again)
    assert settled(old) == 3 and old.lost == 3  # 16, 18, 19
    path = tmp_path / kseq.POSITIONS_FILE
    kseq.save(path, {**noted, "counted": old.counted_since(noted)})
    new = SeqCheck()
    new.restore(kseq.load(path, 60))
    assert all(new.take(e) for e in again)  # given again: taken (15 still a gap then)
    assert settled(new) == 0 and new.lost == 0
    assert new.take(ev(0, 16)) and new.late == 1  # counted lost, came after all: taken
    assert not new.take(ev(0, 17)) and new.duplicates == 1
    # numbers lost before the mark, below its last and not open then: not written down
    assert old.counted_since({"last": {0: 30}, "gaps": {}}) == {}


def test_a_file_of_the_single_socket_reader_is_continued(tmp_path) -> None:
    path = tmp_path / kseq.POSITIONS_FILE
    path.write_text(json.dumps({"boot_id": kseq._boot_id(), "time": time.time(), "last": {"0": 5}}))
    assert kseq.load(path, 60) == {"last": {0: 5}, "gaps": {}}


def test_a_late_number_is_taken_and_a_second_copy_dropped() -> None:
    check = SeqCheck()
    assert check.take(ev(0, 10, FORK)) and check.take(ev(0, 12))  # 11: a fork, late
    assert check.take(ev(0, 11, FORK))
    assert not check.take(ev(0, 11, FORK))
    assert settled(check) == 0 and (check.lost, check.duplicates) == (0, 1)


def test_a_number_below_a_cpus_first_comes_late_once() -> None:
    check = SeqCheck()
    assert check.take(ev(1, 12))  # the first seen on CPU 1; 11 was held by the reader
    assert check.take(ev(1, 11, FORK))
    assert not check.take(ev(1, 11, FORK))
    settled(check)
    assert not check.take(ev(1, 10))  # two settles on: from before we listened, or a copy


def test_a_gap_counted_lost_that_comes_after_all_is_taken() -> None:
    check = SeqCheck()
    check.take(ev(0, 1))
    check.take(ev(0, 3))
    assert settled(check) == 1
    assert check.take(ev(0, 2)) and check.late == 1
    assert not check.take(ev(0, 2))


def test_a_jump_beyond_the_window_is_counted_at_once() -> None:
    check = SeqCheck()
    check.take(ev(0, 0))
    check.take(ev(0, WINDOW + 101))  # 1 .. WINDOW+100 skipped: 100 beyond the window
    assert check.lost == 100 and len(check.gaps[0]) == WINDOW
    assert settled(check) == WINDOW


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=300),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**31),
    st.data(),
)
def test_reordered_within_a_frame_nothing_lost_or_doubled(cpus, start, seed, data) -> None:
    """Events of 4 CPUs, each CPU numbered from `start` on (wrapping), delivered with
    some moved later by a few places (the reader's second socket), some delivered twice
    (a hand-over's overlap): every number is taken once, none counted lost."""
    numbers: dict[int, int] = {}
    events = []
    for cpu in cpus:
        seq = (start + numbers.get(cpu, 0)) & kseq.MASK
        numbers[cpu] = numbers.get(cpu, 0) + 1
        events.append(ev(cpu, seq, FORK if seq % 3 else EXEC))
    rnd = random.Random(seed)
    order = sorted(range(len(events)), key=lambda i: i + rnd.choice((0, 0, 0, 5, 20)))
    # the first of each CPU comes first: numbers below it are only late for two settles
    delivered = [events[i] for i in order]
    copies = data.draw(st.lists(st.integers(0, len(events) - 1), max_size=10))
    delivered += [events[i] for i in copies]
    check = SeqCheck()
    taken = [(e.cpu, e.seq) for e in delivered if check.take(e)]
    assert sorted(taken) == sorted((e.cpu, e.seq) for e in events)
    assert settled(check) == 0 and check.lost == 0
    assert check.duplicates == len(copies)
