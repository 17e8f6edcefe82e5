"""The wire contract: round-trips, clear rejections, and JSON Schema files pinned to the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import MESSAGES, DeadLetter, DecodeError, EnrichedPost, RawPost, decode, encode
from schemas.export import file_for, render, schema_for
from tests.factories import (
    alert_factory,
    dead_letter_factory,
    enriched_factory,
    post_factory,
    snapshot_factory,
)

FACTORIES = {
    "raw_post": post_factory,
    "enriched_post": enriched_factory,
    "trend_snapshot": snapshot_factory,
    "alert": alert_factory,
    "dead_letter": dead_letter_factory,
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_schema_files_match_the_models(name: str) -> None:
    # A contract change must be deliberate: regenerate with `python -m schemas.export` and commit.
    assert file_for(name).read_bytes() == render(name), f"run python -m schemas.export ({name} drifted)"


def check(doc: object, schema: dict) -> None:
    """Validate with the schema's own draft and its format checker ("date-time" included)."""
    validator = jsonschema.validators.validator_for(schema)
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(doc)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_encoded_messages_validate_against_their_json_schema(name: str) -> None:
    message = FACTORIES[name]()
    # With the format checker, "format": "date-time" is checked too (rfc3339-validator, in `dev`).
    check(orjson.loads(encode(message)), schema_for(name))


def test_the_format_checker_really_checks_date_times() -> None:
    doc = orjson.loads(encode(FACTORIES["raw_post"]()))
    doc["created_at"] = "yesterday at noon"
    with pytest.raises(jsonschema.ValidationError, match="date-time"):
        check(doc, schema_for("raw_post"))


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_carries_schema_version(name: str) -> None:
    # The versions on the wire, pinned: raising one is a deliberate contract change (see docs/contract.md).
    version = {"raw_post": 1, "enriched_post": 1, "trend_snapshot": 1, "alert": 2, "dead_letter": 1}[name]
    doc = orjson.loads(encode(FACTORIES[name]()))
    assert doc["schema_version"] == version
    assert schema_for(name)["properties"]["schema_version"]["const"] == version


def test_timestamps_are_utc_on_the_wire_and_in_python() -> None:
    plus_two = timezone(timedelta(hours=2))
    post = post_factory(created_at=datetime(2026, 1, 1, 14, 0, tzinfo=plus_two))
    assert post.created_at.utcoffset() == timedelta(0)
    assert post.created_at.hour == 12
    assert orjson.loads(encode(post))["created_at"] == "2026-01-01T12:00:00Z"


def test_naive_timestamps_are_rejected() -> None:
    doc = orjson.loads(encode(post_factory()))
    doc["created_at"] = "2026-01-01T12:00:00"
    with pytest.raises(DecodeError) as info:
        decode(orjson.dumps(doc), RawPost)
    assert info.value.field == "created_at"
    assert "timezone" in info.value.problem


def test_dead_letter_bytes_survive_as_base64() -> None:
    raw = bytes(range(256))
    letter = dead_letter_factory(original=raw, key=b"\x00\xff")
    wire = orjson.loads(encode(letter))
    assert isinstance(wire["original"], str)
    back = decode(encode(letter), DeadLetter)
    assert back.original == raw
    assert back.key == b"\x00\xff"


def test_bad_base64_names_the_field() -> None:
    doc = orjson.loads(encode(dead_letter_factory()))
    doc["original"] = "not base64!!"
    with pytest.raises(DecodeError, match="field 'original'"):
        decode(orjson.dumps(doc), DeadLetter)


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d.pop("text"), "text", "is required"),
        (lambda d: d.update(id=""), "id", "at least 1 character"),
        (lambda d: d.update(platform="Not A Platform"), "platform", "should match pattern"),
        (lambda d: d["author"].update(id=7), "author.id", "valid string"),
        (lambda d: d.update(created_at="yesterday"), "created_at", "datetime"),
        (lambda d: d.update(surprise=1), "surprise", "not a known field"),
        (lambda d: d.update(schema_version=2), "schema_version", "input should be 1"),
    ],
)
def test_invalid_raw_posts_name_the_field_and_problem(mutate, field: str, problem: str) -> None:
    doc = orjson.loads(encode(post_factory()))
    mutate(doc)
    with pytest.raises(DecodeError) as info:
        decode(orjson.dumps(doc), RawPost)
    assert info.value.field == field
    assert problem in info.value.problem
    assert str(info.value).startswith(f"invalid RawPost: field '{field}'")


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"42", b"\xff\xfe", b'"text"'])
def test_garbage_is_one_error_type(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data, RawPost)
    assert info.value.field == ""


# ---- property-based -------------------------------------------------------------------------------

texts = st.text(max_size=300)
tags = st.lists(st.text(min_size=1, max_size=20), max_size=5).map(tuple)
aware = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]),
)


@st.composite
def raw_posts(draw: st.DrawFn) -> RawPost:
    return post_factory(
        id=draw(st.text(min_size=1, max_size=60)),
        platform=draw(st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,15}", fullmatch=True)),
        text=draw(texts),
        lang=draw(st.sampled_from(["en", "und", "pt-BR", "ja"])),
        created_at=draw(aware),
        hashtags=draw(tags),
        mentions=draw(tags),
    )


@given(raw_posts())
@settings(max_examples=200, deadline=None)
def test_raw_posts_round_trip(post: RawPost) -> None:
    assert decode(encode(post), RawPost) == post


@given(raw_posts(), st.floats(min_value=0, max_value=1), st.text(min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_enriched_posts_round_trip(post: RawPost, score: float, label: str) -> None:
    enriched = enriched_factory(post=post, sentiment={"label": label, "scores": {label: score}})
    assert decode(encode(enriched), EnrichedPost) == enriched


@given(st.binary(max_size=500), st.one_of(st.none(), st.binary(max_size=50)))
@settings(max_examples=100, deadline=None)
def test_dead_letters_round_trip_any_bytes(original: bytes, key: bytes | None) -> None:
    letter = dead_letter_factory(original=original, key=key)
    assert decode(encode(letter), DeadLetter) == letter


@given(
    st.sampled_from(["id", "platform", "author", "text", "created_at", "ingested_at"]),
    st.one_of(
        st.none(), st.integers(-(2**63), 2**63 - 1), st.lists(st.integers(0, 9), max_size=2), st.just("")
    ),
)
@settings(max_examples=150, deadline=None)
def test_wrong_types_are_rejected_naming_the_field(field: str, bad: object) -> None:
    doc = orjson.loads(encode(post_factory()))
    doc[field] = bad
    if field == "text" and bad == "":
        return  # the empty text is a valid post
    with pytest.raises(DecodeError) as info:
        decode(orjson.dumps(doc), RawPost)
    assert info.value.field.split(".")[0] == field
    assert info.value.problem
