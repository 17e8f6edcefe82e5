"""The query API's response bodies (``/v1/...``): pydantic models, so the OpenAPI document is the contract.

They reuse the wire messages where the API hands those out as they are (``Alert``, ``TrendTerm``,
``SentimentCounts``, ``SamplePost``, ``Window``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import (
    Alert,
    NameCount,
    Probability,
    SamplePost,
    SentimentCounts,
    TermCount,
    TermKind,
    TrendTerm,
    UtcDatetime,
    Window,
)

Count = Annotated[int, Field(ge=0)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorBody(_Body):
    """Every 4xx and 5xx answer: what is wrong, and which parameter when one is."""

    error: str
    parameter: str | None = None


class TrendsResponse(_Body):
    window: Window
    watermark: UtcDatetime | None = Field(description="Event time up to which every window is complete.")
    terms: tuple[TrendTerm, ...] = Field(description="Fastest-rising terms against their own baseline.")


class TimelinePoint(_Body):
    start: UtcDatetime
    count: Count
    sentiment: SentimentCounts


class TimelineResponse(_Body):
    kind: TermKind
    term: str
    window: Window
    step_s: int
    points: tuple[TimelinePoint, ...]


class BrandCard(_Body):
    brand: str
    mentions: Count
    sentiment: SentimentCounts
    negative_share: Probability
    share_of_voice: Probability = Field(description="Mentions over the mentions of every watched brand.")
    sparkline: tuple[Count, ...] = Field(description="Mentions per step of the window, oldest first.")


class BrandsResponse(_Body):
    window: Window
    posts: Count = Field(description="Every post in the window.")
    brands: tuple[BrandCard, ...]


class BrandDetail(_Body):
    brand: str
    window: Window
    mentions: Count
    sentiment: SentimentCounts
    share_of_voice: Probability
    timeline: tuple[TimelinePoint, ...]
    platforms: tuple[NameCount, ...]
    languages: tuple[NameCount, ...]
    co_terms: tuple[TermCount, ...]
    authors: Count = Field(description="Distinct authors (estimate).")
    samples: tuple[SamplePost, ...] = Field(description="Recent posts, newest first. Untrusted text.")


class ShareOfVoicePoint(_Body):
    start: UtcDatetime
    counts: dict[str, Count]
    shares: dict[str, Probability]


class ShareOfVoiceResponse(_Body):
    window: Window
    step_s: int
    brands: tuple[str, ...]
    points: tuple[ShareOfVoicePoint, ...]


class AlertsResponse(_Body):
    alerts: tuple[Alert, ...] = Field(description="Newest window first.")


class Health(_Body):
    status: str
    redis: bool
