"""Distillation: the student learns the teacher's soft labels (`pulse models soft-labels`) beside gold.

The loss on a row the teacher labelled is ``(1 − w) · gold + w · T² · KL(teacher_T ‖ student_T)``
(Hinton et al., 2015: both distributions softened by the temperature ``T``; ``T²`` keeps the soft
term's gradients on the scale of the gold one's). Rows the teacher never saw (the real-name entity
swaps) learn from gold alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.training.data import TextExample, TokenExample
from workers.training.teacher import text_key


def distillation_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over rows of T² · KL(teacher ‖ student at temperature T); ``teacher_probs`` are already
    softened (``TeacherLabels`` does it once)."""
    log_student = torch.log_softmax(student_logits / temperature, dim=-1)
    kl = (teacher_probs * (torch.log(teacher_probs.clamp_min(1e-9)) - log_student)).sum(dim=-1)
    return kl.mean() * temperature**2


def soften(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class TeacherLabels:
    """A soft-label file, looked up by text."""

    def __init__(self, path: Path, temperature: float) -> None:
        z = np.load(path)
        self.meta: dict[str, Any] = json.loads(str(z["meta"]))
        self.sentiment_labels = [str(x) for x in z["sentiment_labels"]]
        self.ner_labels = [str(x) for x in z["ner_labels"]]
        probs = soften(z["sentiment_logits"], temperature)
        self._sentiment = {int(k): probs[i] for i, k in enumerate(z["sentiment_keys"])}
        offsets, words = z["ner_offsets"], soften(z["ner_word_logits"], temperature)
        seen = z["ner_word_seen"]
        self._ner = {
            int(k): (words[offsets[i] : offsets[i + 1]], seen[offsets[i] : offsets[i + 1]])
            for i, k in enumerate(z["ner_keys"])
        }

    def sentiment(
        self, rows: Sequence[TextExample], labels: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows × labels teacher probabilities, which rows the teacher labelled)."""
        if list(labels) != self.sentiment_labels:
            raise ValueError(f"the teacher's sentiment labels {self.sentiment_labels} are not {list(labels)}")
        out = np.zeros((len(rows), len(labels)), dtype=np.float32)
        taught = np.zeros(len(rows), dtype=bool)
        for i, ex in enumerate(rows):
            got = self._sentiment.get(text_key(ex.text))
            if got is not None:
                out[i], taught[i] = got, True
        return torch.from_numpy(out), torch.from_numpy(taught)

    def ner(
        self, rows: Sequence[TokenExample], words: Sequence[Sequence[int | None]], labels: Sequence[str]
    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per train sentence: (sub-words × labels teacher probabilities, which sub-words carry one:
        each word's first), or None when the teacher did not see the sentence."""
        if list(labels) != self.ner_labels:
            raise ValueError(f"the teacher's NER labels {self.ner_labels} are not {list(labels)}")
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for ex, wids in zip(rows, words, strict=True):
            got = self._ner.get(text_key(" ".join(ex.tokens)))
            if got is None or len(got[0]) != len(ex.tokens):
                out.append(None)
                continue
            probs = np.zeros((len(wids), len(labels)), dtype=np.float32)
            mask = np.zeros(len(wids), dtype=bool)
            prev = None
            for pos, w in enumerate(wids):
                if w is not None and w != prev and got[1][w]:
                    probs[pos], mask[pos] = got[0][w], True
                prev = w
            out.append((probs, mask))
        return out
