"""Spike detection on watched terms: sentiment shares and volume against their baselines. Pure.

- Sentiment (negative or positive): the share of that label in the window against the subject's
  share over the baseline period, as a binomial z-score ``(p - p0) / sqrt(p0 (1 - p0) / n)``. A
  subject with too little baseline volume borrows the share of all posts over the same period.
- Volume: mentions in the window against the baseline rate scaled to the window, as a Poisson
  z-score ``(c - lambda) / sqrt(lambda)``.

An alert needs a minimum volume, a minimum effect (share difference or volume ratio) and the z-score;
a cool-down keeps one spike from raising an alert at every step. Alert ids are deterministic: the
same kind, subject and window give the same id, so a replay publishes nothing new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

SHARE_FLOOR = 0.01  # a baseline share of exactly 0 or 1 would make any change infinitely significant


@dataclass(frozen=True)
class Rule:
    min_volume: int
    min_baseline_volume: int
    min_share_delta: float
    min_volume_ratio: float
    z: float


@dataclass(frozen=True)
class Finding:
    kind: str  # negative_sentiment | positive_sentiment | volume
    metric: str  # negative_share | positive_share | mentions
    observed: float
    baseline: float
    score: float
    effect: float


def binomial_z(successes: int, n: int, p0: float) -> float:
    """z-score of ``successes / n`` against a share ``p0`` (clipped away from 0 and 1)."""
    if n <= 0:
        return 0.0
    p0 = min(max(p0, SHARE_FLOOR), 1 - SHARE_FLOOR)
    return (successes / n - p0) / math.sqrt(p0 * (1 - p0) / n)


def poisson_z(count: int, expected: float) -> float:
    """z-score of ``count`` against a Poisson rate ``expected`` (at least 1, so a quiet subject is not
    infinitely surprising)."""
    rate = max(expected, 1.0)
    return (count - rate) / math.sqrt(rate)


def baseline_share(label_count: int, mentions: int, fallback: float, min_volume: int) -> float:
    """The subject's own share over the baseline period, or ``fallback`` (all posts') when it had
    fewer than ``min_volume`` mentions there."""
    return label_count / mentions if mentions >= min_volume else fallback


def sentiment_spike(label: str, count: int, mentions: int, share0: float, rule: Rule) -> Finding | None:
    """A ``label`` ('negative' or 'positive') spike, or None."""
    if mentions < rule.min_volume:
        return None
    share = count / mentions
    z = binomial_z(count, mentions, share0)
    if share - share0 < rule.min_share_delta or z < rule.z:
        return None
    return Finding(
        f"{label}_sentiment",
        f"{label}_share",
        round(share, 4),
        round(share0, 4),
        round(z, 3),
        round(share - share0, 4),
    )


def volume_spike(mentions: int, expected: float, rule: Rule) -> Finding | None:
    """A volume spike, or None."""
    if mentions < rule.min_volume:
        return None
    ratio = mentions / max(expected, 1.0)
    z = poisson_z(mentions, expected)
    if ratio < rule.min_volume_ratio or z < rule.z:
        return None
    return Finding("volume", "mentions", float(mentions), round(expected, 3), round(z, 3), round(ratio, 3))


def cooled_down(last_alert_end_s: int | None, window_end_s: int, cooldown_s: int) -> bool:
    """Whether a new alert of this kind may fire for the subject (event time since its last one)."""
    return last_alert_end_s is None or window_end_s - last_alert_end_s >= cooldown_s


def alert_id(kind: str, subject_kind: str, subject: str, window_start_s: int, window_size_s: int) -> str:
    """Deterministic: ``negative_sentiment:brand:Acme:2026-12-01T09:05:00Z:300``."""
    start = datetime.fromtimestamp(window_start_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{kind}:{subject_kind}:{subject}:{start}:{window_size_s}"
