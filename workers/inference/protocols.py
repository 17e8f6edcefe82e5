"""The seams between the inference stage and its models: what a sentiment or entity model must offer.

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
    """Sentiment and entities of texts from one tokenisation and one run (a shared-encoder model).

    A sentiment model offers one through ``joint_with(entities)`` when both heads are outputs of
    one graph; the stage then runs that instead of the two models one after the other.
    """

    def tokenize(self, texts: Sequence[str]) -> Any: ...

    def infer(self, encoded: Any) -> tuple[list[Sentiment], list[tuple[Entity, ...]]]: ...
