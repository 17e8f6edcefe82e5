"""The shipped int8 models in models/: obvious cases, awkward inputs, offsets, card hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from schemas import Entity, Sentiment
from workers.inference.onnx_models import OnnxEntityModel, OnnxSentimentModel, SharedEncoderModel, post_model
from workers.inference.protocols import EntityModel, SentimentModel

MODELS = Path(__file__).resolve().parents[2] / "models"

ANGRY = (
    "@united you lost my bag AGAIN and nobody at the desk cares. "
    "Worst airline ever, never flying with you again!!"
)
THANKS = "Thank you so much @Delta, the crew was wonderful and got us home early. Best flight ever! 🙏"
AWKWARD = [
    "",
    "   ",
    "😡😡😡",
    "東京でiPhoneを買いました",
    "Привет из Москвы, погода отличная",
    "مرحبا بالعالم",
    "a" * 5000,
    " ".join(["Apple Google Microsoft Obama Paris"] * 200),
    "\u200b\u200d\ufeff",
]


@pytest.fixture(scope="module")
def sentiment() -> OnnxSentimentModel:
    return OnnxSentimentModel(MODELS / "sentiment", intra_op_threads=1)


@pytest.fixture(scope="module")
def entities() -> OnnxEntityModel:
    return OnnxEntityModel(MODELS / "ner", intra_op_threads=1)


def test_shipped_models_are_int8_on_cpu_and_fit_the_protocols(
    sentiment: OnnxSentimentModel, entities: OnnxEntityModel
) -> None:
    assert sentiment.variant == "int8" and entities.variant == "int8"
    assert sentiment.providers == ("CPUExecutionProvider",)
    assert isinstance(sentiment, SentimentModel) and isinstance(entities, EntityModel)
    assert sentiment.ref.task == "sentiment" and entities.ref.task == "ner"
    assert sentiment.labels == ("negative", "neutral", "positive")


def test_angry_brand_post_is_negative_and_thank_you_is_positive(sentiment: OnnxSentimentModel) -> None:
    results = sentiment.predict([ANGRY, THANKS, ANGRY, THANKS])
    assert [r.label for r in results] == ["negative", "positive", "negative", "positive"]
    assert results[0].scores["negative"] > 0.6 and results[1].scores["positive"] > 0.6
    assert all(abs(sum(r.scores.values()) - 1) < 1e-4 for r in results)


def test_stage_path_tokenize_then_infer_equals_predict(sentiment: OnnxSentimentModel) -> None:
    texts = [ANGRY, THANKS]
    staged = sentiment.infer(sentiment.tokenize(texts))
    assert [s.label for s in staged] == [s.label for s in sentiment.predict(texts)]
    assert sentiment.infer(sentiment.tokenize([])) == []


def test_organisation_and_person_found_with_exact_offsets(entities: OnnxEntityModel) -> None:
    text = "Just watched Barack Obama talk about Google on TV , amazing 😍"
    (found,) = entities.predict([text])
    spans = {(e.type, e.text) for e in found}
    assert ("person", "Barack Obama") in spans
    assert ("company", "Google") in spans
    for e in found:
        assert text[e.start : e.end] == e.text
        assert 0.0 < e.score <= 1.0
    google = next(e for e in found if e.text == "Google")
    assert (google.start, google.end) == (text.index("Google"), text.index("Google") + 6)
    assert google.normalized == "google"


def test_awkward_inputs_never_crash(sentiment: OnnxSentimentModel, entities: OnnxEntityModel) -> None:
    sents = sentiment.predict(AWKWARD)
    ents = entities.predict(AWKWARD)
    assert len(sents) == len(ents) == len(AWKWARD)
    assert all(isinstance(s, Sentiment) for s in sents)
    for text, found in zip(AWKWARD, ents, strict=True):
        for e in found:
            assert isinstance(e, Entity)
            assert text[e.start : e.end] == e.text and e.end <= len(text)
    assert ents[0] == () and ents[1] == ()
    assert entities.infer(entities.tokenize(AWKWARD[:3])) == list(ents[:3])


def test_card_hashes_match_the_shipped_files() -> None:
    for task in ("sentiment", "ner"):
        card = json.loads((MODELS / task / "card.json").read_text())
        meta = json.loads((MODELS / task / "metadata.json").read_text())
        graph, tokenizer = meta["files"]["int8"], meta["tokenizer"]
        assert {graph, tokenizer, "metadata.json"} == set(card["files"])
        for name, digest in card["files"].items():
            assert hashlib.sha256((MODELS / task / name).read_bytes()).hexdigest() == digest, name
        assert (MODELS / task / "MODEL_CARD.md").read_text().count(card["files"][graph]) == 1


def test_shipped_heads_share_one_graph_and_run_as_one(sentiment: OnnxSentimentModel) -> None:
    entities = OnnxEntityModel(MODELS / "ner", intra_op_threads=1, share_with=sentiment)
    assert entities.session is sentiment.session
    pair = post_model(sentiment, entities)
    assert isinstance(pair, SharedEncoderModel)
    texts = [ANGRY, THANKS, "Just watched Barack Obama talk about Google on TV", *AWKWARD]
    sentiments, found = pair.predict(texts)
    assert [s.label for s in sentiments[:2]] == ["negative", "positive"]
    assert ("company", "Google") in {(e.type, e.text) for e in found[2]}
    assert (sentiments, found) == (sentiment.predict(texts), entities.predict(texts))
