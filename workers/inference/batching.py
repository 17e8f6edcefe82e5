"""Batching maths of the inference stage: length-sorted micro-batches and the offset ledger.

Pure values only; the worker loop (``worker.py``) does the I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


def micro_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices grouped into runs of at most ``size`` of similar length (shortest first).

    Padding costs more than batching gains: a 400-token post in a batch of 10-token posts makes the
    model do 40x the work, so texts are sorted by length before they are cut into micro-batches.
    The sort is stable, so equal lengths keep their arrival order.
    """
    if size < 1:
        raise ValueError("micro-batch size must be at least 1")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + size] for i in range(0, len(order), size)]


@dataclass
class _Partition:
    # Offsets in consumption order, each with its done flag; the head is the oldest not yet done.
    queue: deque[list[int]] = field(default_factory=deque)
    index: dict[int, list[int]] = field(default_factory=dict)
    next_to_store: int | None = None  # offset to store (last contiguous done + 1), not yet stored
    stored: int | None = None


class OffsetLedger:
    """Which consumed offsets are finished, and so which offset may be stored per partition.

    A record is ``track``-ed when it is consumed and ``done`` when its output (enriched record or
    dead letter) is delivered. The storable offset of a partition is one past the longest prefix of
    consumed records that are all done: a record delivered early never lets the offset jump over an
    older one still in flight, so a crash replays, and never skips, what was not produced.
    """

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}

    def track(self, tp: TopicPartition, offset: int) -> None:
        part = self._parts.setdefault(tp, _Partition())
        if offset in part.index:
            return  # the same record consumed again (a seek): it is already accounted for
        if part.queue and offset < part.queue[-1][0]:
            raise ValueError(f"offset {offset} of {tp} consumed after {part.queue[-1][0]}")
        entry = [offset, 0]
        part.queue.append(entry)
        part.index[offset] = entry

    def done(self, tp: TopicPartition, offset: int) -> bool:
        """Mark a record finished; False when its partition was forgotten meanwhile (revoked)."""
        part = self._parts.get(tp)
        entry = part.index.get(offset) if part else None
        if part is None or entry is None:
            return False
        entry[1] = 1
        while part.queue and part.queue[0][1]:
            finished = part.queue.popleft()
            del part.index[finished[0]]
            part.next_to_store = finished[0] + 1
        return True

    def storable(self) -> dict[TopicPartition, int]:
        """Offsets that advanced since the last call, to pass to ``store_offsets``; marks them stored."""
        out: dict[TopicPartition, int] = {}
        for tp, part in self._parts.items():
            if part.next_to_store is not None and part.next_to_store != part.stored:
                out[tp] = part.stored = part.next_to_store
        return out

    def in_flight(self, tps: Iterable[TopicPartition] | None = None) -> int:
        """Records consumed but not yet done (in ``tps``, or everywhere)."""
        keys = self._parts.keys() if tps is None else [tp for tp in tps if tp in self._parts]
        return sum(len(self._parts[tp].index) for tp in keys)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop partitions this worker no longer owns; late deliveries for them are ignored."""
        for tp in tps:
            self._parts.pop(tp, None)

    def partitions(self) -> list[TopicPartition]:
        return list(self._parts)
