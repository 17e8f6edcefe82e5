"""Trending and spike maths: z-scores, the EWMA baseline, cool-down and alert ids, without Redis."""

from __future__ import annotations

import math

import pytest

from streams.spikes import (
    Rule,
    alert_id,
    baseline_share,
    binomial_z,
    cooled_down,
    poisson_z,
    sentiment_spike,
    volume_spike,
)
from streams.trending import Baseline, ewma, trending, velocity_score

RULE = Rule(
    min_volume=30, min_baseline_volume=50, min_share_delta=0.15, min_volume_ratio=2.0, z=3.0
)  # lenient on purpose


def test_ewma_follows_the_history_with_the_latest_windows_weighing_most() -> None:
    assert ewma([], 0.3) == Baseline(0.0, 0.0)
    assert ewma([10, 10, 10], 0.3) == Baseline(10.0, 0.0)  # a steady term has no variance
    rising = ewma([0, 0, 0, 100], 0.5)
    assert rising.mean == pytest.approx(50.0) and rising.variance > 0
    assert ewma([100, 0, 0, 0], 0.5).mean == pytest.approx(12.5)  # old spikes fade


def test_velocity_is_measured_against_the_terms_own_baseline() -> None:
    always_popular = velocity_score(1100, ewma([1000] * 12, 0.3))  # big, but normal for it
    emerging = velocity_score(60, ewma([2, 3, 1, 2, 2, 3, 2, 1, 2, 2, 3, 2], 0.3))
    assert emerging > 10 > always_popular > 0
    assert velocity_score(3, ewma([0] * 12, 0.3)) == pytest.approx(3 / math.sqrt(1))  # 0 -> 3 is no 10-sigma


def test_trending_ranks_by_velocity_not_by_count_and_drops_thin_terms() -> None:
    counts = {"always": 1100, "emerging": 60, "thin": 4, "falling": 10}
    history = {"always": [1000] * 12, "emerging": [2] * 12, "thin": [0] * 12, "falling": [200] * 12}
    best = trending(counts, history, alpha=0.3, min_count=5, min_score=2.0, k=10)
    assert [s.term for s in best] == ["emerging", "always"]
    assert best[0].baseline == pytest.approx(2.0) and best[0].count == 60
    assert trending(counts, history, alpha=0.3, min_count=5, min_score=2.0, k=1)[0].term == "emerging"


def test_binomial_and_poisson_z_scores() -> None:
    assert binomial_z(50, 100, 0.2) == pytest.approx((0.5 - 0.2) / math.sqrt(0.2 * 0.8 / 100))
    assert binomial_z(0, 0, 0.2) == 0.0
    assert binomial_z(5, 10, 0.0) == pytest.approx((0.5 - 0.01) / math.sqrt(0.01 * 0.99 / 10))  # floor
    assert poisson_z(40, 10.0) == pytest.approx(30 / math.sqrt(10))
    assert poisson_z(5, 0.0) == pytest.approx(4.0)  # a rate below 1 counts as 1


def test_a_negative_spike_needs_volume_effect_and_significance() -> None:
    spike = sentiment_spike("negative", 45, 60, 0.2, RULE)
    assert spike is not None and spike.kind == "negative_sentiment" and spike.metric == "negative_share"
    assert (spike.observed, spike.baseline, spike.effect) == (0.75, 0.2, 0.55)
    assert sentiment_spike("negative", 20, 25, 0.2, RULE) is None  # 80 % negative, but only 25 posts
    assert sentiment_spike("negative", 200, 1000, 0.1, RULE) is None  # significant, effect 0.1 < 0.15
    assert sentiment_spike("negative", 9, 30, 0.1, RULE) is not None  # 0.3 vs 0.1 on 30 posts: z 3.65
    assert sentiment_spike("negative", 9, 30, 0.1, Rule(30, 50, 0.15, 2.0, 4.0)) is None  # less sensitive


def test_a_praise_wave_is_a_positive_spike_and_a_flat_stream_raises_nothing() -> None:
    praise = sentiment_spike("positive", 70, 80, 0.35, RULE)
    assert praise is not None and praise.kind == "positive_sentiment"
    assert sentiment_spike("negative", 4, 80, 0.2, RULE) is None
    assert sentiment_spike("negative", 16, 80, 0.2, RULE) is None and volume_spike(80, 75.0, RULE) is None


def test_a_volume_burst_is_measured_against_the_baseline_rate() -> None:
    burst = volume_spike(120, 20.0, RULE)
    assert burst is not None and burst.kind == "volume" and burst.effect == 6.0
    assert volume_spike(35, 20.0, RULE) is None  # 1.75x: below the ratio
    assert volume_spike(29, 1.0, RULE) is None  # below the minimum volume


def test_a_thin_baseline_borrows_the_share_of_all_posts() -> None:
    assert baseline_share(30, 100, fallback=0.25, min_volume=50) == 0.3
    assert baseline_share(3, 10, fallback=0.25, min_volume=50) == 0.25


def test_cool_down_is_in_event_time_from_the_last_alerts_window_end() -> None:
    assert cooled_down(None, 1_000, 1800)
    assert not cooled_down(1_000, 1_010, 1800)  # the same spike ten seconds later
    assert cooled_down(1_000, 2_800, 1800)


def test_alert_ids_are_the_same_for_the_same_spike_and_window() -> None:
    a = alert_id("negative_sentiment", "brand", "Acme", 1_764_579_900, 300)
    assert a == "negative_sentiment:brand:Acme:2025-12-01T09:05:00Z:300"
    assert a == alert_id("negative_sentiment", "brand", "Acme", 1_764_579_900, 300)
    assert a != alert_id("positive_sentiment", "brand", "Acme", 1_764_579_900, 300)
    assert a != alert_id("negative_sentiment", "brand", "Acme", 1_764_579_910, 300)
