"""Typed, read-only views of wire records for hot paths: decoded straight from bytes by msgspec.

A stage that reads every record of a topic and needs a few fields (the streams stage counts terms of
every ``EnrichedPost``) cannot afford pydantic validation per record (tens of microseconds). These
structs carry the same field names and types as the models in ``schemas.models`` for the fields they
declare; unknown fields are ignored, so a record the models accept is accepted here. A unit test
pins each view against its model. Decoding errors are the codec's ``DecodeError``, naming the field.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from schemas.codec import DecodeError


class AuthorView(msgspec.Struct, frozen=True, gc=False):
    id: str
    handle: str | None = None


class PostView(msgspec.Struct, frozen=True, gc=False):
    id: str
    platform: str
    author: AuthorView
    text: str
    created_at: datetime
    lang: str = "und"
    hashtags: tuple[str, ...] = ()
    edited_at: datetime | None = None  # a new version of a post already published (an edit)


class SentimentView(msgspec.Struct, frozen=True, gc=False):
    label: str
    scores: dict[str, float]


class EntityView(msgspec.Struct, frozen=True, gc=False):
    type: str
    normalized: str


class MatchView(msgspec.Struct, frozen=True, gc=False):
    term: str
    kind: str


class EnrichedView(msgspec.Struct, frozen=True, gc=False):
    """What the streams stage reads of an ``EnrichedPost``."""

    schema_version: int
    post: PostView
    sentiment: SentimentView
    entities: tuple[EntityView, ...] = ()
    matches: tuple[MatchView, ...] = ()


_decode_enriched = msgspec.json.Decoder(EnrichedView).decode
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`$")


def read_enriched(data: bytes | bytearray | memoryview | None) -> EnrichedView:
    """An ``EnrichedPost``'s view; ``DecodeError`` naming the field when the bytes are not one."""
    if not data:
        raise DecodeError("EnrichedPost", "", "empty record (no value)")
    try:
        view = _decode_enriched(data)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT.search(message)
        field = re.sub(r"\[(\d+)\]", r".\1", at.group(1)) if at else ""
        problem = message[: at.start()] if at else message
        missing = _MISSING.match(problem)
        if missing:  # name the missing field itself, as the models do
            field, problem = ".".join(p for p in (field, missing.group(1)) if p), "is required"
        raise DecodeError("EnrichedPost", field, problem[:1].lower() + problem[1:]) from None
    except msgspec.DecodeError as exc:
        raise DecodeError("EnrichedPost", "", f"not valid JSON ({exc})") from None
    if view.schema_version != 1:
        raise DecodeError("EnrichedPost", "schema_version", f"unknown version {view.schema_version}")
    if view.post.created_at.tzinfo is None:
        raise DecodeError("EnrichedPost", "post.created_at", "timestamp has no timezone offset")
    return view
