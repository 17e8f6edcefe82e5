"""A fatal producer error ends a pull source with one line that says why, not only "Local: Fatal error"."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pulse.settings import load
from workers.ingest.publisher import Publisher
from workers.ingest.runner import Runner

FENCED = "Broker: Broker received an out of order sequence number: ProduceRequest for posts.raw [4]"


class LateCause:
    """A producer in librdkafka's fatal state: produce already fails with ``_FATAL``, and the cause
    comes only on a later poll (librdkafka queues it from its broker thread), through the error callback
    or raised from ``poll`` (what confluent-kafka 2.16 does here)."""

    def __init__(self, polls_before_cause: int, raised: bool) -> None:
        self.polls_before_cause = polls_before_cause
        self.raised = raised
        self.polls = 0
        self.publisher: Publisher | None = None

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        if self.polls < self.polls_before_cause:
            return 0
        cause = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, FENCED, fatal=True)
        if self.raised:
            raise KafkaException(cause)
        if self.polls == self.polls_before_cause and self.publisher is not None:
            self.publisher._fatal(cause)
        return 0

    def flush(self, timeout: float = 0) -> int:
        raise AssertionError("a fenced producer is not flushed")

    def __len__(self) -> int:
        return 0


class FailsFatally:
    def batches(self, stop: threading.Event) -> Iterator[Any]:
        raise KafkaException(KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error"))
        yield  # pragma: no cover

    def rewind(self) -> bool:
        return False


@pytest.mark.parametrize("raised", [False, True], ids=["error_cb", "poll"])
@pytest.mark.parametrize("polls_before_cause", [1, 4])
def test_giving_up_on_a_fatal_error_names_its_cause_even_when_it_arrives_after_the_failing_call(
    polls_before_cause: int, raised: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # CI: the generator's last line said "Local: Fatal error" and exited before librdkafka's reason
    # (the broker lost its acknowledged writes) was served, so nothing said why.
    producer = LateCause(polls_before_cause, raised)
    publisher = Publisher(load(), producer)  # type: ignore[arg-type]
    producer.publisher = publisher
    runner = Runner(FailsFatally(), pipeline=None, publisher=publisher)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="workers.ingest.runner"):
        assert runner.run() == 1
    [line] = [r for r in caplog.records if r.getMessage() == "giving up"]
    assert "Local: Fatal error" in line.error  # type: ignore[attr-defined]
    assert line.cause == f"OUT_OF_ORDER_SEQUENCE_NUMBER: {FENCED}"  # type: ignore[attr-defined]
