"""The fast record builder keeps the wire contract: its bytes are exactly what the codec would emit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DecodeError, RawPost, decode, encode
from tests.factories import input_record
from workers.ingest.records import RecordBuilder, Replay, encode_doc, wire_time

NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def start_over(builder: RecordBuilder) -> None:
    """What the runner does between two passes over a looped file."""
    builder.replay = builder.replay.next_pass(builder.span)


def built_bytes(record: Any, builder: RecordBuilder | None = None) -> bytes:
    return encode_doc((builder or RecordBuilder()).build(record, NOW)[1])


def test_bytes_equal_the_codecs_encoding_of_the_same_post() -> None:
    data = built_bytes(input_record())
    post = decode(data, RawPost)
    assert encode(post) == data
    assert post.hashtags == ("acme",) and post.mentions == ("acmehelp",)
    assert post.urls == ("https://acme.example/p1",)
    assert post.ingested_at == NOW and post.created_at == datetime(2026, 11, 28, 11, 59, tzinfo=UTC)


def test_the_fast_and_the_careful_path_build_the_same_document() -> None:
    builder = RecordBuilder()
    first = builder.build(input_record(), NOW)  # first record of a builder takes the careful path
    second = builder.build(input_record(), NOW)
    assert type(first) is not type(second)  # a NamedTuple from the careful path, a tuple from the fast one
    assert first == second
    # a batch shares one pre-formatted ingest time; the bytes are the same
    assert encode_doc(builder.build(input_record(), wire_time(NOW))[1]) == encode_doc(first.doc)


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"id": None}, "id", "is required"),
        ({"id": ""}, "id", "must be 1 to 512"),
        ({"id": "x" * 513}, "id", "must be 1 to 512"),
        ({"platform": "Not Valid"}, "platform", "must be lower-case"),
        ({"platform": None}, "platform", "is required"),
        ({"author": "u1"}, "author", "expected an object"),
        ({"author": {"handle": "x"}}, "author.id", "is required"),
        ({"author": {"id": ""}}, "author.id", "must not be empty"),
        ({"text": 5}, "text", "expected a string"),
        ({"text": "x" * 100_001}, "text", "longer than 100000"),
        ({"created_at": "2026-11-28T11:59:00"}, "created_at", "no timezone"),
        ({"created_at": "yesterday"}, "created_at", "not an ISO 8601"),
        ({"created_at": None}, "created_at", "is required"),
        ({"url": 3.5}, "url", "expected a string"),
    ],
)
def test_invalid_records_raise_decode_errors_naming_the_field(
    overrides: dict[str, Any], field: str, problem: str
) -> None:
    builder = RecordBuilder()
    builder.build(input_record(), NOW)  # warm: the fast path must refuse these too
    with pytest.raises(DecodeError) as info:
        builder.build(input_record(**overrides), NOW)
    assert info.value.field == field
    assert problem in info.value.problem


def test_foreign_values_are_normalised_into_the_contract() -> None:
    record = input_record(
        id=1234567890123,
        author={"id": 42, "handle": "@ann"},
        lang="EN-gb",
        created_at=1795867140,
        text="  two\n\nlines  ",
    )
    post = decode(built_bytes(record), RawPost)
    assert (post.id, post.author.id, post.author.handle, post.lang) == ("1234567890123", "42", "ann", "en-gb")
    assert post.created_at == datetime(2026, 11, 28, 11, 59, tzinfo=UTC)
    assert post.text == "two lines"
    assert decode(built_bytes(input_record(created_at=1795867140000)), RawPost).created_at == post.created_at
    offset = decode(built_bytes(input_record(created_at="2026-11-28T12:59:00+01:00")), RawPost)
    assert offset.created_at == post.created_at and offset.created_at.tzinfo == UTC


def test_missing_language_is_flagged_for_detection() -> None:
    builder = RecordBuilder()
    assert builder.build(input_record(lang=None), NOW)[3]
    assert not builder.build(input_record(lang="de"), NOW)[3]
    assert builder.build(input_record(lang="not a tag!"), NOW)[3]
    assert builder.build(input_record(lang="not a tag!"), NOW)[3]  # and again, from the tag cache


def test_default_platform_applies_only_when_the_record_has_none() -> None:
    builder = RecordBuilder("twitter")
    assert builder.build(input_record(platform=None), NOW)[1]["platform"] == "twitter"
    assert builder.build(input_record(), NOW)[1]["platform"] == "test"
    with pytest.raises(ValueError):
        RecordBuilder("Bad Platform")


def test_a_looped_replay_gets_new_ids_and_later_event_times() -> None:
    builder = RecordBuilder()
    a = builder.build(input_record(id="a", created_at="2026-11-28T10:00:00Z"), NOW)
    b = builder.build(input_record(id="b", created_at="2026-11-28T10:10:00Z"), NOW)
    start_over(builder)
    a2 = builder.build(input_record(id="a", created_at="2026-11-28T10:00:00Z"), NOW)
    assert a2[0] == "a#1" and a2[1]["id"] == "a#1"
    assert a2[2] == b[2] + timedelta(seconds=1)
    assert a[2] < b[2] < a2[2]


def test_retime_moves_the_first_post_to_now() -> None:
    builder = RecordBuilder()
    builder.replay = builder.replay.retimed("run7")
    first = builder.build(input_record(id="a", created_at="2020-01-01T00:00:00Z"), NOW)
    later = builder.build(input_record(id="b", created_at="2020-01-01T00:00:05Z"), NOW)
    assert first[2] == NOW and later[2] == NOW + timedelta(seconds=5)
    assert (first[0], later[0]) == ("a~run7", "b~run7")  # another run of the file is new traffic
    start_over(builder)
    assert builder.build(input_record(id="a", created_at="2020-01-01T00:00:00Z"), NOW)[0] == "a~run7#1"


def test_a_replay_is_a_value_each_step_returns_the_next() -> None:
    first = datetime(2020, 1, 1, tzinfo=UTC)
    retimed = Replay().retimed("run7")
    assert (retimed.id_suffix, retimed.retime_pending, retimed.time_shift) == ("~run7", True, timedelta(0))
    started = retimed.started(first, NOW)
    assert started.time_shift == NOW - first and not started.retime_pending
    looped = started.next_pass(timedelta(minutes=10))  # the pass before spanned 10 minutes of event time
    assert (looped.id_suffix, looped.pass_number) == ("~run7#1", 1)
    assert looped.time_shift == NOW - first + timedelta(minutes=10, seconds=1)
    assert looped.next_pass(None).time_shift == looped.time_shift  # nothing built: no span to move past


def test_a_builder_builds_under_the_replay_it_was_given() -> None:
    builder = RecordBuilder(replay=Replay(time_shift=timedelta(hours=1), id_suffix="#2", pass_number=2))
    for _ in range(2):  # the careful path, then the fast one
        key, doc, created_at, _ = builder.build(input_record(id="a"), NOW)
        assert key == doc["id"] == "a#2"
        assert created_at == datetime(2026, 11, 28, 12, 59, tzinfo=UTC)


# Anything the builder accepts must be a valid RawPost whose canonical encoding is the builder's bytes.
_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["  a  b ", "#Tag @user https://u.rl/x.", "tab\there", "Cafe\u0301", "\u00a0nbsp\u2003", "x\x1fy", ""]
)
_ids = st.text(min_size=0, max_size=20) | st.integers(min_value=-(10**12), max_value=10**15)
_times = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)
_records = st.fixed_dictionaries(
    {
        "id": _ids,
        "author": st.fixed_dictionaries(
            {"id": _ids},
            optional={"handle": st.text(max_size=10) | st.none(), "display_name": st.none() | st.text()},
        ),
        "text": _text,
        "created_at": _times.map(lambda d: d.isoformat()),
    },
    optional={
        "platform": st.sampled_from(["bluesky", "mastodon", "x", "Bad", ""]),
        "lang": st.sampled_from(["en", "pt-BR", "und", "", "toolongtobeatag-xxxxxxxx", None]),
        "url": st.none() | st.text(max_size=10),
        "links": st.lists(st.sampled_from(["https://a.example/x", "ftp://b", 3, "http://c.example"])),
    },
)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(_records, min_size=1, max_size=4))
def test_whatever_the_builder_accepts_the_codec_accepts_byte_for_byte(records: list[dict[str, Any]]) -> None:
    builder = RecordBuilder("fallback")
    for record in records:  # several per builder, so the fast path runs after the first
        try:
            built = builder.build(record, NOW)
        except DecodeError:
            continue
        data = encode_doc(built[1])
        assert encode(decode(data, RawPost)) == data
        assert orjson.loads(data)["id"] == str(record["id"])


# -- the bulk path for JSON lines (msgspec): the same bytes as build + encode_doc, or it steps aside --

INGESTED = wire_time(NOW)


def test_the_wire_struct_keeps_the_contracts_field_order() -> None:
    from schemas.models import Author
    from workers.ingest.records import _LineAuthor, _Wire

    assert _Wire.__struct_fields__ == tuple(RawPost.model_fields)
    assert _LineAuthor.__struct_fields__ == tuple(Author.model_fields)


def test_canonical_lines_take_the_bulk_path_with_the_careful_paths_bytes() -> None:
    bulk, careful = RecordBuilder(), RecordBuilder()
    warm = orjson.dumps(input_record())
    assert bulk.lines([warm], INGESTED).rest == [0]  # the first record starts the builder's state
    bulk.build(orjson.loads(warm), INGESTED)
    careful.build(orjson.loads(warm), INGESTED)
    records = [
        input_record(id="a"),
        input_record(id="b", text="  Caf\u0065\u0301  #Tag\t@bob.bsky.social  ", author={"id": "u2"}),
        input_record(
            id="c", url="https://x.example/c", author={"id": "u3", "handle": None, "display_name": "Z"}
        ),
    ]
    lines = [orjson.dumps(r) for r in records]
    out = bulk.lines(lines, INGESTED)
    assert out.rest == [] and out.positions == [0, 1, 2] and out.keys == ["a", "b", "c"]
    for record, value, created_at in zip(records, out.values, out.created, strict=True):
        _, doc, expected_created, _ = careful.build(record, INGESTED)
        assert value == encode_doc(doc) and created_at == expected_created
        assert encode(decode(value, RawPost)) == value
    assert decode(out.values[1], RawPost).text == "Café #Tag @bob.bsky.social"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"not json",
        b"[1, 2]",
        orjson.dumps(input_record(id=7)),  # numeric ids: the careful path writes their decimal form
        orjson.dumps(input_record(author={"id": "u", "handle": "@ann"})),
        orjson.dumps(input_record(author={"id": ""})),
        orjson.dumps(input_record(lang=None)),  # needs detection
        orjson.dumps(input_record(lang=["de"])),
        orjson.dumps(input_record(lang="pt-BR")),  # a tag not seen yet
        orjson.dumps(input_record(platform="other")),  # a platform not checked yet
        orjson.dumps(input_record(created_at="2026-11-28T12:59:00+01:00")),
        orjson.dumps(input_record(created_at="2026-11-28T11:59:00")),
        orjson.dumps(input_record(created_at=1795867140)),
        orjson.dumps(input_record(links=["https://a.example/x"])),
        orjson.dumps(input_record(extra="ignored field")),
        orjson.dumps(input_record(text="x" * 100_001)),
        orjson.dumps(input_record(id="x" * 513)),
        b'{"id":"a","platform":"test","author":{"id":"u"},"text":"t","created_at":"2026-11-28T11:00:00Z",'
        b'"lang":"en","x":1e400}',  # orjson refuses this number: only the careful path may decide
    ],
)
def test_anything_unusual_is_left_to_the_careful_path(line: bytes) -> None:
    builder = RecordBuilder()
    builder.build(input_record(), INGESTED)
    assert builder.lines([line], INGESTED).rest == [0]


def test_the_bulk_path_follows_replays_ids_and_event_times() -> None:
    bulk, careful = RecordBuilder(), RecordBuilder()
    for b in (bulk, careful):
        b.build(input_record(id="a", created_at="2026-11-28T10:00:00Z"), INGESTED)
        b.build(input_record(id="b", created_at="2026-11-28T10:10:00Z"), INGESTED)
        start_over(b)
    line = orjson.dumps(input_record(id="a", created_at="2026-11-28T10:00:00Z"))
    out = bulk.lines([line], INGESTED)
    key, doc, created_at, _ = careful.build(orjson.loads(line), INGESTED)
    assert out.keys == [key] == ["a#1"] and out.created == [created_at]
    assert out.values == [encode_doc(doc)]
    bulk.replay = bulk.replay.retimed("r")
    assert bulk.lines([line], INGESTED).rest == [0]  # a pending retime is the careful path's to start


# Mostly canonical records (the general strategy above seldom is), with the awkward values kept.
_canonical = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=20) | _ids,
        "author": st.fixed_dictionaries(
            {"id": st.text(min_size=1, max_size=10)},
            optional={"handle": st.text(max_size=10) | st.none(), "display_name": st.none() | st.text()},
        ),
        "text": _text,
        "created_at": _times.map(lambda d: d.astimezone(UTC).isoformat().replace("+00:00", "Z"))
        | _times.map(lambda d: d.isoformat()),
        "lang": st.sampled_from(["en", "pt-BR", "und"]),
    },
    optional={
        "platform": st.sampled_from(["bluesky", "x", ""]),
        "url": st.none() | st.text(max_size=10),
    },
)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(_canonical | _records, min_size=1, max_size=6))
def test_whatever_the_bulk_path_accepts_is_byte_for_byte_what_build_writes(
    records: list[dict[str, Any]],
) -> None:
    bulk, careful = RecordBuilder("fallback"), RecordBuilder("fallback")
    for builder in (bulk, careful):  # the careful path learns platforms and tags: then lines go fast
        for platform, lang in [("bluesky", "en"), ("x", "pt-BR"), (None, "und")]:
            builder.build(input_record(platform=platform, lang=lang), INGESTED)
    for record in records:
        line = orjson.dumps(record)
        out = bulk.lines([line], INGESTED)
        if not out.rest:
            key, doc, created_at, needs_lang = careful.build(orjson.loads(line), INGESTED)
            assert not needs_lang
            assert out.keys == [key] and out.created == [created_at]
            assert out.values == [encode_doc(doc)]
            assert encode(decode(out.values[0], RawPost)) == out.values[0]
