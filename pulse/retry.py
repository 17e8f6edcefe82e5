"""Bounded retries for transient failures (a broker or Redis away for a while): one helper for every stage.

Transient failures retry with capped, jittered exponential backoff; once the budget is spent the last
error propagates and the process exits non-zero for its supervisor to restart it. Anything that is
not listed as transient is a bug or bad data and propagates at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter; ``reset`` after a success."""

    base: float = 0.5
    cap: float = 60.0
    attempt: int = 0

    def next_delay(self, rng: random.Random) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class RetryBudgetSpent(RuntimeError):
    """A transient failure lasted longer than the caller allows; ``__cause__`` is the last one."""


def call_with_retries(
    fn: Callable[[], T],
    transient: tuple[type[BaseException], ...],
    *,
    budget_s: float,
    what: str,
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    extra: dict[str, object] | None = None,
) -> T:
    """``fn()``, retried on ``transient`` errors for up to ``budget_s`` seconds, then ``RetryBudgetSpent``."""
    backoff = backoff or Backoff(base=0.2, cap=5.0)
    rng = rng or random.Random()
    deadline = clock() + budget_s
    while True:
        try:
            result = fn()
        except transient as exc:
            delay = backoff.next_delay(rng)
            if clock() + delay > deadline:
                raise RetryBudgetSpent(f"{what}: still failing after {budget_s:g} s: {exc}") from exc
            log.warning(
                "transient failure, retrying",
                extra={"what": what, "error": str(exc), "retry_in_s": round(delay, 2), **(extra or {})},
            )
            sleep(delay)
            continue
        backoff.reset()
        return result
