"""Dedup by post id within a bounded window: the last ``capacity`` distinct ids, O(capacity) memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from itertools import islice

_CHUNK = 4096  # ids per age chunk filled by single adds (a batch is one chunk of its own)


class RecentIds:
    """Remembers the most recent ``capacity`` distinct ids; older ones are forgotten in arrival order.

    A set for membership plus the ids in arrival order, kept as a queue of chunks (lists) so that a
    batch goes in, and the oldest ids go out, with a few C-level set and list operations instead of a
    Python step per id. Everything is O(1) per id, unlike popping the first key of a dict, which
    degrades to O(n) while the dict is full of deleted slots.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("dedup capacity must be at least 1")
        self.capacity = capacity
        self._seen: set[str] = set()
        self._chunks: deque[list[str]] = deque()
        self._head = 0  # ids of the oldest chunk already forgotten
        self._count = 0  # ids in the chunks after the head (a discarded id keeps its slot)
        self._forgotten = 0  # slots dropped so far
        self._stale_until = 0  # slots to drop before no discarded id holds a slot any more

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
        chunks = self._chunks
        if not chunks or len(chunks[-1]) >= _CHUNK:
            chunks.append([])
        chunks[-1].append(key)
        self._count += 1
        if self._count > self.capacity:
            self._forget(self._count - self.capacity)
        return True

    def add_batch(self, keys: Sequence[str]) -> list[int]:
        """``add`` each key in order; the indexes of the duplicates (in the window, or earlier in keys)."""
        seen = self._seen
        # Exact only while no discarded id holds a slot: adding the batch first and dropping the oldest
        # after could otherwise drop a discarded id that the batch brings back, which one at a time
        # would have survived.
        if self._forgotten >= self._stale_until and seen.isdisjoint(keys):
            before = len(seen)
            seen.update(keys)
            if len(seen) - before == len(keys):  # no repeats inside the batch either: the usual case
                self._chunks.append(list(keys))
                self._count += len(keys)
                if self._count > self.capacity:
                    self._forget(self._count - self.capacity)
                return []
            seen.difference_update(keys)  # none of them was there before: undo, take the careful way
        add = self.add
        return [index for index, key in enumerate(keys) if not add(key)]

    def _forget(self, n: int) -> None:
        """Drop the ``n`` oldest ids."""
        chunks, seen = self._chunks, self._seen
        self._count -= n
        self._forgotten += n
        while n:
            oldest = chunks[0]
            left = len(oldest) - self._head
            if left <= n:
                seen.difference_update(islice(oldest, self._head, None))
                chunks.popleft()
                self._head = 0
                n -= left
            else:
                seen.difference_update(islice(oldest, self._head, self._head + n))
                self._head += n
                n = 0

    def discard(self, key: str) -> None:
        """Forget ``key`` (its publication failed, so a retry must not count as a duplicate)."""
        if key in self._seen:
            self._seen.discard(key)  # its slot in the age queue stays until it falls out: bounded anyway
            self._stale_until = self._forgotten + self._count

    def update(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)
