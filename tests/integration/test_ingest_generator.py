"""`pulse ingest generator` publishes its seeded stream to the real local broker."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from pulse.cli import build_parser
from pulse.settings import Settings
from schemas import RawPost, decode
from tests.kafka_io import read_topic

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_generator_publishes_its_seeded_stream(settings: Settings, restore_signals: None) -> None:
    args = build_parser().parse_args(
        [
            "ingest",
            "generator",
            "--seed",
            "5",
            "--count",
            "400",
            "--rate",
            "2000",
            "--brands",
            "Acme,Globex",
            "--start",
            "2026-11-28T10:00:00Z",
            "--no-lang",
            "0.2",
            "--metrics-port",
            "-1",
        ]
    )
    started = time.monotonic()
    assert args.handler(args, settings) == 0
    assert time.monotonic() - started >= 0.15  # paced: 400 posts at 2000/s take at least 0.2 s
    posts = {k: decode(v, RawPost) for k, v in read_topic(settings, settings.topics.raw, expect=400)}
    assert set(posts) == {f"synthetic:5:{i}".encode() for i in range(400)}
    assert all(p.platform == "synthetic" for p in posts.values())
    assert {p.lang for p in posts.values()} >= {"en", "es"}
    mentioned = [p for p in posts.values() if "Acme" in p.text or "Globex" in p.text]
    assert len(mentioned) > 200
