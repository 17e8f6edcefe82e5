"""BIO tag decoding: tag sequences to typed spans (pure functions, no model)."""

from __future__ import annotations

from collections.abc import Sequence


def tag_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end_exclusive) spans over positions, conlleval-style.

    An `I-X` that does not continue an open `X` span starts a new one (models do emit stray `I-`
    tags, and dropping them would lose real entities).
    """
    spans: list[tuple[str, int, int]] = []
    current: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if prefix == "B" or (prefix == "I" and kind != current):
            if current is not None:
                spans.append((current, start, i))
            current, start = kind, i
        elif prefix != "I":
            if current is not None:
                spans.append((current, start, i))
            current = None
    if current is not None:
        spans.append((current, start, len(tags)))
    return spans
