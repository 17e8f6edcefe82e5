"""The wire contract: one pydantic model per message on the pipeline's topics.

Every message carries ``schema_version``; every timestamp is timezone-aware UTC. The JSON Schema
files in ``schemas/json/`` are generated from these models and pinned by a test, so a contract
change is always deliberate (see ``python -m schemas.export``).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _from_base64(value: object) -> object:
    # On the wire bytes are base64 text; in Python they are bytes. Accept both, emit base64.
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not valid base64: {exc}") from None
    return value


def _no_epoch_numbers(value: object) -> object:
    # pydantic would read numbers as Unix time; the contract says RFC 3339 text, so say so.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("expected an RFC 3339 timestamp with a UTC offset, got a number")
    return value


UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_no_epoch_numbers), AfterValidator(_to_utc)]
WireBytes = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]

# A term is what the trend store counts: a hashtag, an entity, a watched brand or a keyword.
TermKind = Literal["hashtag", "entity", "brand", "keyword"]
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

# RawPost's limits, named so that ingest's own checks (workers.ingest.records) read the same values.
MAX_ID_LENGTH = 512
MAX_TEXT_LENGTH = 100_000
MAX_PLATFORM_LENGTH = 64
PLATFORM_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"

# Sizes end to end. Every topic's max.message.bytes and every producer's message.max.bytes is
# MAX_RECORD_BYTES (infra/topics.yaml, pulse.kafka). The largest valid RawPost (100,000 characters of
# text, each at most 4 bytes of UTF-8 or a 6-byte JSON escape) is about 600 KB; an EnrichedPost adds at
# most MAX_SPANS_PER_POST entities and as many watchlist matches (a few hundred bytes each): it fits.
MAX_RECORD_BYTES = 1_048_576
MAX_SPANS_PER_POST = 256
# A dead letter always fits: its original is cut to this many bytes (flagged, with the whole's length
# and sha256), its error text to DEAD_LETTER_ERROR_CHARS (base64 makes 256 KiB about 350 KB).
DEAD_LETTER_ORIGINAL_BYTES = 262_144
DEAD_LETTER_ERROR_CHARS = 4_000


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_serialization_defaults_required=True)


class Author(_Message):
    """Who wrote a post, as the platform names them."""

    id: NonEmptyStr = Field(description="Platform-stable author id (a DID, account id, ...).")
    handle: str | None = Field(default=None, description="Human handle without the leading @.")
    display_name: str | None = None


class RawPost(_Message):
    """A post as ingest publishes it to ``posts.raw`` (key: ``id``)."""

    schema_version: Literal[1] = 1
    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)] = Field(
        description="Stable post id, unique across platforms, e.g. 'bluesky:at://did:plc:.../post/3k...'."
    )
    platform: Annotated[str, Field(pattern=PLATFORM_PATTERN, max_length=MAX_PLATFORM_LENGTH)]
    author: Author
    text: Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
    lang: Annotated[str, Field(min_length=2, max_length=16)] = Field(
        default="und", description="BCP 47 language tag; 'und' when unknown or not confident."
    )
    created_at: UtcDatetime = Field(description="Event time: when the post was written (UTC).")
    ingested_at: UtcDatetime = Field(description="When ingest accepted the post (UTC).")
    url: str | None = Field(default=None, description="Permalink, when the platform has one.")
    urls: tuple[str, ...] = ()
    mentions: tuple[str, ...] = Field(default=(), description="Mentioned handles without the '@'.")
    hashtags: tuple[str, ...] = Field(default=(), description="Hashtags without the '#', lower-cased.")
    edited_at: UtcDatetime | None = Field(
        default=None,
        description="Set on a new version of a post already published under this id (an edit): when it "
        "was edited. Consumers keep the latest version; counts count the post once.",
    )


class Sentiment(_Message):
    label: NonEmptyStr = Field(description="The arg-max class, one of the model's labels.")
    scores: dict[str, Probability] = Field(description="Probability per class label; sums to ~1.")


class Entity(_Message):
    type: NonEmptyStr = Field(description="Entity type from the NER model, e.g. 'person', 'company'.")
    text: NonEmptyStr = Field(description="The span exactly as it appears in the post text.")
    start: Annotated[int, Field(ge=0)] = Field(description="Character offset into RawPost.text.")
    end: Annotated[int, Field(ge=0)] = Field(description="Exclusive end offset into RawPost.text.")
    normalized: NonEmptyStr = Field(description="Case- and whitespace-folded form used as a trend term.")
    score: Probability


class WatchMatch(_Message):
    """A hit of the watchlist (brands and keywords) in a post."""

    term: NonEmptyStr = Field(description="Canonical name of the watched brand or keyword.")
    kind: Literal["brand", "keyword"]
    text: NonEmptyStr = Field(description="The matched surface form (alias, @handle, #hashtag).")
    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=0)]


class ModelRef(_Message):
    task: Literal["sentiment", "ner"]
    name: NonEmptyStr
    version: NonEmptyStr


class EnrichedPost(_Message):
    """A post with what inference read in it, on ``posts.enriched`` (key: ``post.id``)."""

    schema_version: Literal[1] = 1
    post: RawPost
    sentiment: Sentiment
    entities: tuple[Entity, ...] = Field(
        default=(), max_length=MAX_SPANS_PER_POST, description="At most 256; the first of each term first."
    )
    matches: tuple[WatchMatch, ...] = Field(
        default=(), max_length=MAX_SPANS_PER_POST, description="At most 256; the first of each term first."
    )
    models: tuple[ModelRef, ...] = Field(description="The models that produced this record.")
    enriched_at: UtcDatetime


class Window(_Message):
    start: UtcDatetime
    end: UtcDatetime
    size_s: Annotated[int, Field(gt=0)]


class SentimentCounts(_Message):
    negative: Annotated[int, Field(ge=0)] = 0
    neutral: Annotated[int, Field(ge=0)] = 0
    positive: Annotated[int, Field(ge=0)] = 0


class TrendTerm(_Message):
    term: NonEmptyStr
    kind: TermKind
    count: Annotated[int, Field(ge=0)]
    baseline: Annotated[float, Field(ge=0.0)] = Field(description="EWMA of the term's past windows.")
    score: float = Field(description="Velocity z-score of count against the baseline.")
    sentiment: SentimentCounts


class TrendSnapshot(_Message):
    """The top trending terms of one window, on the ``trends`` topic."""

    schema_version: Literal[1] = 1
    window: Window
    final: bool = Field(description="True once the watermark has passed the window end.")
    watermark: UtcDatetime
    terms: tuple[TrendTerm, ...]
    generated_at: UtcDatetime


class SamplePost(_Message):
    """A post shown as an example (alert evidence, a brand's recent posts). Text is untrusted: render it
    as text, never as markup."""

    id: NonEmptyStr
    text: str
    sentiment: str | None = Field(default=None, description="The post's sentiment label.")
    negative: Probability | None = Field(default=None, description="Probability of 'negative'.")
    positive: Probability | None = Field(default=None, description="Probability of 'positive'.")
    platform: str | None = None
    author: str | None = Field(default=None, description="The author's handle, when the platform gives one.")
    created_at: UtcDatetime | None = None
    edited_at: UtcDatetime | None = Field(default=None, description="When the text shown was edited, if so.")


class TermCount(_Message):
    term: NonEmptyStr
    kind: TermKind
    count: Annotated[int, Field(ge=0)]


class NameCount(_Message):
    name: NonEmptyStr
    count: Annotated[int, Field(ge=0)]


AlertKind = Literal["negative_sentiment", "positive_sentiment", "volume"]


class Evidence(_Message):
    """Why an alert fired, so a person can judge it without opening another tool."""

    counts: SentimentCounts = Field(description="The subject's mentions in the window, by sentiment.")
    mentions: Annotated[int, Field(ge=0)] = Field(description="The subject's mentions in the window.")
    baseline_mentions: Annotated[float, Field(ge=0.0)] = Field(
        description="Mentions an equally long window had on average over the baseline period."
    )
    baseline_share: Probability = Field(
        description="The share of the alert's sentiment over the baseline period (negative for "
        "negative_sentiment, positive for positive_sentiment; negative for volume)."
    )
    baseline_window: Window = Field(description="The period the baseline was read from.")
    samples: tuple[SamplePost, ...] = Field(
        default=(),
        description="Posts from the window: most negative first for negative_sentiment, most "
        "positive first for positive_sentiment, newest first for volume.",
    )
    co_terms: tuple[TermCount, ...] = Field(
        default=(), description="Terms seen with the subject, most first."
    )
    platforms: tuple[NameCount, ...] = ()
    languages: tuple[NameCount, ...] = ()
    authors: Annotated[int, Field(ge=0)] = Field(0, description="Distinct authors in the window (estimate).")


class Alert(_Message):
    """A detected anomaly with its evidence, on the ``alerts`` topic (key: ``id``).

    Version 2 (was 1): kinds ``negative_sentiment`` (v1's ``sentiment_spike``), ``positive_sentiment``
    and ``volume``; ``metric`` says what ``observed`` and ``baseline`` measure; richer evidence.
    """

    schema_version: Literal[2] = 2
    id: NonEmptyStr = Field(description="Deterministic: the same spike in the same window, the same id.")
    kind: AlertKind
    subject: NonEmptyStr
    subject_kind: Literal["brand", "keyword"]
    window: Window
    metric: Literal["negative_share", "positive_share", "mentions"]
    observed: Annotated[float, Field(ge=0.0)] = Field(description="The metric in the window.")
    baseline: Annotated[float, Field(ge=0.0)] = Field(description="The metric's usual value for the subject.")
    score: float = Field(
        description="z-score of observed against baseline (binomial for shares, Poisson for mentions)."
    )
    effect: float = Field(description="observed - baseline for shares; observed / baseline for mentions.")
    evidence: Evidence
    created_at: UtcDatetime = Field(description="When the detector raised it (wall clock).")


class DeadLetter(_Message):
    """A record a stage could not process, on ``posts.dlq``, with everything needed to replay it."""

    schema_version: Literal[1] = 1
    stage: NonEmptyStr = Field(description="Stable stage name: ingest, inference, streams.")
    reason: NonEmptyStr = Field(
        description="Machine-readable cause: decode, validation, late, too_large, ..."
    )
    error: str = Field(description="Human-readable message naming the field and the problem.")
    original: WireBytes = Field(
        description="The original bytes, base64-encoded on the wire; their first 262,144 when truncated."
    )
    truncated: bool = Field(default=False, description="original holds only the first bytes of the record.")
    original_bytes: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Length of the whole original (set when truncated)."
    )
    original_sha256: str | None = Field(
        default=None, description="Hex sha256 of the whole original (set when truncated)."
    )
    key: WireBytes | None = Field(default=None, description="The original Kafka key, base64-encoded.")
    sealed: bool = Field(
        default=False,
        description="original is sealed (ingest with PRIVACY__PSEUDONYMIZE_AUTHORS: AES-256-GCM under a "
        "key derived from PRIVACY__HMAC_KEY; 'pulse dead-letters --unseal' opens it).",
    )
    topic: str | None = None
    partition: Annotated[int, Field(ge=0)] | None = None
    offset: Annotated[int, Field(ge=0)] | None = None
    source: str | None = Field(default=None, description="Non-Kafka origin, e.g. 'http' or a file path.")
    failed_at: UtcDatetime


MESSAGES: dict[str, type[_Message]] = {
    "raw_post": RawPost,
    "enriched_post": EnrichedPost,
    "trend_snapshot": TrendSnapshot,
    "alert": Alert,
    "dead_letter": DeadLetter,
}
