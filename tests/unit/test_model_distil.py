"""Distillation: the teacher's soft labels found by text, softened, and pulled towards beside gold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.training.data import TextExample, TokenExample
from workers.training.distil import TeacherLabels, distillation_loss, soften
from workers.training.teacher import text_key

SENT = ["negative", "neutral", "positive"]
NER = ["O", "B-company", "I-company"]


def write_soft_labels(path: Path) -> None:
    """A file in `export_soft_labels`' format: two texts, two sentences (one word never seen)."""
    words = np.array([[5, 0, 0], [5, 0, 0], [0, 5, 0], [5, 0, 0], [0, 4, 1], [0, 0, 0]], dtype=np.float16)
    np.savez_compressed(
        path,
        sentiment_keys=np.array([text_key("I love Delta"), text_key("meh")], dtype=np.int64),
        sentiment_logits=np.array([[0, 0, 4], [0, 3, 0]], dtype=np.float16),
        sentiment_labels=np.array(SENT),
        ner_keys=np.array([text_key("I love Delta"), text_key("at Acme Corp")], dtype=np.int64),
        ner_offsets=np.array([0, 3, 6]),
        ner_word_logits=words,
        ner_word_seen=np.array([True, True, True, True, True, False]),  # "Corp" was cut by truncation
        ner_labels=np.array(NER),
        meta=np.array(json.dumps({"chosen_step": 7})),
    )


def test_the_distillation_term_is_zero_at_the_teacher_and_pulls_towards_it() -> None:
    teacher = torch.tensor(soften(np.array([[0.0, 1.0, 3.0]]), 2.0))
    at_teacher = torch.tensor([[0.0, 1.0, 3.0]])
    assert distillation_loss(at_teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(1, 3, requires_grad=True)
    loss = distillation_loss(student, teacher, 2.0)
    loss.backward()
    assert loss.item() > 0
    assert student.grad is not None and student.grad[0, 2] < 0 < student.grad[0, 0]  # up where the teacher is


def test_soft_labels_are_found_by_normalised_text_and_mapped_to_first_sub_words(tmp_path: Path) -> None:
    write_soft_labels(tmp_path / "soft.npz")
    labels = TeacherLabels(tmp_path / "soft.npz", temperature=1.0)
    assert labels.meta["chosen_step"] == 7
    rows = [TextExample("i love  DELTA", "positive", "x"), TextExample("never seen", "neutral", "x")]
    probs, taught = labels.sentiment(rows, SENT)
    assert taught.tolist() == [True, False]
    assert probs[0].argmax().item() == 2 and probs[0].sum().item() == pytest.approx(1.0)
    sentences = [
        TokenExample(("I", "love", "Delta"), ("O", "O", "B-company")),
        TokenExample(("at", "Acme", "Corp"), ("O", "B-company", "I-company")),
        TokenExample(("unseen",), ("O",)),
    ]
    # sub-word → word: [CLS] I love § delta [SEP]; the second sentence lost "Corp" to truncation
    words = [[None, 0, 1, 2, 2, None], [None, 0, 1, None], [None, 0, None]]
    got = labels.ner(sentences, words, NER)
    assert got[2] is None
    first_probs, first_mask = got[0]  # type: ignore[misc]
    assert first_mask.tolist() == [False, True, True, True, False, False]  # each word's first sub-word
    assert first_probs[3].argmax() == 1 and first_probs[1].argmax() == 0  # "Delta": B-company
    second = got[1]
    assert second is not None and second[1].tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="NER labels"):
        labels.ner(sentences, words, ["O", "B-person", "I-person"])


def test_the_sentiment_loss_mixes_gold_and_the_teacher_by_the_distillation_weight(tmp_path: Path) -> None:
    from workers.training import train

    class Logits(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            out = torch.stack(
                [input_ids[:, 1].float(), torch.zeros(len(input_ids)), -input_ids[:, 1].float()], 1
            )
            return type("Out", (), {"logits": out})()

    rows = [TextExample("a", "positive", "x"), TextExample("b", "negative", "x")]
    targets = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    data = train._SentimentData(
        SENT, {"train": rows}, {"train": [[0, 1], [0, 2]]}, {"train": np.array([2, 0])}, targets,
        torch.ones(3), teacher=teacher, taught=torch.tensor([True, False]), temperature=2.0,
    )  # fmt: skip
    model = Logits()
    gold = train.weighted_soft_cross_entropy(
        model(torch.tensor([[0, 1], [0, 2]]), torch.ones(2, 2)).logits, targets, torch.ones(2)
    )
    for w in (0.0, 0.3, 1.0):
        data.distil_weight = w
        got = train._sentiment_loss(model, data, [0, 1], pad_id=9)
        soft = distillation_loss(model(torch.tensor([[0, 1]]), torch.ones(1, 2)).logits, teacher[:1], 2.0)
        assert got.item() == pytest.approx(((1 - w) * gold + w * soft).item(), rel=1e-5)


def test_the_train_command_line_reaches_the_config_and_the_shipped_defaults_stay_off() -> None:
    from pulse.cli import build_parser
    from workers.training import cli, train

    argv = ["models", "train", "joint", "--no-reviews", "--vader-train", "tweets,amazon,news"]
    argv += ["--entity-swaps", "2", "--distil-from", "soft.npz", "--distil-weight", "0.7"]
    argv += ["--temperature", "3", "--epochs", "1.5"]
    cfg = cli._train_config(build_parser().parse_args(argv))
    assert cfg.with_reviews is False
    assert cfg.vader_train == ("tweets", "amazon", "news")
    assert (cfg.entity_swaps, cfg.distil_from) == (2, "soft.npz")
    assert (cfg.distil_weight, cfg.temperature) == (0.7, 3.0)
    assert cfg.epochs == 1.5
    assert cfg.ner_epochs == train.JOINT_DEFAULTS.ner_epochs

    plain = cli._train_config(build_parser().parse_args(["models", "train", "joint"]))
    assert plain == train.JOINT_DEFAULTS
