"""Replay pacing maths: how long to wait before the next post, at a fixed rate or at X× event time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass
class RatePacer:
    """At most ``rate`` posts per second on average since the start."""

    rate: float
    sent: int = 0

    def delay(self, elapsed: float, created_at: datetime) -> float:
        self.sent += 1
        return max(0.0, (self.sent - 1) / self.rate - elapsed)


@dataclass
class SpeedPacer:
    """Event-time replay: a post written ``d`` s after the first goes out ``d / speed`` s after it.

    Out-of-order posts (earlier than one already sent) go out at once rather than holding the stream.
    """

    speed: float
    first: datetime | None = None

    def delay(self, elapsed: float, created_at: datetime) -> float:
        if self.first is None:
            self.first = created_at
            return 0.0
        due = (created_at - self.first).total_seconds() / self.speed
        return max(0.0, due - elapsed)


class Unpaced:
    def delay(self, elapsed: float, created_at: datetime) -> float:
        return 0.0
