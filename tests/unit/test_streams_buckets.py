"""Bucket and window maths of the trend store, and the watermark: plain values, no Redis."""

from __future__ import annotations

import pytest

from streams.buckets import (
    bucket_start,
    parse_window,
    previous_windows,
    resolution_for,
    step_ends,
    window_ending,
)
from streams.watermark import PartitionClock, advance, is_late, partition_watermark, watermark


def test_windows_read_from_the_finest_buckets_that_keep_a_read_small() -> None:
    assert [resolution_for(parse_window(w)) for w in ("1m", "5m", "15m", "1h", "24h", "7d")] == [
        10, 10, 10, 60, 3600, 3600,
    ]  # fmt: skip
    for w in ("1m", "5m", "15m", "1h", "24h", "7d"):
        size = parse_window(w)
        assert size // resolution_for(size) <= 170, w  # a read touches a bounded number of buckets
    with pytest.raises(ValueError, match="whole number"):
        resolution_for(45)  # not a run of whole 10 s buckets


def test_window_names_and_plain_seconds_parse_and_nonsense_is_refused() -> None:
    assert (parse_window("5m"), parse_window("90s"), parse_window("120"), parse_window("2h")) == (
        300, 90, 120, 7200,
    )  # fmt: skip
    for bad in ("", "0", "-5m", "soon"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_a_window_is_the_run_of_whole_buckets_before_its_end() -> None:
    assert bucket_start(1_700_000_012_345, 10) == 1_700_000_010
    assert bucket_start(1_700_000_012_345, 60) == 1_699_999_980
    w = window_ending(1_700_000_125, 60)  # rounded down to a bucket edge
    assert (w.start, w.end, w.res) == (1_700_000_060, 1_700_000_120, 10)
    assert w.buckets() == list(range(1_700_000_060, 1_700_000_120, 10))
    assert [p.end for p in previous_windows(w, 3)] == [1_700_000_060, 1_700_000_000, 1_699_999_940]


def test_detector_steps_are_the_grid_points_after_the_last_one_up_to_now() -> None:
    assert step_ends(100, 135, 10) == [110, 120, 130]
    assert step_ends(130, 135, 10) == []
    assert step_ends(129, 130, 10) == [130]


def test_lateness_is_judged_against_the_partitions_latest_event_before_the_record() -> None:
    assert not is_late(1_000, None, 30_000)  # first record of a partition
    assert not is_late(70_000, 100_000, 30_000)  # 30 s behind: still allowed
    assert is_late(69_999, 100_000, 30_000)
    clock = advance(None, 100_000, wall_ms=5)
    assert advance(clock, 90_000, wall_ms=9) == clock  # an older record does not move the clock back
    assert advance(clock, 110_000, wall_ms=9) == PartitionClock(110_000, 9)


def test_the_watermark_is_the_slowest_partition_and_an_idle_one_advances_on_the_wall_clock() -> None:
    busy = PartitionClock(max_event_ms=1_000_000, seen_wall_ms=500_000)
    slow = PartitionClock(max_event_ms=900_000, seen_wall_ms=500_000)
    assert (
        watermark({"a": busy, "b": slow}, now_wall_ms=505_000, lateness_ms=30_000, idle_after_ms=10_000)
        == 870_000
    )
    # 20 s later nothing arrived anywhere: both clocks run on with the wall clock
    assert (
        watermark({"a": busy, "b": slow}, now_wall_ms=525_000, lateness_ms=30_000, idle_after_ms=10_000)
        == 895_000
    )
    assert partition_watermark(busy, 509_999, 30_000, 10_000) == 970_000  # not idle yet
    assert watermark({}, 0, 30_000, 10_000) is None
