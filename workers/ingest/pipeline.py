"""The ingest core: a batch of source records in, posts to publish and dead letters out. No I/O.

Sources hand over a ``Batch``: raw lines (bytes, parsed here) or ``Item``s (parsed by the source, or
known to be unreadable). ``Pipeline.process`` decodes, maps, normalises, validates, detects missing
languages in one call per batch and drops duplicates within the dedup window (counted, never silent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from schemas import DeadLetter, DecodeError
from workers.ingest.dedup import RecentIds
from workers.ingest.language import LanguageDetector
from workers.ingest.mapping import FieldMapping, apply_mapping
from workers.ingest.records import WIRE_OPTIONS, RecordBuilder, encode_doc, wire_time

STAGE = "ingest"
_NOT_PARSED: Any = object()


@dataclass(slots=True)
class Item:
    """One record as a source received it: ``value`` is its parsed JSON, unless ``problem`` says why
    the source could not read it."""

    original: bytes
    value: Any = _NOT_PARSED
    origin: str | None = None  # overrides the batch's origin, e.g. a firehose message's URL
    problem: str | None = None


@dataclass(slots=True)
class Batch:
    """``records`` are bytes (one JSON document each) or ``Item``s. ``origin`` names where they came from
    in dead letters; with ``first_line`` set, record i is reported as ``origin:first_line+i``."""

    records: Sequence[bytes | Item]
    origin: str | None = None
    first_line: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def origin_of(self, index: int) -> str | None:
        record = self.records[index]
        if isinstance(record, Item) and record.origin is not None:
            return record.origin
        if self.first_line is not None and self.origin is not None:
            return f"{self.origin}:{self.first_line + index}"
        return self.origin

    def original(self, index: int) -> bytes:
        record = self.records[index]
        return record.original if isinstance(record, Item) else record


class Post(NamedTuple):
    key: bytes
    value: bytes
    created_at: datetime
    position: int  # index in the batch


@dataclass
class Outcome:
    posts: list[Post] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    rejected: list[tuple[int, DecodeError]] = field(default_factory=list)  # (index in batch, error)
    duplicates: list[int] = field(default_factory=list)  # indexes in the batch


class Pipeline:
    def __init__(
        self,
        builder: RecordBuilder,
        detector: LanguageDetector,
        dedup: RecentIds,
        mapping: FieldMapping | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.builder = builder
        self.detector = detector
        self.dedup = dedup
        self.mapping = mapping
        self.clock = clock

    def process(self, batch: Batch, dedup: bool = True) -> Outcome:
        """Posts to publish (in batch order), dead letters, duplicates. ``dedup=False`` leaves the window
        untouched: the caller decides later (the HTTP source, once the whole request is valid)."""
        now = self.clock()
        ingested_at = wire_time(now)  # one per batch, formatted once
        out = Outcome()
        posts = out.posts
        deferred: list[tuple[str, dict[str, Any], datetime, int]] = []  # waiting for language detection
        fast, checked = self.builder.fast, self.builder.checked
        mapping = self.mapping
        loads, dumps = orjson.loads, orjson.dumps
        add = self.dedup.add
        for index, record in enumerate(batch.records):
            try:
                if type(record) is bytes:
                    if not record:
                        continue  # a blank line is not a record
                    try:
                        value = loads(record)
                    except orjson.JSONDecodeError as exc:
                        raise DecodeError("RawPost", "", f"not valid JSON ({exc})") from None
                else:
                    assert isinstance(record, Item)
                    if record.problem is not None:
                        raise DecodeError("RawPost", "", record.problem)
                    value = loads(record.original) if record.value is _NOT_PARSED else record.value
                if mapping is not None and type(value) is dict:
                    value = apply_mapping(value, mapping)
                built = fast(value, ingested_at) if type(value) is dict else None
                key, doc, created_at, needs_lang = built or checked(value, ingested_at)
            except DecodeError as exc:
                out.dead.append(
                    DeadLetter(
                        stage=STAGE,
                        reason="validation" if exc.field else "decode",
                        error=str(exc),
                        original=batch.original(index),
                        source=batch.origin_of(index),
                        failed_at=now,
                    )
                )
                out.rejected.append((index, exc))
                continue
            if dedup and not add(key):
                out.duplicates.append(index)
            elif needs_lang:
                deferred.append((key, doc, created_at, index))
            else:
                posts.append(Post(key.encode(), dumps(doc, option=WIRE_OPTIONS), created_at, index))

        if deferred:
            langs = self.detector.detect([doc["text"] for _, doc, _, _ in deferred])
            for (key, doc, created_at, index), lang in zip(deferred, langs, strict=True):
                doc["lang"] = lang
                posts.append(Post(key.encode(), encode_doc(doc), created_at, index))
            posts.sort(key=lambda post: post.position)
        return out
