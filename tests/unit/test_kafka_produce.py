"""The one produce helper every stage uses: backpressure while the local queue is full, never a drop."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest

from pulse import kafka
from pulse.kafka import QueueFullTimeout, produce
from pulse.settings import load
from tests.harness import free_port

pytestmark = pytest.mark.timeout(30)


class FullFor:
    """A producer whose local queue is full for the first ``n`` produce calls."""

    def __init__(self, n: int) -> None:
        self.full_left = n
        self.produced: list[tuple[str, bytes, Any, Any]] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: Any = None, on_delivery: Any = None) -> None:
        if self.full_left > 0:
            self.full_left -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, value, key, on_delivery))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_room_at_once_produces_without_waiting() -> None:
    p = FullFor(0)
    assert produce(p, "t", b"v", b"k") == 0.0  # type: ignore[arg-type]
    assert p.produced == [("t", b"v", b"k", None)] and p.polls == 0


def test_a_full_queue_is_waited_out_serving_delivery_reports_and_nothing_is_dropped() -> None:
    p, seen = FullFor(3), []
    waited = produce(p, "t", b"v", on_delivery=print, while_full=lambda: seen.append(1), poll_s=0)  # type: ignore[arg-type]
    assert p.produced == [("t", b"v", None, print)]
    assert p.polls == 3 and len(seen) == 3 and waited >= 0.0


def test_a_queue_full_past_the_timeout_raises_and_a_failure_from_while_full_propagates() -> None:
    with pytest.raises(QueueFullTimeout, match="producer queue for t full"):
        produce(FullFor(10**6), "t", b"v", timeout_s=0.05, poll_s=0.01)  # type: ignore[arg-type]

    def failed() -> None:
        raise RuntimeError("delivery failed for good")

    with pytest.raises(RuntimeError, match="for good"):
        produce(FullFor(5), "t", b"v", while_full=failed, poll_s=0)  # type: ignore[arg-type]


class _Assigned:
    def __init__(self, assigned: list[str]) -> None:
        self.assigned = assigned
        self.calls: list[tuple[str, list[str]]] = []

    def assignment(self) -> list[str]:
        return self.assigned

    def pause(self, parts: list[str]) -> None:
        self.calls.append(("pause", list(parts)))

    def resume(self, parts: list[str]) -> None:
        self.calls.append(("resume", list(parts)))


def test_rest_pauses_the_assignment_for_the_wait_and_resumes_it_even_if_the_wait_fails() -> None:
    consumer = _Assigned(["alerts-0", "alerts-1"])
    waits: list[float] = []
    kafka.rest(consumer, waits.append, 1.0)  # type: ignore[arg-type]
    assert waits == [1.0]
    assert consumer.calls == [("pause", ["alerts-0", "alerts-1"]), ("resume", ["alerts-0", "alerts-1"])]

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    consumer.calls.clear()
    with pytest.raises(KeyboardInterrupt):
        kafka.rest(consumer, interrupted, 1.0)  # type: ignore[arg-type]
    assert [c for c, _ in consumer.calls] == ["pause", "resume"]
    idle = _Assigned([])
    kafka.rest(idle, waits.append, 0.5)  # type: ignore[arg-type]
    assert idle.calls == [] and waits[-1] == 0.5  # nothing assigned yet: only the wait


def test_a_broker_that_is_away_is_a_few_log_lines_not_one_per_reconnect(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """CI found `pulse ingest generator` writing 300 `Connect ... failed` lines while the broker was
    restarted: librdkafka logs every reconnect attempt of every connection straight to stderr."""
    monkeypatch.setenv("KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")  # nothing listens
    settings = load()
    producer = kafka.producer(
        settings, "test", **{"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 20}
    )
    producer.produce("t", b"v")
    deadline = time.monotonic() + 3  # ~150 attempts at this backoff
    with caplog.at_level(logging.INFO, logger="pulse.kafka"):
        while time.monotonic() < deadline:
            producer.poll(0.1)
    fails = [r for r in caplog.records if r.getMessage().startswith("librdkafka: FAIL")]
    assert 1 <= len(fails) <= 10, [r.getMessage() for r in caplog.records][:20]
    assert len(caplog.records) <= 30  # librdkafka's lines and its error reports, each kind throttled
    # Nothing straight to stderr: librdkafka's own lines look like `%3|<time>|FAIL|<client>| ...`.
    assert not re.search(r"^%\d\|", capfd.readouterr().err, re.M)
    producer.purge()
    producer.flush(0)
