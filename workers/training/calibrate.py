"""Decision-bias calibration on the dev split, folded into the classifier's bias (needs `train`).

A fine-tuned head's arg-max is not the best decision rule for the metric we report: the scarce
sentiment class (positive) is under-predicted, and the NER head trades precision for recall. A
constant offset per label, chosen on dev only, moves the decision boundary; added to the classifier
bias it becomes part of the checkpoint, so the ONNX export, the runtime and `transformers.pipeline`
all decide the same way. The test split is then read once more, for the report.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from workers.training import data as corpora
from workers.training.export import load_model
from workers.training.metrics import classification_report, entity_report
from workers.training.train import (
    _align,
    _encode_texts,
    predict_sequence,
    predict_tokens,
    save_tokenizer,
    word_tags,
)

log = logging.getLogger("pulse.models.calibrate")

GRID = np.round(np.arange(-2.0, 2.0001, 0.05), 2)


def best_offsets(scores: dict[tuple[float, ...], float]) -> tuple[float, ...]:
    """Highest score; ties go to the smallest total shift (all zeros when nothing helps)."""
    return max(scores, key=lambda k: (round(scores[k], 6), -sum(abs(x) for x in k)))


def sentiment_offsets(logits: np.ndarray, gold: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Offsets for every label but the first (the first stays 0), maximising dev macro-F1."""
    scores: dict[tuple[float, ...], float] = {}
    for rest in itertools.product(GRID, repeat=len(labels) - 1):
        offsets = (0.0, *rest)
        pred = (logits + np.array(offsets)).argmax(1)
        scores[offsets] = classification_report(gold, pred, labels)["macro_f1"]
    best = best_offsets(scores)
    return {"offsets": dict(zip(labels, best, strict=True)), "dev_macro_f1": scores[best]}


def calibrate(hf_dir: Path, threads: int = 2) -> dict[str, Any]:
    """Choose offsets on dev, fold them into the head's bias, re-save, re-evaluate; update the report."""
    torch.set_num_threads(threads)
    report_path = hf_dir / "training_report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if "calibration" in report:
        raise ValueError(f"{hf_dir} is already calibrated")
    task = report["task"]
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model: Any = load_model(hf_dir, task)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if task == "sentiment":
        result = _calibrate_sentiment(model, tok, labels, report)
    else:
        result = _calibrate_ner(model, tok, labels, report)
    head: torch.nn.Linear = model.classifier
    with torch.no_grad():
        shift = torch.tensor([result["offsets"][name] for name in labels], dtype=head.bias.dtype)
        head.bias.add_(shift)
    model.save_pretrained(str(hf_dir))
    save_tokenizer(tok, hf_dir, verbatim=bool(report["config"].get("case_marks")))
    report["calibration"] = result["calibration"]
    report["dev"], report["test"] = result["dev"], result["test"]
    report_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _calibrate_sentiment(model: Any, tok: Any, labels: list[str], report: dict[str, Any]) -> dict[str, Any]:
    splits = corpora.sentiment_splits(with_reviews=False)
    max_length = report["config"]["max_length"]
    logits, gold = {}, {}
    for name in ("dev", "test"):
        ids = _encode_texts(tok, [ex.text for ex in splits[name]], max_length)
        logits[name] = predict_sequence(model, ids, tok.pad_token_id)
        gold[name] = np.array([labels.index(ex.label) for ex in splits[name]])
    choice = sentiment_offsets(logits["dev"], gold["dev"], labels)
    shift = np.array([choice["offsets"][name] for name in labels])
    dev = classification_report(gold["dev"], (logits["dev"] + shift).argmax(1), labels)
    test = classification_report(gold["test"], (logits["test"] + shift).argmax(1), labels)
    before = classification_report(gold["dev"], logits["dev"].argmax(1), labels)
    log.info(
        "sentiment offsets %s dev macro_f1 %.4f -> %.4f test accuracy=%.4f macro_f1=%.4f",
        choice["offsets"],
        before["macro_f1"],
        dev["macro_f1"],
        test["accuracy"],
        test["macro_f1"],
    )
    calibration = {
        "objective": "dev macro-F1",
        "offsets": choice["offsets"],
        "dev_before": {"accuracy": before["accuracy"], "macro_f1": before["macro_f1"]},
        "test_before": report["test"],
    }
    return {"offsets": choice["offsets"], "calibration": calibration, "dev": dev, "test": test}


def _calibrate_ner(model: Any, tok: Any, labels: list[str], report: dict[str, Any]) -> dict[str, Any]:
    splits = corpora.ner_splits()
    label_ids = {name: i for i, name in enumerate(labels)}
    max_length = report["config"]["max_length"]
    outside = labels.index("O")

    def tags_with(offset: float, logits: list[np.ndarray], words: list[Any], rows: list[Any]) -> list[Any]:
        shifted = [lg.copy() for lg in logits]
        for lg in shifted:
            lg[:, outside] += offset
        return word_tags(shifted, words, [len(ex.tokens) for ex in rows], labels)

    logits, words, gold = {}, {}, {}
    for name in ("dev", "test"):
        ids, _, words[name] = _align(tok, splits[name], label_ids, max_length)
        logits[name] = predict_tokens(model, ids, tok.pad_token_id)
        gold[name] = [list(ex.tags) for ex in splits[name]]
    scores: dict[tuple[float, ...], float] = {
        (float(off),): entity_report(gold["dev"], tags_with(off, logits["dev"], words["dev"], splits["dev"]))[
            "f1"
        ]
        for off in GRID
    }
    (offset,) = best_offsets(scores)
    before = entity_report(gold["dev"], tags_with(0.0, logits["dev"], words["dev"], splits["dev"]))
    dev = entity_report(gold["dev"], tags_with(offset, logits["dev"], words["dev"], splits["dev"]))
    test = entity_report(gold["test"], tags_with(offset, logits["test"], words["test"], splits["test"]))
    log.info(
        "ner O offset %.2f dev f1 %.4f -> %.4f test f1=%.4f", offset, before["f1"], dev["f1"], test["f1"]
    )
    offsets = {name: (offset if name == "O" else 0.0) for name in labels}
    calibration = {
        "objective": "dev entity F1",
        "offsets": {"O": offset},
        "dev_before": {"f1": before["f1"]},
        "test_before": report["test"],
    }
    return {"offsets": offsets, "calibration": calibration, "dev": dev, "test": test}
