"""What a post counts towards: its terms (hashtags, entities, watched brands and keywords). Pure."""

from __future__ import annotations

from typing import Literal

from schemas.views import EnrichedView

Kind = Literal["hashtag", "entity", "brand", "keyword"]
KINDS: tuple[Kind, ...] = ("hashtag", "entity", "brand", "keyword")
WATCHED: frozenset[str] = frozenset({"brand", "keyword"})  # counted with platforms, languages, authors


def entity_term(entity_type: str, normalized: str) -> str:
    """An entity's term: its type and normal form, ``"company:acme"`` (one name, two types: two terms)."""
    return f"{entity_type}:{normalized}"


def post_terms(view: EnrichedView) -> list[tuple[Kind, str]]:
    """The (kind, term) pairs a post counts towards, each once however often the post repeats it."""
    out: list[tuple[Kind, str]] = []
    seen: set[tuple[str, str]] = set()
    for tag in view.post.hashtags:
        if tag and ("hashtag", tag) not in seen:
            seen.add(("hashtag", tag))
            out.append(("hashtag", tag))
    for entity in view.entities:
        term = entity_term(entity.type, entity.normalized)
        if ("entity", term) not in seen:
            seen.add(("entity", term))
            out.append(("entity", term))
    for match in view.matches:
        kind = match.kind
        if kind in WATCHED and (kind, match.term) not in seen:
            seen.add((kind, match.term))
            out.append((kind, match.term))  # type: ignore[arg-type]
    return out
