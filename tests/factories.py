"""Factories for messages and ingest's input records: valid by default, any field overridable."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import (
    Alert,
    Author,
    DeadLetter,
    EnrichedPost,
    Entity,
    Evidence,
    ModelRef,
    NameCount,
    RawPost,
    SamplePost,
    Sentiment,
    SentimentCounts,
    TermCount,
    TrendSnapshot,
    TrendTerm,
    WatchMatch,
    Window,
)

_ids = itertools.count(1)
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def post_factory(**overrides: Any) -> RawPost:
    n = next(_ids)
    fields: dict[str, Any] = {
        "id": f"test:{n}",
        "platform": "test",
        "author": Author(id=f"user{n % 7}", handle=f"user{n % 7}"),
        "text": f"Loving the new #Acme phone, post {n} https://acme.example/p @support",
        "lang": "en",
        "created_at": T0 + timedelta(seconds=n),
        "ingested_at": T0 + timedelta(seconds=n, milliseconds=5),
        "urls": ("https://acme.example/p",),
        "mentions": ("support",),
        "hashtags": ("acme",),
    }
    fields.update(overrides)
    return RawPost(**fields)


def input_record(**overrides: Any) -> dict[str, Any]:
    """A record as a source hands it to ingest (the canonical input layout, not yet a RawPost)."""
    record: dict[str, Any] = {
        "id": "t:1",
        "platform": "test",
        "author": {"id": "u1", "handle": "ann"},
        "text": "Loving the new #Acme phone @acmehelp https://acme.example/p1",
        "lang": "en",
        "created_at": "2026-11-28T11:59:00Z",
    }
    record.update(overrides)
    return record


def enriched_factory(post: RawPost | None = None, **overrides: Any) -> EnrichedPost:
    post = post or post_factory()
    fields: dict[str, Any] = {
        "post": post,
        "sentiment": Sentiment(label="positive", scores={"negative": 0.05, "neutral": 0.15, "positive": 0.8}),
        "entities": (Entity(type="company", text="Acme", start=18, end=22, normalized="acme", score=0.93),),
        "matches": (WatchMatch(term="Acme", kind="brand", text="#Acme", start=17, end=22),),
        "models": (ModelRef(task="sentiment", name="pulse-sentiment", version="1"),),
        "enriched_at": post.ingested_at + timedelta(milliseconds=40),
    }
    fields.update(overrides)
    return EnrichedPost(**fields)


def window_factory(size_s: int = 60, start: datetime = T0) -> Window:
    return Window(start=start, end=start + timedelta(seconds=size_s), size_s=size_s)


def snapshot_factory(**overrides: Any) -> TrendSnapshot:
    fields: dict[str, Any] = {
        "window": window_factory(),
        "final": True,
        "watermark": T0 + timedelta(minutes=2),
        "terms": (
            TrendTerm(
                term="acme",
                kind="brand",
                count=120,
                baseline=40.5,
                score=4.2,
                sentiment=SentimentCounts(negative=60, neutral=40, positive=20),
            ),
        ),
        "generated_at": T0 + timedelta(minutes=2, seconds=1),
    }
    fields.update(overrides)
    return TrendSnapshot(**fields)


def alert_factory(**overrides: Any) -> Alert:
    window = window_factory()
    fields: dict[str, Any] = {
        "id": "negative_sentiment:brand:Acme:2026-11-28T12:00:00Z:60",
        "kind": "negative_sentiment",
        "subject": "Acme",
        "subject_kind": "brand",
        "window": window,
        "metric": "negative_share",
        "observed": 0.5,
        "baseline": 0.12,
        "score": 6.3,
        "effect": 0.38,
        "evidence": Evidence(
            counts=SentimentCounts(negative=60, neutral=40, positive=20),
            mentions=120,
            baseline_mentions=95.5,
            baseline_share=0.12,
            baseline_window=window_factory(size_s=3600, start=T0 - timedelta(hours=1)),
            samples=(
                SamplePost(id="test:1", text="Acme support is useless", sentiment="negative", negative=0.97),
            ),
            co_terms=(TermCount(term="outage", kind="keyword", count=31),),
            platforms=(NameCount(name="bluesky", count=80), NameCount(name="mastodon", count=40)),
            languages=(NameCount(name="en", count=120),),
            authors=97,
        ),
        "created_at": T0 + timedelta(minutes=2),
    }
    fields.update(overrides)
    return Alert(**fields)


def dead_letter_factory(**overrides: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "stage": "inference",
        "reason": "decode",
        "error": "invalid RawPost: field 'text': is required",
        "original": b'{"id": "x"}',
        "key": b"x",
        "topic": "posts.raw",
        "partition": 3,
        "offset": 1042,
        "failed_at": T0,
    }
    fields.update(overrides)
    return DeadLetter(**fields)
