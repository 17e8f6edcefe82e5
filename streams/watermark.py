"""Watermarks and lateness, per input partition and across them. Pure values.

Per partition, a record is *late* when its event time is more than the allowed lateness behind the
latest event time seen on that partition before it. The decision depends only on the partition's
records in offset order, never on the wall clock, so a replay after a crash decides exactly as the
first run did (the latest event time is stored in Redis with the applied offset).

Across partitions, the watermark that says which windows are final is the minimum of the partitions'
watermarks (latest event time minus lateness). A partition that has been idle for ``idle_after_s``
stops holding it back: its event clock is extrapolated on the wall clock (its latest event time plus
the wall time since it last advanced), so windows close and final snapshots are emitted without new
traffic. That extrapolation changes only *when* a window is called final, never a count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionClock:
    """What is known of one input partition's event time."""

    max_event_ms: int  # latest event time seen (epoch ms)
    seen_wall_ms: int  # wall clock when it last advanced (epoch ms)


def is_late(event_ms: int, max_event_ms: int | None, lateness_ms: int) -> bool:
    """Whether a record is later than allowed, given the partition's latest event time before it."""
    return max_event_ms is not None and event_ms < max_event_ms - lateness_ms


def advance(clock: PartitionClock | None, event_ms: int, wall_ms: int) -> PartitionClock:
    """The partition's clock after a record at ``event_ms`` (not late) was applied at ``wall_ms``."""
    if clock is None or event_ms > clock.max_event_ms:
        return PartitionClock(event_ms, wall_ms)
    return clock


def partition_watermark(clock: PartitionClock, now_wall_ms: int, lateness_ms: int, idle_after_ms: int) -> int:
    """Event time (ms) up to which this partition's windows are complete."""
    idle_for = now_wall_ms - clock.seen_wall_ms
    extrapolated = clock.max_event_ms + max(0, idle_for) if idle_for >= idle_after_ms else clock.max_event_ms
    return extrapolated - lateness_ms


def watermark(
    clocks: Mapping[str, PartitionClock] | Iterable[PartitionClock],
    now_wall_ms: int,
    lateness_ms: int,
    idle_after_ms: int,
) -> int | None:
    """The watermark across partitions (epoch ms), or None before any record was seen."""
    values = clocks.values() if isinstance(clocks, Mapping) else clocks
    marks = [partition_watermark(c, now_wall_ms, lateness_ms, idle_after_ms) for c in values]
    return min(marks) if marks else None
