"""Decision-offset calibration: the search itself, on synthetic logits (no model, no corpus)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from workers.training.calibrate import best_offsets, sentiment_offsets

LABELS = ["negative", "neutral", "positive"]


def test_an_under_predicted_class_gets_a_positive_offset_that_lifts_macro_f1() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=600)
    logits = np.eye(3)[gold] * 2.0 + rng.normal(0, 0.6, size=(600, 3))
    logits[:, 2] -= 1.5  # the head under-predicts "positive"
    choice = sentiment_offsets(logits, gold, LABELS)
    assert choice["offsets"]["negative"] == 0.0
    assert 0.8 <= choice["offsets"]["positive"] <= 2.0
    raw = logits.argmax(1)
    raw_recall = (raw[gold == 2] == 2).mean()
    shifted = (logits + np.array(list(choice["offsets"].values()))).argmax(1)
    assert (shifted[gold == 2] == 2).mean() > raw_recall + 0.2


def test_ties_keep_the_smallest_shift() -> None:
    assert best_offsets({(0.0, 0.0): 0.5, (0.5, 0.0): 0.5, (-0.1, 0.0): 0.4}) == (0.0, 0.0)
    assert best_offsets({(0.0,): 0.5, (1.0,): 0.6, (-1.0,): 0.6}) in {(1.0,), (-1.0,)}
