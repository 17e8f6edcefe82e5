"""Social Pulse wire contract: message models, JSON Schema files and the orjson codec.

Imports nothing of ours, so consumers can depend on it alone.
"""

from schemas.codec import DecodeError, decode, encode, validate
from schemas.models import (
    MESSAGES,
    SENTIMENT_LABELS,
    Alert,
    Author,
    DeadLetter,
    EnrichedPost,
    Entity,
    Evidence,
    ModelRef,
    RawPost,
    SamplePost,
    Sentiment,
    SentimentCounts,
    TermCount,
    TermKind,
    TrendSnapshot,
    TrendTerm,
    WatchMatch,
    Window,
)

__all__ = [
    "MESSAGES",
    "SENTIMENT_LABELS",
    "Alert",
    "Author",
    "DeadLetter",
    "DecodeError",
    "EnrichedPost",
    "Entity",
    "Evidence",
    "ModelRef",
    "RawPost",
    "SamplePost",
    "Sentiment",
    "SentimentCounts",
    "TermCount",
    "TermKind",
    "TrendSnapshot",
    "TrendTerm",
    "WatchMatch",
    "Window",
    "decode",
    "encode",
    "validate",
]
