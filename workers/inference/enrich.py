"""Record-level logic of the inference stage: raw bytes to ``RawPost``, model outputs to ``EnrichedPost``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from schemas import DecodeError, EnrichedPost, Entity, ModelRef, RawPost, Sentiment, WatchMatch, decode
from schemas.models import MAX_SPANS_PER_POST

T = TypeVar("T")

STAGE = "inference"


def decode_post(value: bytes | None) -> RawPost:
    """The post in a ``posts.raw`` record; ``DecodeError`` (a poison record) otherwise."""
    if value is None:
        raise DecodeError("RawPost", "", "empty record (no value)")
    return decode(value, RawPost)


def capped(spans: Sequence[T], term: Callable[[T], object], limit: int = MAX_SPANS_PER_POST) -> tuple[T, ...]:
    """At most ``limit`` spans: the first of every distinct term, then later repeats, in text order. A post
    that repeats one name thousands of times keeps its record under the size limit and counts the same
    (the trend store counts a term once per post)."""
    if len(spans) <= limit:
        return tuple(spans)
    seen: set[object] = set()
    first: list[int] = []
    repeats: list[int] = []
    for i, span in enumerate(spans):
        (repeats if term(span) in seen else first).append(i)
        seen.add(term(span))
    chosen = sorted((first + repeats)[:limit])
    return tuple(spans[i] for i in chosen)


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
    kept = [e for e in entities if 0 <= e.start < e.end <= len(text) and text[e.start : e.end] == e.text]
    return EnrichedPost(
        post=post,
        sentiment=sentiment,
        entities=capped(kept, lambda e: (e.type, e.normalized)),
        matches=capped(matches, lambda m: (m.kind, m.term)),
        models=tuple(models),
        enriched_at=enriched_at,
    )
