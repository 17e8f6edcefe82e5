"""The ingest core: a batch of source records in, posts to publish and dead letters out. No I/O.

Sources hand over a ``Batch``: raw lines (bytes, parsed here) or ``Item``s (parsed by the source, or
known to be unreadable). ``Pipeline.process`` decodes, maps, normalises, validates, detects missing
languages in one call per batch and drops duplicates within the dedup window (counted, never silent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from schemas import DeadLetter, DecodeError
from workers.ingest.dedup import RecentIds
from workers.ingest.language import LanguageDetector
from workers.ingest.mapping import FieldMapping, apply_mapping
from workers.ingest.privacy import Privacy
from workers.ingest.records import WIRE_OPTIONS, RecordBuilder, encode_doc, wire_time

STAGE = "ingest"
VERSION_SEP = "\x1f"  # between a post id and its edit's time in a dedup key (ids hold no control chars)
_NOT_PARSED: Any = object()


@dataclass(slots=True)
class Item:
    """One record as a source received it: ``value`` is its parsed JSON, unless ``problem`` says why
    the source could not read it."""

    original: bytes
    value: Any = _NOT_PARSED
    origin: str | None = None  # overrides the batch's origin, e.g. a firehose message's URL
    problem: str | None = None
    deleted: str | None = None  # not a post: the platform deleted the post with this id


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
    """Posts to publish as parallel lists in batch order (``keys`` are the post ids: the record keys),
    dead letters, rejections and duplicates. ``posts`` gives the same posts as ``Post`` tuples."""

    keys: list[str] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    created: list[datetime] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # indexes in the batch
    dead: list[DeadLetter] = field(default_factory=list)
    rejected: list[tuple[int, DecodeError]] = field(default_factory=list)  # (index in batch, error)
    duplicates: list[int] = field(default_factory=list)  # indexes in the batch
    deletions: list[str] = field(default_factory=list)  # ids of deleted posts: tombstones to publish
    versions: dict[int, str] = field(default_factory=dict)  # batch index -> edited_at, for edits

    blank: int = 0  # empty or whitespace-only lines: not records, but counted (read = all of these)

    def dedup_key(self, post: Post) -> str:
        """What the dedup window remembers a post by: its id, and for an edit the version too."""
        key = post.key.decode()
        version = self.versions.get(post.position)
        return key if version is None else f"{key}{VERSION_SEP}{version}"

    @cached_property
    def posts(self) -> list[Post]:
        return [
            Post(key.encode(), value, created_at, position)
            for key, value, created_at, position in zip(
                self.keys, self.values, self.created, self.positions, strict=True
            )
        ]


class Pipeline:
    def __init__(
        self,
        builder: RecordBuilder,
        detector: LanguageDetector,
        dedup: RecentIds,
        mapping: FieldMapping | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        privacy: Privacy | None = None,
    ) -> None:
        self.builder = builder
        self.detector = detector
        self.dedup = dedup
        self.mapping = mapping
        self.clock = clock
        self.privacy = privacy if privacy is not None and privacy.active else None

    def process(self, batch: Batch, dedup: bool = True) -> Outcome:
        """Posts to publish (in batch order), dead letters, duplicates. ``dedup=False`` leaves the window
        untouched: the caller decides later (the HTTP source, once the whole request is valid)."""
        now = self.clock()
        ingested_at = wire_time(now)  # one per batch, formatted once
        records = batch.records
        if self.mapping is None:
            # canonical JSON lines in bulk; the rest (other layouts, Items, anything invalid) one by one
            keys, values, created, positions, rest = self.builder.lines(records, ingested_at)
        else:
            keys, values, created, positions, rest = [], [], [], [], list(range(len(records)))
        out = Outcome()
        careful = self._careful(batch, rest, ingested_at, now, out) if rest else None
        if careful:
            # interleave with the bulk path's posts; None values wait for language detection
            merged = sorted(
                [
                    *zip(positions, keys, values, created, strict=True),
                    *((p, k, v, c) for p, k, v, c, _ in careful),
                ],
                key=itemgetter(0),
            )
            positions = [m[0] for m in merged]
            keys = [m[1] for m in merged]
            values = [m[2] for m in merged]  # type: ignore[misc]
            created = [m[3] for m in merged]
        if self.privacy is not None and keys:
            self._make_private(keys, values, positions, careful or [])
        # An edit (a new version of a post: ``edited_at`` set) is not a duplicate of the post: its
        # dedup key names the version, so the same edit delivered twice still is one.
        out.versions = {
            p: wire_time(doc["edited_at"]) for p, _, _, _, doc in careful or () if doc["edited_at"]
        }
        if dedup and keys:
            versions = out.versions
            repeated = self.dedup.add_batch(
                [
                    f"{k}{VERSION_SEP}{versions[p]}" if p in versions else k
                    for k, p in zip(keys, positions, strict=True)
                ]
                if versions
                else keys
            )
            if repeated:
                drop = set(repeated)
                out.duplicates = [positions[i] for i in repeated]
                keep = [i for i in range(len(keys)) if i not in drop]
                keys = [keys[i] for i in keep]
                values = [values[i] for i in keep]
                created = [created[i] for i in keep]
                positions = [positions[i] for i in keep]
        if careful:
            docs = {p: doc for p, _, v, _, doc in careful if v is None}
            waiting = [i for i, value in enumerate(values) if value is None]
            if waiting:
                langs = self.detector.detect([docs[positions[i]]["text"] for i in waiting])
                for i, lang in zip(waiting, langs, strict=True):
                    doc = docs[positions[i]]
                    doc["lang"] = lang
                    values[i] = encode_doc(doc)
        out.keys, out.values, out.created, out.positions = keys, values, created, positions
        return out

    def _make_private(
        self,
        keys: list[str],
        values: list[Any],  # bytes, or None where language detection is still to come
        positions: list[int],
        careful: list[tuple[int, str, bytes | None, datetime, dict[str, Any]]],
    ) -> None:
        """``PRIVACY__*`` applied to every post, in place, before dedup (which then sees the ids as
        published: a restarted ingest's window, warmed from the topic, holds those)."""
        assert self.privacy is not None
        waiting = {p: doc for p, _, v, _, doc in careful if v is None}
        for i, value in enumerate(values):
            if value is None:  # encoded after language detection (from the redacted text)
                doc = self.privacy.apply(waiting[positions[i]])
            else:
                doc = self.privacy.apply(orjson.loads(value))
                values[i] = encode_doc(doc)
            keys[i] = doc["id"]

    def _careful(
        self, batch: Batch, indexes: Iterable[int], ingested_at: str, now: datetime, out: Outcome
    ) -> list[tuple[int, str, bytes | None, datetime, dict[str, Any]]]:
        """Records one at a time: parse, map, build (fast dict path or careful checks). Failures become
        dead letters in ``out``; a post without a language has no bytes yet (None) until detection."""
        built_posts: list[tuple[int, str, bytes | None, datetime, dict[str, Any]]] = []
        fast, checked = self.builder.fast, self.builder.checked
        mapping = self.mapping
        loads, dumps = orjson.loads, orjson.dumps
        records = batch.records
        for index in indexes:
            record = records[index]
            try:
                if type(record) is bytes:
                    if not record.strip():
                        out.blank += 1  # a blank line is not a record
                        continue
                    try:
                        value = loads(record)
                    except orjson.JSONDecodeError as exc:
                        raise DecodeError("RawPost", "", f"not valid JSON ({exc})") from None
                else:
                    assert isinstance(record, Item)
                    if record.deleted is not None:
                        deleted = record.deleted
                        out.deletions.append(self.privacy.deleted_id(deleted) if self.privacy else deleted)
                        continue
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
            value_bytes = None if needs_lang else dumps(doc, option=WIRE_OPTIONS)
            built_posts.append((index, key, value_bytes, created_at, doc))
        return built_posts
