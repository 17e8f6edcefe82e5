"""The dedup window: duplicates inside it are caught, memory stays bounded, the oldest id goes first."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.ingest.dedup import RecentIds


def test_duplicates_inside_the_window_are_reported() -> None:
    recent = RecentIds(3)
    assert [recent.add(k) for k in ["a", "b", "a", "c", "b"]] == [True, True, False, True, False]


def test_memory_is_bounded_and_the_oldest_id_is_forgotten_first() -> None:
    recent = RecentIds(1000)
    for i in range(10_000):
        recent.add(str(i))
    assert len(recent) == 1000
    assert "8999" not in recent and "9000" in recent
    assert recent.add("8999") is True  # forgotten, so it counts as new
    assert recent.add("9999") is False


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RecentIds(0)


class _Reference:
    """The plain model of the window: a set and a queue of ids in arrival order, one id at a time."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.seen, self.order = capacity, set[str](), deque[str]()

    def add(self, key: str) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        self.order.append(key)
        if len(self.order) > self.capacity:
            self.seen.discard(self.order.popleft())
        return True


_keys = st.text(alphabet="abcdefg", min_size=1, max_size=2)
_ALL_KEYS = [a + b for a in "abcdefg" for b in ["", *"abcdefg"]]
_steps = st.lists(
    st.tuples(st.sampled_from(["add", "batch", "discard"]), st.lists(_keys, max_size=12)), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=12), steps=_steps)
def test_batches_dedup_exactly_like_one_id_at_a_time(
    capacity: int, steps: list[tuple[str, list[str]]]
) -> None:
    recent, reference = RecentIds(capacity), _Reference(capacity)
    for op, keys in steps:
        if op == "add":
            assert [recent.add(k) for k in keys] == [reference.add(k) for k in keys]
        elif op == "batch":
            expected = [i for i, k in enumerate(keys) if not reference.add(k)]
            assert recent.add_batch(keys) == expected
        else:
            for k in keys:
                recent.discard(k)
                reference.seen.discard(k)
        assert {k for k in _ALL_KEYS if k in recent} == reference.seen
        assert len(recent) == len(reference.seen) <= capacity


def test_a_batch_larger_than_the_window_keeps_only_its_newest_ids() -> None:
    recent = RecentIds(3)
    assert recent.add_batch(["a", "b", "c", "d", "e"]) == []
    assert len(recent) == 3 and "b" not in recent and "c" in recent
    assert recent.add_batch(["e", "f", "a"]) == [0]
