"""Record-level logic of the inference stage: raw bytes to ``RawPost``, model outputs to ``EnrichedPost``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from schemas import DecodeError, EnrichedPost, Entity, ModelRef, RawPost, Sentiment, WatchMatch, decode

STAGE = "inference"


def decode_post(value: bytes | None) -> RawPost:
    """The post in a ``posts.raw`` record; ``DecodeError`` (a poison record) otherwise."""
    if value is None:
        raise DecodeError("RawPost", "", "empty record (no value)")
    return decode(value, RawPost)


def enrich(
    post: RawPost,
    sentiment: Sentiment,
    entities: Sequence[Entity],
    matches: Sequence[WatchMatch],
    models: Sequence[ModelRef],
    enriched_at: datetime,
) -> EnrichedPost:
    """One enriched record: the post with its sentiment, entities, watchlist matches and model refs.

    Entities whose offsets do not point at their text in this post are dropped: a downstream
    consumer highlights spans by offset, and a wrong span is worse than a missing one.
    """
    text = post.text
    kept = tuple(e for e in entities if 0 <= e.start < e.end <= len(text) and text[e.start : e.end] == e.text)
    return EnrichedPost(
        post=post,
        sentiment=sentiment,
        entities=kept,
        matches=tuple(matches),
        models=tuple(models),
        enriched_at=enriched_at,
    )
