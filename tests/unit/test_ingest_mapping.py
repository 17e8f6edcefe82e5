"""Field mapping for foreign layouts."""

from __future__ import annotations

import pytest

from workers.ingest.mapping import apply_mapping, parse_mapping


def test_mapping_specs_parse_repeated_and_comma_separated() -> None:
    assert parse_mapping(["text=full_text, id=id_str", "author.handle=user.screen_name"]) == {
        "text": "full_text",
        "id": "id_str",
        "author.handle": "user.screen_name",
    }


@pytest.mark.parametrize("spec", ["text", "text=", "body=text", "author.name=user"])
def test_bad_mapping_specs_say_what_is_wrong(spec: str) -> None:
    with pytest.raises(ValueError, match="field mapping"):
        parse_mapping([spec])


def test_foreign_tweet_layout_maps_to_the_canonical_record() -> None:
    tweet = {
        "id_str": "123",
        "full_text": "hello",
        "lang": "en",
        "created_at": "2026-11-28T10:00:00Z",
        "user": {"id_str": "42", "screen_name": "jack"},
        "entities": {},
    }
    mapping = parse_mapping(["id=id_str,text=full_text,author.id=user.id_str,author.handle=user.screen_name"])
    assert apply_mapping(tweet, mapping) == {
        "id": "123",
        "text": "hello",
        "lang": "en",
        "created_at": "2026-11-28T10:00:00Z",
        "author": {"id": "42", "handle": "jack"},
    }


def test_flat_csv_columns_with_dots_map_without_a_mapping() -> None:
    row = {"id": "1", "author.id": "u1", "text": "t", "created_at": "1764324000", "url": ""}
    assert apply_mapping(row, {}) == {
        "id": "1",
        "author": {"id": "u1"},
        "text": "t",
        "created_at": "1764324000",
    }
