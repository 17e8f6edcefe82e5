"""The dedup window: duplicates inside it are caught, memory stays bounded, the oldest id goes first."""

from __future__ import annotations

import pytest

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
