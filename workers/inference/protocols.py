"""The seams between the inference stage and its models: a post model, and the two heads it may be made of.

The stage owns batching and threads; a model owns its session. Tokenising and running the model are
two calls so that the stage can tokenise the next micro-batch on one thread while the current one
runs on another (``tokenizers`` and ONNX Runtime both release the GIL). What ``tokenize`` returns is
opaque to the stage: it is handed back to ``infer`` of the same model unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from schemas import Entity, ModelRef, Sentiment


@runtime_checkable
class SentimentModel(Protocol):
    """Reads the sentiment of texts."""

    @property
    def ref(self) -> ModelRef:
        """Which model this is (task, name, version), stamped on every record it enriches."""
        ...

    def tokenize(self, texts: Sequence[str]) -> Any:
        """Encode one micro-batch (CPU only, no session call); the result goes to ``infer``."""
        ...

    def infer(self, encoded: Any) -> list[Sentiment]:
        """One session run over a tokenised micro-batch: one Sentiment per text, in order."""
        ...


@runtime_checkable
class EntityModel(Protocol):
    """Finds named entities in texts, with character offsets into the original text."""

    @property
    def ref(self) -> ModelRef: ...

    def tokenize(self, texts: Sequence[str]) -> Any: ...

    def infer(self, encoded: Any) -> list[tuple[Entity, ...]]:
        """One session run: the entities of each text, in order, offsets into that text."""
        ...


@runtime_checkable
class PostModel(Protocol):
    """What the stage runs: the sentiment and the entities of a micro-batch of posts.

    One object whatever the models' shape: two heads of one graph (``SharedEncoderModel``: one
    tokenisation, one session run) or two models of their own (``SeparateHeadsModel``: each head
    tokenises and runs in turn). The loader decides which; the worker has one path.
    """

    @property
    def refs(self) -> tuple[ModelRef, ...]:
        """The models behind it (task, name, version), stamped on every record it enriches."""
        ...

    def tokenize(self, texts: Sequence[str]) -> Any:
        """Encode one micro-batch (CPU only, no session call); the result goes to ``infer``."""
        ...

    def infer(self, encoded: Any) -> tuple[list[Sentiment], list[tuple[Entity, ...]]]:
        """The sentiment and the entities of each text, in order, entity offsets into that text."""
        ...
