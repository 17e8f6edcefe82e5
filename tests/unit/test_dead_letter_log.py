"""Dead letters: every one produced and counted, but a flood is not a flood of log lines."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pulse import kafka


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingProducer:
    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, value: bytes = b"", key: bytes | None = None, **_: Any) -> None:
        self.produced.append((topic, key, value))


def test_throttle_logs_a_burst_per_window_and_reports_what_it_left_out() -> None:
    clock = Clock()
    throttle = kafka.LogThrottle(burst=3, window_s=10, clock=clock)
    assert [throttle.allow() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    clock.now = 9.9
    assert throttle.allow() == (False, 0)
    clock.now = 10.0
    assert throttle.allow() == (True, 3)  # the three left out since the last line
    assert throttle.allow() == (True, 0)


def test_every_dead_letter_is_produced_but_only_a_burst_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    monkeypatch.setattr(kafka, "DEAD_LETTER_LOG", kafka.LogThrottle(burst=10, window_s=10, clock=clock))
    producer = RecordingProducer()
    with caplog.at_level(logging.WARNING, logger="pulse.kafka"):
        for i in range(25):
            letter = kafka.dead_letter("inference", "decode", "bad json", b"{", key=str(i).encode())
            kafka.publish_dead_letter(producer, "posts.dlq", letter)  # type: ignore[arg-type]
        clock.now = 11
        kafka.publish_dead_letter(producer, "posts.dlq", letter)  # type: ignore[arg-type]
    assert len(producer.produced) == 26
    assert [k for _, k, _ in producer.produced[:3]] == [b"0", b"1", b"2"]
    lines = [r for r in caplog.records if r.getMessage() == "dead letter"]
    assert len(lines) == 11
    assert getattr(lines[-1], "not_logged_before", None) == 15
    assert not hasattr(lines[0], "not_logged_before")


def test_a_dead_letter_always_fits_a_record_and_says_what_was_cut() -> None:
    import hashlib

    from pulse.kafka import dead_letter
    from schemas import DeadLetter, decode, encode
    from schemas.models import DEAD_LETTER_ORIGINAL_BYTES, MAX_RECORD_BYTES

    original = b"[" + b"1," * 500_000 + b"1]"  # ~1 MB of invalid input
    letter = dead_letter("ingest", "validation", "x" * 3_000_000, original, key=b"k" * 10_000)
    wire = encode(letter)
    assert len(wire) < MAX_RECORD_BYTES // 2
    back = decode(wire, DeadLetter)
    assert back.truncated and back.original == original[:DEAD_LETTER_ORIGINAL_BYTES]
    assert back.original_bytes == len(original)
    assert back.original_sha256 == hashlib.sha256(original).hexdigest()
    assert len(back.error) <= 4_000 and back.error.endswith("(3,000,000 characters in all)")
    assert back.key is not None and len(back.key) == 4_096
    small = dead_letter("ingest", "decode", "bad", b"{not json")
    assert (small.truncated, small.original_bytes, small.original_sha256, small.original) == (
        False,
        None,
        None,
        b"{not json",
    )
