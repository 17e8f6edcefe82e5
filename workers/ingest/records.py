"""Canonical input records → RawPost wire bytes, without a pydantic model per record.

``build`` checks every constraint of ``schemas.RawPost`` itself and emits exactly the bytes
``schemas.encode`` would for the same post (field order, UTC 'Z' timestamps, nulls, lists); the unit
tests pin both against the codec. Per-record pydantic validation costs more than everything else in
ingest together, and this keeps the contract without it. A record that fails a check raises the
codec's own ``DecodeError`` naming the field, which ingest turns into a dead letter.

``lines`` is the bulk path for JSON Lines in the canonical layout: msgspec decodes each line straight
into a typed struct (the type checks happen while parsing) and encodes the wire struct, about three
times cheaper than orjson into dicts and back. It only ever accepts; whatever it is unsure about is
left to ``build``, which decides and names what is wrong. Both produce the same bytes (unit-tested).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import orjson

from schemas import MAX_ID_LENGTH, MAX_PLATFORM_LENGTH, MAX_TEXT_LENGTH, PLATFORM_PATTERN, DecodeError
from workers.ingest.normalise import (
    extract_hashtags,
    extract_mentions,
    extract_urls,
    normalise_lang,
    normalise_text,
)

_PLATFORM = re.compile(PLATFORM_PATTERN)
WIRE_OPTIONS = orjson.OPT_UTC_Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _LineAuthor(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """Also the wire form of an author (every field is written, nulls included, in this order): the bulk
    path only accepts authors it can publish as they came."""

    id: str
    handle: str | None = None
    display_name: str | None = None


class _Line(msgspec.Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """The canonical input layout with exact JSON types. Anything else (numeric ids, a list of languages,
    source ``links``, fields this stage ignores) fails to decode here and takes the careful path, so the
    lines this accepts are exactly lines orjson parses to the same values (it has no field that could
    hold a number or a deep nesting, where the two parsers differ)."""

    # in the order sources usually write them: msgspec tries the next field first
    id: str
    platform: str | None = None
    author: _LineAuthor
    text: str
    created_at: str
    lang: str | None = None
    url: str | None = None


class _Wire(msgspec.Struct, gc=False):
    """``RawPost`` in its field order; msgspec writes strings, nulls, arrays and UTC datetimes exactly as
    orjson does (unit-tested against the codec)."""

    schema_version: int
    id: str
    platform: str
    author: _LineAuthor
    text: str
    lang: str
    created_at: datetime
    ingested_at: str
    url: str | None
    urls: tuple[str, ...]
    mentions: tuple[str, ...]
    hashtags: tuple[str, ...]
    edited_at: None = None  # the bulk path builds first versions only (an edit takes the careful path)


_decode_line = msgspec.json.Decoder(_Line).decode
_encode_wire = msgspec.json.Encoder().encode
_LINE_ERRORS = (msgspec.DecodeError, ValueError, RecursionError)  # ValueError: invalid UTF-8


class Lines(NamedTuple):
    """What ``RecordBuilder.lines`` built, in batch order, and the indexes it left to the careful path."""

    keys: list[str]
    values: list[bytes]
    created: list[datetime]
    positions: list[int]
    rest: list[int]


def _fail(field: str, problem: str) -> DecodeError:
    return DecodeError("RawPost", field, problem)


class Built(NamedTuple):
    """A post ready to publish, except for its language when the source did not give one.

    (The fast path returns a plain tuple of the same shape: building a NamedTuple costs more.)
    """

    key: str
    doc: dict[str, Any]  # the wire document, in RawPost field order
    created_at: datetime
    needs_lang: bool


def encode_doc(doc: dict[str, Any]) -> bytes:
    """The wire bytes of a built document: what ``schemas.encode`` gives for the same RawPost."""
    return orjson.dumps(doc, option=WIRE_OPTIONS)


def wire_time(value: datetime) -> str:
    """A UTC datetime as the codec writes it (RFC 3339, 'Z', microseconds only when non-zero)."""
    return orjson.dumps(value, option=WIRE_OPTIONS)[1:-1].decode()


def json_type(value: Any) -> str:
    """What a sender wrote, in JSON's words (error texts say 'got null', not 'got NoneType')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return (
        "an array"
        if isinstance(value, list | tuple)
        else "an object"
        if isinstance(value, Mapping)
        else "a value"
    )


def _string(value: Any, field: str, *, required: bool, numeric: bool = False) -> str | None:
    """A string field; ``numeric``: an integer is taken as its decimal form (ids only)."""
    if value is None:
        if required:
            raise _fail(field, "is required")
        return None
    if isinstance(value, str):
        return value
    # Foreign layouts often carry numeric ids (tweet ids, account ids); their decimal form is the id.
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _fail(field, f"expected a string, got {json_type(value)}")


def _printable(value: str | None, field: str) -> str | None:
    """Ids and handles become Kafka keys and Redis members: no control characters (NUL, ESC, newlines)."""
    if value is not None and not value.isprintable() and any(unicodedata.category(c) == "Cc" for c in value):
        raise _fail(field, "must not contain control characters")
    return value


_URL_UNSAFE = frozenset('<>"\\ ')


def _plain_https(url: str) -> bool:
    """The common case the fast paths take as is: ``https://host…``, printable, nothing unsafe."""
    return (
        9 <= len(url) <= 2048
        and url[:8] == "https://"
        and url[8] not in "/?#"
        and url.isprintable()
        and _URL_UNSAFE.isdisjoint(url)
    )


def _http_url(value: str | None) -> str | None:
    """A permalink is an absolute http(s) URL: ``javascript:``, ``data:`` or markup never reaches a
    dashboard's link."""
    if value is None:
        return None
    parts = urlsplit(value) if len(value) <= 2048 else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or any(c in value for c in r'<>"\ ')
    ):
        raise _fail("url", "expected an absolute http(s) URL of at most 2048 characters")
    return value


def parse_time(value: Any, field: str) -> datetime:
    """RFC 3339 / ISO 8601 with an offset, or Unix epoch seconds (milliseconds when it is that large)."""
    if isinstance(value, str):
        if value[:1].isdigit() and value.isascii() and value.replace(".", "", 1).isdigit():
            return parse_time(float(value) if "." in value else int(value), field)  # CSV epoch columns
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _fail(field, f"not an ISO 8601 timestamp: {value[:40]!r}") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise _fail(field, "timestamp has no timezone offset (add 'Z' or '+00:00')")
        return parsed.astimezone(UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= 100_000_000_000 else value
        try:
            return _EPOCH + timedelta(seconds=seconds)
        except OverflowError:
            raise _fail(field, f"epoch value out of range: {value}") from None
    if value is None:
        raise _fail(field, "is required")
    raise _fail(field, f"expected a timestamp, got {json_type(value)}")


def source_links(value: Any) -> tuple[str, ...]:
    """Links the source knows in full (Bluesky facets; the text shows them shortened): http(s) only."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v.startswith(("https://", "http://")))


def _merge(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(first + second)) if first else second


@dataclass(frozen=True, slots=True)
class Replay:
    """Where a replay of a recorded file stands (``--retime``, ``--loop``): how far event times move,
    what every id gets appended, which pass over the file this is. Live sources keep ``Replay()``."""

    time_shift: timedelta = timedelta(0)
    id_suffix: str = ""  # a new id per pass of a looped file, per run of a retimed one
    run_suffix: str = ""  # ``~run`` of a retimed run: every pass's suffix starts with it
    pass_number: int = 0  # 0: the first pass over the file
    retime_pending: bool = False  # the first record built sets the shift, so it happens at ingest time

    def retimed(self, run: str) -> Replay:
        """Replay as new traffic: event times start now, and ids get ``~run`` so another run of the same
        file is new posts too (a plain replay keeps its ids, and dedup drops what was published)."""
        run_suffix = f"~{run}"
        return replace(
            self, run_suffix=run_suffix, id_suffix=run_suffix + self.id_suffix, retime_pending=True
        )

    def started(self, first: datetime, now: datetime) -> Replay:
        """The pending retime done: the record that happened at ``first`` happens ``now``."""
        return replace(self, time_shift=now - first, retime_pending=False)

    def next_pass(self, span: timedelta | None) -> Replay:
        """A looped replay starts over: new ids, and event times moved past the previous pass, whose
        records spanned ``span`` of event time (None: it built none)."""
        number = self.pass_number + 1
        shift = self.time_shift if span is None else self.time_shift + span + timedelta(seconds=1)
        return replace(self, pass_number=number, id_suffix=f"{self.run_suffix}#{number}", time_shift=shift)


class RecordBuilder:
    """Builds wire documents from canonical input records (see ``workers.ingest.mapping``)."""

    def __init__(self, default_platform: str | None = None, *, replay: Replay | None = None) -> None:
        if default_platform is not None and not _PLATFORM.match(default_platform):
            raise ValueError(f"platform {default_platform!r} must match {_PLATFORM.pattern}")
        self.default_platform = default_platform
        self._platforms: set[str] = set()  # platforms already checked: a handful per process
        self._lang_cache: dict[str, str | None] = {}  # source language tags seen, normalised: a few dozen
        self._first: datetime | None = None  # event-time span of the records built so far (unshifted)
        self._last: datetime | None = None
        self.replay = Replay() if replay is None else replay

    @property
    def replay(self) -> Replay:
        """The replay state every record is built under; set a new value to change it."""
        return self._replay

    @replay.setter
    def replay(self, replay: Replay) -> None:
        self._replay = replay
        # ``fast`` runs once per record: it reads these plain attributes, not a chain through the value.
        self._shift = replay.time_shift
        self._suffix = replay.id_suffix
        self._retime_pending = replay.retime_pending

    @property
    def span(self) -> timedelta | None:
        """Event time from the earliest to the latest record built so far, unshifted (None: none yet)."""
        if self._first is None or self._last is None:
            return None
        return self._last - self._first

    def build(self, record: Any, ingested_at: datetime | str) -> Built:
        """The wire document for ``record``, or ``DecodeError`` naming the offending field.

        ``ingested_at`` may be given pre-formatted (``wire_time``): a batch shares one.
        """
        if type(record) is dict:
            built = self.fast(record, ingested_at)
            if built is not None:
                return built  # type: ignore[return-value]
        return self.checked(record, ingested_at)

    def lines(self, records: Sequence[object], ingested_at: str) -> Lines:
        """``build`` + ``encode_doc`` for every record that is a JSON line in the canonical layout with a
        known language; the indexes of all others (not bytes, not canonical, not valid, no language,
        anything unusual) are left in ``rest`` for the careful path, which decides and names problems."""
        keys: list[str] = []
        values: list[bytes] = []
        created: list[datetime] = []
        positions: list[int] = []
        rest: list[int] = []
        last = self._last
        if last is None or self._retime_pending:  # the careful path starts the span / the retime
            return Lines(keys, values, created, positions, list(range(len(records))))
        platforms, langs = self._platforms, self._lang_cache
        default_platform, suffix, shift = self.default_platform, self._suffix, self._shift
        decode, encode, fromiso = _decode_line, _encode_wire, datetime.fromisoformat
        is_normalized = unicodedata.is_normalized
        for index, line in enumerate(records):
            if type(line) is not bytes:
                rest.append(index)
                continue
            try:
                record = decode(line)
            except _LINE_ERRORS:
                rest.append(index)  # blank, not JSON, not canonical: orjson and ``build`` decide
                continue
            author = record.author
            platform = record.platform or default_platform
            lang = langs.get(record.lang)  # type: ignore[arg-type]  # None: absent, unseen or not a tag
            handle = author.handle
            post_id = record.id + suffix if suffix else record.id
            if (
                lang is None
                or platform not in platforms
                or not author.id
                or not 0 < len(post_id) <= MAX_ID_LENGTH
                or (handle is not None and (handle[:1] == "@" or not handle.isprintable()))
                or not (post_id.isprintable() and author.id.isprintable())
                or (author.display_name is not None and not author.display_name.isprintable())
                or (record.url is not None and not _plain_https(record.url))
            ):
                rest.append(index)  # the careful path decides, and names what is wrong
                continue
            try:
                created_at = fromiso(record.created_at)
            except ValueError:
                rest.append(index)
                continue
            if created_at.tzinfo is not UTC:
                rest.append(index)
                continue
            if created_at > last:
                last = created_at
            if shift:
                created_at += shift
            text = record.text
            # Printable text (any script) has no whitespace but ' ' (checked for every code point), so
            # text already in NFC without doubled or outer spaces is normalised as it is: most posts.
            if (
                not (text.isprintable() and (text.isascii() or is_normalized("NFC", text)))
                or "  " in text
                or len(text.strip(" ")) != len(text)
            ):
                text = normalise_text(text)
            if len(text) > MAX_TEXT_LENGTH:
                rest.append(index)
                continue
            keys.append(post_id)
            values.append(
                encode(
                    _Wire(
                        1,
                        post_id,
                        platform,
                        author,
                        text,
                        lang,
                        created_at,
                        ingested_at,
                        record.url,
                        extract_urls(text) if "://" in text else (),
                        extract_mentions(text) if "@" in text else (),
                        extract_hashtags(text) if "#" in text else (),
                    )
                )
            )
            created.append(created_at)
            positions.append(index)
        self._last = last
        return Lines(keys, values, created, positions, rest)

    def fast(
        self, record: dict[str, Any], ingested_at: datetime | str
    ) -> tuple[str, dict[str, Any], datetime, bool] | None:
        """``build`` for the common case, or None: then ``build`` decides (and names what is wrong)."""
        # The common case, with exact type checks and no helper calls; anything unusual (numbers
        # for ids, offsets other than UTC, missing fields, '@handle') returns None for checked,
        # which decides carefully and says what is wrong. Both paths produce the same document.
        try:
            post_id = record["id"]
            author = record["author"]
            text = record["text"]
            created = record["created_at"]
            author_id = author["id"]
        except (KeyError, TypeError):
            return None
        platform = record.get("platform") or self.default_platform
        if "links" in record or "edited_at" in record:
            return None  # source-given links (merged) and edits (checked): the careful path
        if not (
            type(post_id) is str
            and type(text) is str
            and type(created) is str
            and type(author_id) is str
            and type(platform) is str
            and platform in self._platforms
            and self._last is not None
            and not self._retime_pending
            and author_id
            and type(author) is dict
        ):
            return None
        if self._suffix:
            post_id += self._suffix
        if not (0 < len(post_id) <= MAX_ID_LENGTH and post_id.isprintable() and author_id.isprintable()):
            return None  # the careful path says what is wrong
        handle = author.get("handle")
        display_name = author.get("display_name")
        if not (
            (handle is None or (type(handle) is str and handle[:1] != "@" and handle.isprintable()))
            and (display_name is None or (type(display_name) is str and display_name.isprintable()))
        ):
            return None
        lang = record.get("lang")
        if lang is not None:
            if type(lang) is not str or lang not in self._lang_cache:
                return None
            lang = self._lang_cache[lang]
        url = record.get("url")
        if url is not None and not (type(url) is str and _plain_https(url)):
            return None  # anything but a plain https link: the careful path checks it
        try:
            created_at = datetime.fromisoformat(created)
        except ValueError:
            return None
        if created_at.tzinfo is not UTC:
            return None
        if created_at > self._last:
            self._last = created_at
        if self._shift:
            created_at += self._shift

        if text.isascii() and text.isprintable():
            # printable ASCII has no whitespace but ' ', so only doubled or outer spaces need collapsing
            if "  " in text or text[:1] == " " or text[-1:] == " ":
                text = " ".join(text.split())
        else:
            text = normalise_text(text)
        if len(text) > MAX_TEXT_LENGTH:
            return None
        doc = {
            "schema_version": 1,
            "id": post_id,
            "platform": platform,
            "author": {"id": author_id, "handle": handle, "display_name": display_name},
            "text": text,
            "lang": lang or "und",
            "created_at": created_at,
            "ingested_at": ingested_at,
            "url": url,
            "urls": extract_urls(text) if "://" in text else (),
            "mentions": extract_mentions(text) if "@" in text else (),
            "hashtags": extract_hashtags(text) if "#" in text else (),
            "edited_at": None,
        }
        return post_id, doc, created_at, lang is None

    def checked(self, record: Any, ingested_at: datetime | str) -> Built:
        if not isinstance(record, Mapping):
            raise DecodeError("RawPost", "", f"expected a JSON object, got {json_type(record)}")
        get = record.get

        post_id = _printable(_string(get("id"), "id", required=True, numeric=True), "id")
        assert post_id is not None
        if self._suffix:
            post_id += self._suffix
        if not post_id or len(post_id) > MAX_ID_LENGTH:
            raise _fail("id", f"must be 1 to {MAX_ID_LENGTH} characters, got {len(post_id)}")

        platform = get("platform") or self.default_platform
        if not isinstance(platform, str) or platform not in self._platforms:
            if platform is None:
                raise _fail("platform", "is required (or give the source a default platform)")
            if (
                not isinstance(platform, str)
                or len(platform) > MAX_PLATFORM_LENGTH
                or not _PLATFORM.match(platform)
            ):
                raise _fail(
                    "platform",
                    f"must be lower-case [a-z0-9_.-], up to {MAX_PLATFORM_LENGTH} characters: {platform!r}",
                )
            self._platforms.add(platform)

        author = get("author")
        if isinstance(author, Mapping):
            author_id = _printable(
                _string(author.get("id"), "author.id", required=True, numeric=True), "author.id"
            )
            handle = _printable(
                _string(author.get("handle"), "author.handle", required=False), "author.handle"
            )
            display_name = _string(author.get("display_name"), "author.display_name", required=False)
            if display_name is not None:
                display_name = normalise_text(display_name)
        elif author is None:
            raise _fail("author", "is required")
        else:
            raise _fail("author", f"expected an object with an id, got {json_type(author)}")
        if not author_id:
            raise _fail("author.id", "must not be empty")
        if handle is not None and handle.startswith("@"):
            handle = handle[1:]

        text = get("text")
        if not isinstance(text, str):
            raise _fail(
                "text", "is required" if text is None else f"expected a string, got {json_type(text)}"
            )
        text = normalise_text(text)
        if len(text) > MAX_TEXT_LENGTH:
            raise _fail("text", f"longer than {MAX_TEXT_LENGTH} characters ({len(text)})")

        raw_lang = get("lang")
        lang = normalise_lang(raw_lang)
        if isinstance(raw_lang, str) and len(self._lang_cache) < 10_000:
            self._lang_cache[raw_lang] = lang
        created_at = parse_time(get("created_at"), "created_at")
        if self._first is None or self._last is None:
            self._first = self._last = created_at
        elif created_at > self._last:
            self._last = created_at
        if self._retime_pending:
            now = ingested_at if isinstance(ingested_at, datetime) else datetime.fromisoformat(ingested_at)
            self.replay = self._replay.started(created_at, now)
        if self._shift:
            created_at += self._shift

        url = _http_url(_string(get("url"), "url", required=False))

        doc = {
            "schema_version": 1,
            "id": post_id,
            "platform": platform,
            "author": {"id": author_id, "handle": handle, "display_name": display_name},
            "text": text,
            "lang": lang or "und",
            "created_at": created_at,
            "ingested_at": ingested_at,
            "url": url,
            "urls": _merge(source_links(get("links")), extract_urls(text)),
            "mentions": extract_mentions(text),
            "hashtags": extract_hashtags(text),
            "edited_at": None if get("edited_at") is None else parse_time(get("edited_at"), "edited_at"),
        }
        return Built(post_id, doc, created_at, lang is None)
