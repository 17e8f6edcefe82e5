"""Replay pacing maths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workers.ingest.pacing import RatePacer, SpeedPacer

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def test_rate_pacer_spaces_posts_evenly() -> None:
    pacer = RatePacer(rate=10)
    assert [round(pacer.delay(0.0, T0), 3) for _ in range(3)] == [0.0, 0.1, 0.2]
    assert pacer.delay(1.0, T0) == 0.0  # behind schedule: no wait


def test_speed_pacer_replays_event_time_faster() -> None:
    pacer = SpeedPacer(speed=60)
    assert pacer.delay(0.0, T0) == 0.0
    assert pacer.delay(0.0, T0 + timedelta(minutes=1)) == 1.0
    assert pacer.delay(0.5, T0 + timedelta(minutes=2)) == 1.5
    assert pacer.delay(5.0, T0 - timedelta(minutes=1)) == 0.0  # out of order: at once
