"""Length-sorted micro-batches and the offset ledger that decides what may be committed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.inference.batching import OffsetLedger, micro_batches

pytestmark = pytest.mark.timeout(30)

TP = ("posts.raw", 0)


def test_micro_batches_are_length_sorted_and_bounded() -> None:
    lengths = [50, 3, 400, 7, 3, 90, 12]
    groups = micro_batches(lengths, 3)
    assert [len(g) for g in groups] == [3, 3, 1]
    assert [lengths[i] for g in groups for i in g] == sorted(lengths)
    assert groups[0] == [1, 4, 3]  # stable: equal lengths keep arrival order


@given(st.lists(st.integers(0, 500), max_size=100), st.integers(1, 40))
def test_micro_batches_cover_every_index_once(lengths: list[int], size: int) -> None:
    groups = micro_batches(lengths, size)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(1 <= len(g) <= size for g in groups)


def test_micro_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        micro_batches([1], 0)


def test_offset_advances_only_over_a_done_prefix() -> None:
    ledger = OffsetLedger()
    for offset in (10, 11, 12, 15):
        ledger.track(TP, offset)
    assert ledger.done(TP, 11)
    assert ledger.storable() == {}  # 10 is still in flight: storing 12 would skip it on a crash
    ledger.done(TP, 10)
    assert ledger.storable() == {TP: 12}
    assert ledger.storable() == {}  # reported once
    ledger.done(TP, 15)
    assert ledger.storable() == {}
    ledger.done(TP, 12)
    assert ledger.storable() == {TP: 16}  # gaps (compaction, markers) are jumped
    assert ledger.in_flight() == 0


def test_partitions_are_independent_and_forgotten_ones_ignore_late_deliveries() -> None:
    ledger = OffsetLedger()
    other = ("posts.raw", 1)
    ledger.track(TP, 0)
    ledger.track(other, 0)
    ledger.track(other, 1)
    assert ledger.in_flight([other]) == 2
    ledger.done(other, 0)
    ledger.forget([TP])
    assert not ledger.done(TP, 0)
    assert ledger.storable() == {other: 1}
    assert ledger.partitions() == [other]


def test_the_same_offset_tracked_twice_counts_once_and_going_backwards_is_a_bug() -> None:
    ledger = OffsetLedger()
    ledger.track(TP, 5)
    ledger.track(TP, 5)
    assert ledger.in_flight() == 1
    with pytest.raises(ValueError):
        ledger.track(TP, 4)


@given(st.integers(1, 60), st.randoms(use_true_random=False))
def test_any_delivery_order_never_stores_past_an_undelivered_offset(n: int, rnd: random.Random) -> None:
    ledger = OffsetLedger()
    for offset in range(n):
        ledger.track(TP, offset)
    delivered: set[int] = set()
    order = list(range(n))
    rnd.shuffle(order)
    stored = 0
    for offset in order:
        ledger.done(TP, offset)
        delivered.add(offset)
        stored = ledger.storable().get(TP, stored)
        assert set(range(stored)) <= delivered
    assert stored == n
