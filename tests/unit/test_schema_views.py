"""The hot-path views read the same values the models do, and reject what the models reject."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DecodeError, EnrichedPost, decode, encode
from schemas.views import read_enriched
from tests.factories import enriched_factory, post_factory


def test_the_view_of_an_enriched_post_carries_the_models_values() -> None:
    model = enriched_factory(post_factory(hashtags=("acme", "deals"), lang="de"))
    view = read_enriched(encode(model))
    post = model.post
    assert (view.post.id, view.post.platform, view.post.text, view.post.lang) == (
        post.id, post.platform, post.text, post.lang,
    )  # fmt: skip
    assert view.post.created_at == post.created_at and view.post.hashtags == post.hashtags
    assert (view.post.author.id, view.post.author.handle) == (post.author.id, post.author.handle)
    assert (view.sentiment.label, view.sentiment.scores) == (model.sentiment.label, model.sentiment.scores)
    assert [(e.type, e.normalized) for e in view.entities] == [(e.type, e.normalized) for e in model.entities]
    assert [(m.term, m.kind) for m in view.matches] == [(m.term, m.kind) for m in model.matches]


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200), st.lists(st.text(min_size=1, max_size=20), max_size=5))
def test_any_valid_record_reads_the_same_through_view_and_model(text: str, tags: list[str]) -> None:
    data = encode(enriched_factory(post_factory(text=text, hashtags=tuple(tags))))
    view, model = read_enriched(data), decode(data, EnrichedPost)
    assert (view.post.text, view.post.hashtags) == (model.post.text, model.post.hashtags)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["post"].pop("created_at"), "post.created_at"),
        (lambda d: d.pop("sentiment"), "sentiment"),
        (lambda d: d["post"].update(id=12), "post.id"),
        (lambda d: d["sentiment"].update(label=None), "sentiment.label"),
        (lambda d: d["matches"][0].update(term=3), "matches.0.term"),
        (lambda d: d["post"].update(created_at="yesterday"), "post.created_at"),
        (lambda d: d.update(schema_version=2), "schema_version"),
    ],
)
def test_records_the_model_rejects_are_rejected_naming_the_field(change: object, field: str) -> None:
    doc = orjson.loads(encode(enriched_factory()))
    change(doc)  # type: ignore[operator]
    data = orjson.dumps(doc)
    with pytest.raises(DecodeError) as info:
        read_enriched(data)
    assert info.value.field == field
    with pytest.raises(DecodeError):
        decode(data, EnrichedPost)


def test_empty_and_non_json_records_are_decode_errors() -> None:
    for data in (None, b"", b"{oops", b"[1, 2]"):
        with pytest.raises(DecodeError):
            read_enriched(data)
