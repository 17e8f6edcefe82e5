"""The worker's flow decisions as plain values: pausing, what a revocation drops, commit errors."""

from __future__ import annotations

from confluent_kafka import KafkaError

from workers.inference.flow import CommitOutcome, PauseGate, commit_outcome, drop_partitions


def test_a_momentary_full_queue_does_not_pause_but_a_lasting_one_does_once() -> None:
    gate = PauseGate(pause_after_s=0.05)
    assert not gate.full(since=10.0, now=10.02)  # prefetch covers a short stall: no fetch round trip
    assert gate.full(since=10.0, now=10.05)
    assert not gate.full(since=10.0, now=10.2)  # already paused: pause once, not per check
    assert gate.room() and not gate.paused  # room: resume what was paused
    assert not gate.room()  # nothing paused: nothing to resume


def test_revocation_drops_only_the_gone_partitions_records_and_counts_them() -> None:
    items = [("raw", 0, "a"), ("raw", 1, "b"), ("raw", 0, "c"), ("raw", 2, "d")]
    kept, dropped = drop_partitions(items, {("raw", 0)}, lambda i: (i[0], i[1]))
    assert kept == [("raw", 1, "b"), ("raw", 2, "d")] and dropped == 2  # order kept
    assert drop_partitions(items, set(), lambda i: (i[0], i[1])) == (items, 0)


def test_a_commit_with_nothing_stored_is_not_an_error_and_a_fatal_one_ends_the_worker() -> None:
    no_offset = KafkaError._NO_OFFSET
    assert commit_outcome(no_offset, fatal=False, no_offset_code=no_offset) is CommitOutcome.NOTHING_STORED
    # e.g. a coordinator moving: the stored offsets stay stored and the next commit sends them
    assert commit_outcome(KafkaError.REBALANCE_IN_PROGRESS, False, no_offset) is CommitOutcome.RETRY
    assert commit_outcome(KafkaError._FENCED, fatal=True, no_offset_code=no_offset) is CommitOutcome.FATAL


def test_a_worker_that_owns_nothing_says_why_after_30_s_and_then_every_150_s() -> None:
    from workers.inference.flow import unassigned_hint_due

    assert not unassigned_hint_due(None, 1_000.0, None)  # owns partitions
    assert not unassigned_hint_due(0.0, 29.9, None)
    assert unassigned_hint_due(0.0, 30.0, None)
    assert not unassigned_hint_due(0.0, 100.0, 30.0)
    assert unassigned_hint_due(0.0, 180.0, 30.0)
