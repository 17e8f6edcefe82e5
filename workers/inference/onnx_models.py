"""ONNX Runtime sentiment and entity models: each owns its session and tokenizer (no torch, no transformers).

A model directory is what `pulse models export` writes: ``metadata.json`` (task, labels, max length,
inputs, files), ``tokenizer.json`` and one or more of ``model.onnx`` / ``model.int8.onnx`` /
``model.fp16.onnx``. Everything the runtime needs is read from the metadata, so a user's exported
checkpoint (another architecture, other labels) loads the same way as the shipped defaults.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from schemas import Entity, ModelRef, Sentiment
from workers.inference.batching import micro_batches
from workers.inference.bio import tag_spans
from workers.inference.wordpieces import word_spans

log = logging.getLogger("pulse.inference.models")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
    }
)
VARIANTS = ("int8", "fp32", "fp16")


class ModelLoadError(RuntimeError):
    """The model directory is missing files or its metadata does not fit the requested model class."""


class GpuUnavailableError(RuntimeError):
    """A GPU was required but the session would run (or fell back) on CPU."""


@dataclass(frozen=True)
class ModelMetadata:
    """What `metadata.json` says about an exported model."""

    task: str
    name: str
    version: str
    labels: tuple[str, ...]
    max_length: int
    inputs: tuple[str, ...]
    pad_token_id: int
    files: dict[str, str]
    raw: dict[str, Any] = field(repr=False, compare=False)
    # The graph output this head reads; None: the graph's only (first) output.
    output: str | None = None

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelMetadata:
        path = Path(model_dir) / "metadata.json"
        if not path.is_file():
            raise ModelLoadError(f"{path} not found; export a model with `pulse models export`")
        raw = json.loads(path.read_text(encoding="utf-8"))
        try:
            return cls(
                task=str(raw["task"]),
                name=str(raw.get("name") or Path(model_dir).name),
                version=str(raw["version"]),
                labels=tuple(raw["labels"]),
                max_length=int(raw["max_length"]),
                inputs=tuple(raw.get("inputs", ("input_ids", "attention_mask"))),
                pad_token_id=int(raw.get("pad_token_id", 0)),
                files=dict(raw["files"]),
                raw=raw,
                output=str(raw["output"]) if raw.get("output") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: bad metadata ({exc!r})") from exc


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Requested providers in order, aliases expanded, unavailable ones dropped; CPU when none is left."""
    out: list[str] = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.strip().lower(), name.strip())
        if full in available and full not in out:
            out.append(full)
    return out or ["CPUExecutionProvider"]


def choose_variant(files: dict[str, str], providers: Sequence[str], variant: str | None) -> str:
    """int8 on CPU, fp16 on GPU, fp32 otherwise, unless a variant is asked for by name."""
    if variant is not None:
        if variant not in files:
            raise ModelLoadError(f"variant {variant!r} not exported (have {sorted(files)})")
        return variant
    on_gpu = providers[0] in GPU_PROVIDERS
    for candidate in ("fp16", "fp32") if on_gpu else ("int8", "fp32"):
        if candidate in files:
            return candidate
    return next(iter(files))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def normalise_entity(text: str) -> str:
    """Case- and whitespace-folded form of an entity, without a leading @/# and edge punctuation."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    stripped = folded.lstrip("@#").strip(" .,;:!?\"'“”‘’()[]{}")
    return stripped or folded


@dataclass(frozen=True)
class EncodedBatch:
    """A tokenised, padded micro-batch; opaque to the stage, handed back to `infer`."""

    feeds: dict[str, np.ndarray]
    texts: tuple[str, ...]
    # Per text, per word: (position of its first token, start, end) in characters of the text.
    words: tuple[tuple[tuple[int, int, int], ...], ...] = ()

    def __len__(self) -> int:
        return len(self.texts)


class _OnnxModel:
    """Session + tokenizer shared by both tasks: loading, provider checks, padding, warm-up."""

    task = ""
    session: ort.InferenceSession
    graph_path: Path

    def __init__(
        self,
        model_dir: Path | str,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        require_gpu: bool = False,
        device_id: int = 0,
        variant: str | None = None,
        batch_size: int = 32,
        warmup: bool = True,
        share_with: _OnnxModel | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.meta = ModelMetadata.from_dir(self.model_dir)
        if self.meta.task != self.task:
            raise ModelLoadError(f"{self.model_dir} holds a {self.meta.task!r} model, not {self.task!r}")
        self.batch_size = batch_size
        if require_gpu and not any(PROVIDER_ALIASES.get(p.lower(), p) in GPU_PROVIDERS for p in providers):
            raise GpuUnavailableError(
                f"require_gpu is set but no GPU provider was requested: {list(providers)}"
            )
        chosen = resolve_providers(providers, ort.get_available_providers())
        self.variant = choose_variant(self.meta.files, chosen, variant)
        path = self.model_dir / self.meta.files[self.variant]
        if not path.is_file():
            raise ModelLoadError(f"{path} not found")
        self.graph_path = path.resolve()
        self.tokenizer_path = (self.model_dir / self.meta.raw.get("tokenizer", "tokenizer.json")).resolve()
        if share_with is not None and share_with.graph_path == self.graph_path:
            # Another head of the same graph (`pulse models export-joint`): one session serves both.
            self.session = share_with.session
            warmup = False
        else:
            self.session = self._open(path, chosen, intra_op_threads, device_id)
        self.providers = tuple(self.session.get_providers())
        if require_gpu and not GPU_PROVIDERS.intersection(self.providers):
            raise GpuUnavailableError(
                f"require_gpu is set but the session runs on {list(self.providers)} "
                f"(available here: {ort.get_available_providers()})"
            )
        self._input_names = tuple(i.name for i in self.session.get_inputs())
        self._outputs = [self.meta.output] if self.meta.output else None

        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.meta.max_length)
        log.info(
            "model loaded task=%s name=%s version=%s variant=%s providers=%s threads=%d shared=%s",
            self.task,
            self.meta.name,
            self.meta.version,
            self.variant,
            ",".join(self.providers),
            intra_op_threads,
            self.session is getattr(share_with, "session", None),
        )
        if warmup:
            # First runs allocate and pick kernels; pay that at start, not on the first real batch.
            self.run(self.pad(self.encode(["warm-up", "a longer warm-up text " * 12])))

    @staticmethod
    def _open(
        path: Path, providers: list[str], intra_op_threads: int, device_id: int
    ) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: a worker shares its cores with the Kafka
        # client threads and the tokeniser, and spinning pools starve them.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_args: list[Any] = [
            (p, {"device_id": device_id}) if p in GPU_PROVIDERS else p for p in providers
        ]
        return ort.InferenceSession(str(path), opts, providers=provider_args)

    @property
    def ref(self) -> ModelRef:
        return ModelRef.model_validate(
            {"task": self.task, "name": self.meta.name, "version": self.meta.version}
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        """Token encodings of texts (anything that is not a string reads as the empty text)."""
        return self.tokenizer.encode_batch([t if isinstance(t, str) else "" for t in texts])

    def pad(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        """The session's feeds for encodings, padded to the longest."""
        width = max((len(e.ids) for e in encodings), default=1)
        n = len(encodings)
        ids = np.full((n, width), self.meta.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            k = len(enc.ids)
            ids[row, :k] = enc.ids
            mask[row, :k] = 1
            types[row, :k] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feeds[name] for name in self._input_names}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """This head's logits for padded feeds."""
        if not next(iter(feeds.values())).shape[0]:
            return np.zeros((0, 0, len(self.labels)), dtype=np.float32)
        return self.session.run(self._outputs, feeds)[0].astype(np.float32, copy=False)

    @property
    def output(self) -> str | None:
        """The graph output this head reads (None: the graph's only output)."""
        return self.meta.output

    def sorted_batches(self, encodings: Sequence[Encoding], batch_size: int | None) -> list[list[int]]:
        return micro_batches([len(e.ids) for e in encodings], batch_size or self.batch_size)


class OnnxSentimentModel(_OnnxModel):
    """Sentiment of texts: probabilities per label, arg-max label."""

    task = "sentiment"

    def tokenize(self, texts: Sequence[str]) -> EncodedBatch:
        return EncodedBatch(self.pad(self.encode(texts)), tuple(texts))

    def infer(self, encoded: EncodedBatch) -> list[Sentiment]:
        if not len(encoded):
            return []
        return self.decode(encoded, self.run(encoded.feeds))

    def decode(self, encoded: EncodedBatch, logits: np.ndarray) -> list[Sentiment]:
        """Sentiments from this head's [n, labels] logits for `encoded`."""
        return [self._sentiment(row) for row in softmax(logits.astype(np.float32, copy=False))]

    def probabilities(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """[n, labels] probabilities, computed in length-sorted batches, returned in input order."""
        encodings = self.encode(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for idx in self.sorted_batches(encodings, batch_size):
            out[idx] = softmax(self.run(self.pad([encodings[i] for i in idx])))
        return out

    def predict(self, texts: Sequence[str], batch_size: int | None = None) -> list[Sentiment]:
        return [self._sentiment(row) for row in self.probabilities(texts, batch_size)]

    def _sentiment(self, probs: np.ndarray) -> Sentiment:
        scores = {label: float(p) for label, p in zip(self.labels, probs, strict=True)}
        return Sentiment(label=self.labels[int(probs.argmax())], scores=scores)


class OnnxEntityModel(_OnnxModel):
    """Named entities in texts, as spans with character offsets into the original text."""

    task = "ner"

    def __init__(self, model_dir: Path | str, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        bad = [t for t in self.labels if t != "O" and not t.startswith(("B-", "I-"))]
        if bad:
            raise ModelLoadError(f"NER labels must be BIO tags; got {bad[:3]}")
        self._prefix: str | None = getattr(self.tokenizer.model, "continuing_subword_prefix", None)
        unk = getattr(self.tokenizer.model, "unk_token", None)
        self._unk_id = self.tokenizer.token_to_id(unk) if unk else None

    def tokenize(self, texts: Sequence[str]) -> EncodedBatch:
        texts = [t if isinstance(t, str) else "" for t in texts]
        return self.batch(texts, self.encode(texts))

    def batch(self, texts: Sequence[str], encodings: Sequence[Encoding]) -> EncodedBatch:
        """A micro-batch of already encoded texts, with the word positions entity decoding reads."""
        words = tuple(
            word_spans(t, e, self._prefix, self._unk_id) for t, e in zip(texts, encodings, strict=True)
        )
        return EncodedBatch(self.pad(encodings), tuple(texts), words)

    def infer(self, encoded: EncodedBatch) -> list[tuple[Entity, ...]]:
        if not len(encoded):
            return []
        return self.decode(encoded, self.run(encoded.feeds))

    def decode(self, encoded: EncodedBatch, logits: np.ndarray) -> list[tuple[Entity, ...]]:
        """Entities from this head's [n, tokens, labels] logits for `encoded`."""
        probs = softmax(logits.astype(np.float32, copy=False))
        return [
            self._entities(text, words, row)
            for text, words, row in zip(encoded.texts, encoded.words, probs, strict=True)
        ]

    def predict(self, texts: Sequence[str], batch_size: int | None = None) -> list[tuple[Entity, ...]]:
        """Entities per text, computed in length-sorted batches, returned in input order."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        encodings = self.encode(texts)  # once: the lengths for sorting and the batches themselves
        out: list[tuple[Entity, ...]] = [()] * len(texts)
        for idx in self.sorted_batches(encodings, batch_size):
            batch = self.batch([texts[i] for i in idx], [encodings[i] for i in idx])
            for i, ents in zip(idx, self.infer(batch), strict=True):
                out[i] = ents
        return out

    def tag_words(self, sentences: Sequence[Sequence[str]], batch_size: int | None = None) -> list[list[str]]:
        """BIO tag per given word (first sub-word decides; words cut by truncation are `O`)."""
        encodings = self.tokenizer.encode_batch([list(w) for w in sentences], is_pretokenized=True)
        out: list[list[str]] = [["O"] * len(s) for s in sentences]
        for idx in self.sorted_batches(encodings, batch_size):
            logits = self.run(self.pad([encodings[i] for i in idx]))
            for row, i in enumerate(idx):
                for w, scores in _first_subwords(encodings[i].word_ids, logits[row]):
                    out[i][w] = self.labels[int(scores.argmax())]
        return out

    def _entities(
        self, text: str, words: Sequence[tuple[int, int, int]], probs: np.ndarray
    ) -> tuple[Entity, ...]:
        words = [w for w in words if w[0] < len(probs)]
        best = [int(probs[pos].argmax()) for pos, _, _ in words]
        tags = [self.labels[k] for k in best]
        conf = [float(probs[pos][k]) for (pos, _, _), k in zip(words, best, strict=True)]
        entities = []
        for kind, first, last in tag_spans(tags):
            start, end = words[first][1], words[last - 1][2]
            surface = text[start:end]
            if not surface.strip():
                continue
            entities.append(
                Entity(
                    type=kind,
                    text=surface,
                    start=start,
                    end=end,
                    normalized=normalise_entity(surface),
                    score=float(np.mean(conf[first:last])),
                )
            )
        return tuple(entities)


def shares_graph(sentiment: OnnxSentimentModel, entities: OnnxEntityModel) -> bool:
    """Whether both heads are outputs of one graph, read through one session with one tokenizer."""
    return (
        sentiment.session is entities.session
        and sentiment.output is not None
        and entities.output is not None
        and sentiment.tokenizer_path == entities.tokenizer_path
        and sentiment.meta.max_length == entities.meta.max_length
    )


class SharedEncoderModel:
    """Sentiment and entity heads of one graph (`pulse models export-joint`), run as one.

    Both heads read the same encoder pass, so a micro-batch is tokenised once and the session runs
    once for both outputs: half the work of two models.
    """

    def __init__(self, sentiment: OnnxSentimentModel, entities: OnnxEntityModel) -> None:
        if not shares_graph(sentiment, entities):
            raise ModelLoadError(
                f"{sentiment.model_dir} and {entities.model_dir} are not heads of one graph "
                "(use SeparateHeadsModel)"
            )
        self.sentiment, self.entities = sentiment, entities
        self.refs = (sentiment.ref, entities.ref)
        self._outputs = [str(sentiment.output), str(entities.output)]

    def tokenize(self, texts: Sequence[str]) -> EncodedBatch:
        return self.entities.tokenize(texts)

    def infer(self, encoded: EncodedBatch) -> tuple[list[Sentiment], list[tuple[Entity, ...]]]:
        if not len(encoded):
            return [], []
        sentiment_logits, entity_logits = self.entities.session.run(self._outputs, encoded.feeds)
        return self.sentiment.decode(encoded, sentiment_logits), self.entities.decode(encoded, entity_logits)

    def predict(
        self, texts: Sequence[str], batch_size: int | None = None
    ) -> tuple[list[Sentiment], list[tuple[Entity, ...]]]:
        """Both results per text, in token-length-sorted batches, in input order (benchmarks, evaluation)."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        encodings = self.entities.encode(texts)
        sentiments: list[Sentiment | None] = [None] * len(texts)
        entities: list[tuple[Entity, ...]] = [()] * len(texts)
        for idx in self.entities.sorted_batches(encodings, batch_size):
            batch = self.entities.batch([texts[i] for i in idx], [encodings[i] for i in idx])
            for i, sent, ents in zip(idx, *self.infer(batch), strict=True):
                sentiments[i], entities[i] = sent, ents
        return [s for s in sentiments if s is not None], entities


class SeparateHeadsModel:
    """A sentiment model and an entity model of their own (e.g. two exported checkpoints), run in turn."""

    def __init__(self, sentiment: OnnxSentimentModel, entities: OnnxEntityModel) -> None:
        self.sentiment, self.entities = sentiment, entities
        self.refs = (sentiment.ref, entities.ref)

    def tokenize(self, texts: Sequence[str]) -> tuple[Any, Any]:
        return self.sentiment.tokenize(texts), self.entities.tokenize(texts)

    def infer(self, encoded: tuple[Any, Any]) -> tuple[list[Sentiment], list[tuple[Entity, ...]]]:
        for_sentiment, for_entities = encoded
        return self.sentiment.infer(for_sentiment), self.entities.infer(for_entities)

    def predict(
        self, texts: Sequence[str], batch_size: int | None = None
    ) -> tuple[list[Sentiment], list[tuple[Entity, ...]]]:
        return self.sentiment.predict(texts, batch_size), self.entities.predict(texts, batch_size)


def post_model(
    sentiment: OnnxSentimentModel, entities: OnnxEntityModel
) -> SharedEncoderModel | SeparateHeadsModel:
    """The one object the stage runs: both heads in one pass when they share a graph, else in turn."""
    if shares_graph(sentiment, entities):
        return SharedEncoderModel(sentiment, entities)
    return SeparateHeadsModel(sentiment, entities)


def _first_subwords(word_ids: Sequence[int | None], rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(word index, scores) at the first sub-word of each word that survived truncation."""
    out = []
    prev = None
    for pos, w in enumerate(word_ids):
        if w is not None and w != prev and pos < len(rows):
            out.append((w, rows[pos]))
        prev = w
    return out
