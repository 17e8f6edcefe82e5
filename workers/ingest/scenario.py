"""The synthetic stream's scenario maths: language mix, sentiment shares, scheduled negative spikes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_BRANDS = ("Acme", "Globex", "Initech", "Umbrella", "Soylent")
DEFAULT_HASHTAGS = ("tech", "customerservice", "deals", "launch", "outage", "review", "unboxing")
DEFAULT_LANGS = (("en", 0.7), ("es", 0.12), ("de", 0.08), ("fr", 0.06), ("pt", 0.04))


@dataclass(frozen=True)
class Spike:
    """From ``start_s`` for ``duration_s`` seconds of event time, ``brand``'s posts are negative with
    probability ``negative_share`` (instead of the baseline)."""

    brand: str
    start_s: float
    duration_s: float
    negative_share: float

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.start_s + self.duration_s


_SPIKE = re.compile(
    r"^(?P<brand>[^@]+)@(?P<start>\d+(?:\.\d+)?)\+(?P<dur>\d+(?:\.\d+)?):(?P<share>0?\.\d+|1(?:\.0+)?|0)$"
)


def parse_spike(text: str) -> Spike:
    """``Acme@600+300:0.7``: Acme's negative share is 0.7 from t=600 s for 300 s."""
    m = _SPIKE.match(text.strip())
    if m is None:
        raise ValueError(f"spike {text!r}: expected BRAND@START+DURATION:SHARE, e.g. Acme@600+300:0.7")
    return Spike(m["brand"].strip(), float(m["start"]), float(m["dur"]), float(m["share"]))


def parse_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``en:0.7,es:0.3`` (weights need not sum to 1; a bare ``en`` weighs 1)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        w = float(weight) if weight else 1.0
        if w < 0:
            raise ValueError(f"weight of {name!r} must not be negative")
        out.append((name.strip(), w))
    if not out or sum(w for _, w in out) <= 0:
        raise ValueError(f"no positive weights in {text!r}")
    return tuple(out)


@dataclass(frozen=True)
class Scenario:
    brands: tuple[str, ...] = DEFAULT_BRANDS
    hashtags: tuple[str, ...] = DEFAULT_HASHTAGS
    langs: tuple[tuple[str, float], ...] = DEFAULT_LANGS
    rate: float = 50.0  # posts per second of event time
    brand_share: float = 0.7  # posts that mention a brand
    negative: float = 0.2  # baseline sentiment shares; positive is the rest after neutral
    neutral: float = 0.45
    spikes: tuple[Spike, ...] = field(default_factory=tuple)

    def sentiment_shares(self, brand: str | None, t: float) -> tuple[float, float, float]:
        """(negative, neutral, positive) probabilities for a post about ``brand`` at event time ``t``.

        During a spike the negative share rises to the spike's, and neutral and positive shrink in
        proportion, so the three still sum to 1.
        """
        negative = self.negative
        for spike in self.spikes:
            if brand is not None and spike.brand.lower() == brand.lower() and spike.active(t):
                negative = spike.negative_share
        rest = 1.0 - self.negative
        scale = (1.0 - negative) / rest if rest > 0 else 0.0
        neutral = self.neutral * scale
        return negative, neutral, max(0.0, 1.0 - negative - neutral)
