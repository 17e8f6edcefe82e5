"""Trending terms: a term's count in a window against its own baseline, as a z-score. Pure functions.

The baseline is an exponentially weighted moving average (and variance) of the term's counts in the
previous windows of the same size, oldest first, so a term that is always popular scores by how far
it moved from its own normal, not by its size. The score adds the Poisson variance of the baseline
to the EWMA variance: a term going from 0 to 3 mentions is not a 10-sigma event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Baseline:
    mean: float
    variance: float


def ewma(history: Sequence[float], alpha: float) -> Baseline:
    """EWMA mean and variance of ``history`` (oldest first); (0, 0) for no history."""
    if not history:
        return Baseline(0.0, 0.0)
    mean, variance = float(history[0]), 0.0
    for value in history[1:]:
        delta = value - mean
        mean += alpha * delta
        variance = (1 - alpha) * (variance + alpha * delta * delta)
    return Baseline(mean, variance)


def velocity_score(count: int, baseline: Baseline) -> float:
    """How many standard deviations ``count`` is above the baseline (Poisson noise included)."""
    return (count - baseline.mean) / math.sqrt(baseline.variance + baseline.mean + 1.0)


@dataclass(frozen=True)
class Scored:
    term: str
    count: int
    baseline: float
    score: float


def trending(
    counts: dict[str, int],
    history: Mapping[str, Sequence[int]],
    *,
    alpha: float,
    min_count: int,
    min_score: float,
    k: int,
) -> list[Scored]:
    """The ``k`` terms with the highest velocity score (at least ``min_score``, with ``min_count``
    mentions), best first; ties by count, then by term."""
    scored = []
    for term, count in counts.items():
        if count < min_count:
            continue
        base = ewma(history.get(term, ()), alpha)
        score = velocity_score(count, base)
        if score >= min_score:
            scored.append(Scored(term, count, round(base.mean, 3), round(score, 3)))
    scored.sort(key=lambda s: (-s.score, -s.count, s.term))
    return scored[:k]
