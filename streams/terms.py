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
    out: list[tuple[Kind, str]] = [("hashtag", tag) for tag in dict.fromkeys(view.post.hashtags) if tag]
    if view.entities:
        out += [
            ("entity", term)
            for term in dict.fromkeys(entity_term(e.type, e.normalized) for e in view.entities)
        ]
    if view.matches:
        out += [(m.kind, m.term) for m in dict.fromkeys(view.matches) if m.kind in WATCHED]  # type: ignore[misc]
    return out
