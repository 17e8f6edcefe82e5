"""Flow decisions of the inference worker, as plain values: when to pause, what a revocation drops,
what a commit error means. The worker (``worker.py``) makes the client calls these decide.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from workers.inference.batching import TopicPartition

T = TypeVar("T")


@dataclass
class PauseGate:
    """Whether the partitions should be paused while the tokeniser queue is full.

    A momentary full queue is served by librdkafka's bounded prefetch alone: pausing at once would
    make every resume pay a fetch round trip. Only a queue full for ``pause_after_s`` pauses (and the
    broker then stops serving fetches the worker cannot use); the first room resumes.
    """

    pause_after_s: float
    paused: bool = False

    def full(self, since: float, now: float) -> bool:
        """The queue has been full from ``since`` to ``now``: True exactly when to pause now."""
        if self.paused or now - since < self.pause_after_s:
            return False
        self.paused = True
        return True

    def room(self) -> bool:
        """The queue took the batch: True exactly when paused partitions should be resumed now."""
        was_paused, self.paused = self.paused, False
        return was_paused


def drop_partitions(
    items: Sequence[T], gone: Collection[TopicPartition], tp_of: Callable[[T], TopicPartition]
) -> tuple[list[T], int]:
    """The items that stay when ``gone`` partitions are revoked or lost, and how many were dropped.

    Dropped means not started, so never produced: the partitions' new owner consumes them again
    from the committed offset, which never passed them.
    """
    kept = [item for item in items if tp_of(item) not in gone]
    return kept, len(items) - len(kept)


class CommitOutcome(Enum):
    """What a failed commit means for the worker."""

    NOTHING_STORED = "nothing_stored"  # no offset stored since the last commit: not an error
    RETRY = "retry"  # the stored offsets stay stored; auto-commit or the next commit sends them
    FATAL = "fatal"  # the consumer cannot go on: the worker must end non-zero


def commit_outcome(code: int, fatal: bool, no_offset_code: int) -> CommitOutcome:
    """The meaning of a commit error by its librdkafka code (``no_offset_code``: ``_NO_OFFSET``)."""
    if fatal:
        return CommitOutcome.FATAL
    if code == no_offset_code:
        return CommitOutcome.NOTHING_STORED
    return CommitOutcome.RETRY


UNASSIGNED_HINT_S = 30.0  # how long a worker may own nothing before it says why that may be


def unassigned_hint_due(since: float | None, now: float, last_hint: float | None) -> bool:
    """Whether to log why this worker owns no partitions: ``since`` is when it last owned none (None: it
    owns some), first after ``UNASSIGNED_HINT_S`` and then every five times that."""
    if since is None or now - since < UNASSIGNED_HINT_S:
        return False
    return last_hint is None or now - last_hint >= 5 * UNASSIGNED_HINT_S
