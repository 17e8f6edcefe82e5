"""Dedup by post id within a bounded window: the last ``capacity`` distinct ids, O(capacity) memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class RecentIds:
    """Remembers the most recent ``capacity`` distinct ids; older ones are forgotten in arrival order.

    A set for membership plus a deque for age: both O(1), unlike popping the first key of a dict,
    which degrades to O(n) while the dict is full of deleted slots.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("dedup capacity must be at least 1")
        self.capacity = capacity
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def add(self, key: str) -> bool:
        """Record ``key``; False when it is already in the window (a duplicate)."""
        seen = self._seen
        if key in seen:
            return False
        seen.add(key)
        order = self._order
        order.append(key)
        if len(order) > self.capacity:
            seen.discard(order.popleft())
        return True

    def discard(self, key: str) -> None:
        """Forget ``key`` (its publication failed, so a retry must not count as a duplicate)."""
        self._seen.discard(key)  # its slot in the age queue stays until it falls out: bounded anyway

    def update(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)
