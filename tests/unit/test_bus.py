"""Topics, streams and sequence checking (no sockets)."""

from __future__ import annotations

from daemoneye.bus import Gap, SequenceTracker, Topics, covers, stream_of


def test_stream_is_the_first_two_labels() -> None:
    assert stream_of("events.process.start") == "events.process"
    assert stream_of(Topics.heartbeat("broker@h")) == "control.health"
    assert stream_of("alerts.high") == "alerts.high"
    assert stream_of("ledger") == "ledger"


def test_prefixes_cover_a_stream_only_when_they_deliver_all_of_it() -> None:
    assert covers(["events.process."], "events.process")
    assert covers([""], "alerts.high")
    assert covers(["alerts."], "alerts.high")
    assert not covers(["events.process.start"], "events.process")
    assert not covers(["alerts.high"], "alerts.low")


def test_in_order_messages_raise_no_gap() -> None:
    tracker = SequenceTracker(["events."])
    for seq in range(1, 101):
        assert tracker.check("events.process.start", "c1", "boot", seq)
    assert tracker.stats.gaps == 0 and tracker.stats.missing == 0


def test_a_gap_is_counted_and_reported() -> None:
    gaps: list[Gap] = []
    tracker = SequenceTracker(["events."], gaps.append)
    for seq in (1, 2, 3, 7, 8):
        tracker.check("events.process.stop", "c1", "boot", seq)
    assert gaps == [Gap("c1", "events.process", 4, 6)]
    assert (tracker.stats.gaps, tracker.stats.missing) == (1, 3)


def test_sources_and_streams_are_tracked_apart() -> None:
    tracker = SequenceTracker([""])
    tracker.check("events.process.start", "c1", "b", 1)
    tracker.check("events.process.start", "c2", "b", 1)
    tracker.check("alerts.high", "c1", "b", 1)
    tracker.check("events.process.stop", "c1", "b", 2)
    assert tracker.stats.gaps == 0


def test_duplicates_are_dropped() -> None:
    tracker = SequenceTracker(["events."])
    assert tracker.check("events.process.start", "c1", "b", 1)
    assert tracker.check("events.process.start", "c1", "b", 2)
    assert not tracker.check("events.process.start", "c1", "b", 2)
    assert tracker.stats.duplicates == 1


def test_a_restart_with_a_new_sequence_is_not_a_gap() -> None:
    tracker = SequenceTracker(["events."])
    for seq in range(1, 50):
        tracker.check("events.process.start", "c1", "boot-a", seq)
    assert tracker.check("events.process.start", "c1", "boot-b", 1)
    assert (tracker.stats.restarts, tracker.stats.gaps) == (1, 0)


def test_a_restart_that_continues_its_sequence_still_shows_gaps() -> None:
    gaps: list[Gap] = []
    tracker = SequenceTracker(["events."], gaps.append)
    for seq in range(1, 11):
        tracker.check("events.process.start", "c1", "boot-a", seq)
    tracker.check("events.process.start", "c1", "boot-b", 15)  # e.g. continued from a WAL
    assert gaps == [Gap("c1", "events.process", 11, 14)]
    assert tracker.stats.restarts == 0


def test_partially_subscribed_streams_are_not_gap_checked() -> None:
    tracker = SequenceTracker(["events.process.start"])
    tracker.check("events.process.start", "c1", "b", 1)
    tracker.check("events.process.start", "c1", "b", 5)  # 2-4 were stops: not ours to see
    assert tracker.stats.gaps == 0


def test_a_lost_tail_shows_as_a_gap_when_the_source_says_how_far_it_sent() -> None:
    gaps: list[Gap] = []
    tracker = SequenceTracker(["events."], gaps.append)
    for seq in (1, 2, 3):
        tracker.check("events.process.start", "c1", "boot", seq)
    tracker.check_tail("events.process", "c1", "boot", 3)  # all there
    assert gaps == []
    tracker.check_tail("events.process", "c1", "boot", 6)
    assert gaps == [Gap("c1", "events.process", 4, 6)]
    assert (tracker.stats.gaps, tracker.stats.missing, tracker.stats.tail_gaps) == (1, 3, 1)
    tracker.check_tail("events.process", "c1", "boot", 6)  # repaired: not twice
    assert tracker.check("events.process.stop", "c1", "boot", 7)  # and the next is in order
    assert len(gaps) == 1


def test_a_tail_is_checked_only_for_a_tracked_stream_of_the_same_boot() -> None:
    gaps: list[Gap] = []
    tracker = SequenceTracker(["events."], gaps.append)
    tracker.check("events.process.start", "c1", "boot", 5)
    tracker.check_tail("events.process", "c1", "old-boot", 9)  # another boot's numbering
    tracker.check_tail("events.process", "c2", "boot", 9)  # a source never heard from
    tracker.check_tail("alerts.high", "c1", "boot", 9)  # a stream not subscribed
    tracker.check_tail("invented.stream", "c1", "boot", 9)
    assert gaps == [] and tracker.stats.tail_gaps == 0
    assert tracker.last_seq("c2", "events.process") == 0  # nothing learnt from heartbeats
