"""Evaluation metrics shared by training and `pulse models eval` (numpy only, no torch)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.inference.bio import tag_spans


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def classification_report(
    gold: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix (rows = gold)."""
    g = np.asarray(gold)
    p = np.asarray(pred)
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (g, p), 1)
    per = {}
    for i, name in enumerate(labels):
        tp = int(cm[i, i])
        per[name] = {**_prf(tp, int(cm[:, i].sum()) - tp, int(cm[i].sum()) - tp), "support": int(cm[i].sum())}
    return {
        "n": len(g),
        "accuracy": float((g == p).mean()) if len(g) else 0.0,
        "macro_f1": float(np.mean([v["f1"] for v in per.values()])),
        "per_class": per,
        "confusion": cm.tolist(),
    }


def entity_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Exact-match entity P/R/F1 (micro) and per entity type, over word-level BIO tags."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for g_tags, p_tags in zip(gold, pred, strict=True):
        g = set(tag_spans(g_tags))
        p = set(tag_spans(p_tags))
        for s in g & p:
            tp[s[0]] += 1
        for s in p - g:
            fp[s[0]] += 1
        for s in g - p:
            fn[s[0]] += 1
    types = sorted(set(tp) | set(fp) | set(fn))
    per = {t: {**_prf(tp[t], fp[t], fn[t]), "support": tp[t] + fn[t]} for t in types}
    total = _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    return {**total, "n_gold": sum(tp.values()) + sum(fn.values()), "per_type": per}
