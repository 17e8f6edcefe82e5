"""Bounded retries: transient failures wait and retry within a budget; anything else propagates at once."""

from __future__ import annotations

import random

import pytest

from pulse.retry import Backoff, RetryBudgetSpent, call_with_retries


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("server went away")
        return "done"


def test_a_transient_failure_is_retried_until_it_passes() -> None:
    slept: list[float] = []
    flaky = Flaky(3)
    assert call_with_retries(flaky, (ConnectionError,), budget_s=60, what="x", sleep=slept.append) == "done"
    assert flaky.calls == 4 and len(slept) == 3


def test_a_failure_outlasting_the_budget_raises_with_the_last_error_as_cause() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    with pytest.raises(RetryBudgetSpent, match="redis apply: still failing after 10 s") as info:
        call_with_retries(
            Flaky(10**6),
            (ConnectionError,),
            budget_s=10,
            what="redis apply",
            sleep=sleep,
            clock=lambda: now[0],
        )
    assert isinstance(info.value.__cause__, ConnectionError)
    assert now[0] <= 10


def test_an_error_that_is_not_transient_is_not_retried() -> None:
    flaky = Flaky(1, error=ValueError)
    with pytest.raises(ValueError):
        call_with_retries(flaky, (ConnectionError,), budget_s=60, what="x", sleep=lambda s: None)
    assert flaky.calls == 1


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff, rng = Backoff(base=1.0, cap=4.0), random.Random(7)
    delays = [backoff.next_delay(rng) for _ in range(5)]
    assert [0.5 <= delays[0] <= 1, 1 <= delays[1] <= 2, 2 <= delays[2] <= 4] == [True] * 3
    assert all(2 <= d <= 4 for d in delays[3:])
    backoff.reset()
    assert backoff.next_delay(rng) <= 1
