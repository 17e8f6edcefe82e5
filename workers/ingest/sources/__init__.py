"""Where posts come from. Pull sources implement ``PostSource``; the HTTP source is push (see http.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from workers.ingest.pipeline import Batch


class SourceError(RuntimeError):
    """The source failed for good (e.g. too many failed reconnects): the process exits non-zero."""


class PostSource(Protocol):
    """A source of raw records, handed over in batches until exhausted or until ``stop`` is set."""

    name: str

    def batches(self, stop: threading.Event) -> Iterator[Batch]: ...

    def rewind(self) -> bool:
        """Start over for a looped replay; False when the source cannot (stdin, firehoses)."""
        ...
