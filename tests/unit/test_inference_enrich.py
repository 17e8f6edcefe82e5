"""Decoding raw records and mapping model outputs onto EnrichedPost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas import EnrichedPost, Entity, ModelRef, Sentiment, WatchMatch, decode, encode
from tests.factories import post_factory
from workers.inference.enrich import decode_post, enrich

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MODELS = (ModelRef(task="sentiment", name="s", version="1"), ModelRef(task="ner", name="n", version="1"))


def test_decode_post_round_trips_and_names_the_bad_field() -> None:
    post = post_factory()
    assert decode_post(encode(post)) == post
    with pytest.raises(ValueError, match="field 'text'"):
        decode_post(
            b'{"id":"x","platform":"t","author":{"id":"a"},"created_at":"2026-01-01T00:00:00Z",'
            b'"ingested_at":"2026-01-01T00:00:00Z"}'
        )
    with pytest.raises(ValueError, match="not valid JSON"):
        decode_post(b"\xff\xfe")
    with pytest.raises(ValueError, match="empty record"):
        decode_post(None)


def test_enrich_keeps_everything_in_one_record_that_survives_the_codec() -> None:
    post = post_factory(text="Acme Cloud is down again")
    sentiment = Sentiment(label="negative", scores={"negative": 0.8, "neutral": 0.15, "positive": 0.05})
    entity = Entity(type="company", text="Acme Cloud", start=0, end=10, normalized="acme cloud", score=0.9)
    match = WatchMatch(term="Acme", kind="brand", text="Acme Cloud", start=0, end=10)
    record = enrich(post, sentiment, [entity], [match], MODELS, NOW)
    assert decode(encode(record), EnrichedPost) == record
    assert record.post == post and record.sentiment.label == "negative"
    assert record.entities == (entity,) and record.matches == (match,) and record.models == MODELS


def test_enrich_drops_entities_whose_offsets_do_not_point_at_their_text() -> None:
    post = post_factory(text="hi Acme")
    good = Entity(type="company", text="Acme", start=3, end=7, normalized="acme", score=0.9)
    shifted = Entity(type="company", text="Acme", start=2, end=6, normalized="acme", score=0.9)
    outside = Entity(type="company", text="Acme", start=30, end=34, normalized="acme", score=0.9)
    sentiment = Sentiment(label="neutral", scores={"neutral": 1.0})
    assert enrich(post, sentiment, [good, shifted, outside], [], MODELS, NOW).entities == (good,)


def test_spans_are_capped_keeping_the_first_of_every_term_in_text_order() -> None:
    from workers.inference.enrich import capped

    spans = [("acme", i) for i in range(1000)] + [("globex", 1000), ("initech", 1001)]
    kept = capped(spans, lambda s: s[0], limit=10)
    assert len(kept) == 10 and kept == tuple(sorted(kept, key=lambda s: s[1]))
    assert {t for t, _ in kept} == {"acme", "globex", "initech"}  # every term survives the cap
    assert capped(spans[:5], lambda s: s[0], limit=10) == tuple(spans[:5])
