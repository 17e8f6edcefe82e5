"""Field mapping: read foreign layouts (any JSON or CSV columns) into the canonical input record.

The canonical input is RawPost's own shape: ``id, platform, text, lang, created_at, url`` and
``author.{id, handle, display_name}``, plus optional ``links`` (full URLs a source knows beyond the
text). A mapping names, per canonical field, where to find it in the foreign record: a key, or a
dotted path into nested objects (``user.screen_name``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FIELDS = (
    "id",
    "platform",
    "text",
    "lang",
    "created_at",
    "url",
    "author.id",
    "author.handle",
    "author.display_name",
)

FieldMapping = dict[str, str]


def parse_mapping(specs: Iterable[str]) -> FieldMapping:
    """``["text=body", "author.id=user.id_str"]`` → ``{"text": "body", "author.id": "user.id_str"}``."""
    mapping: FieldMapping = {}
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            target, sep, source = part.partition("=")
            target, source = target.strip(), source.strip()
            if not sep or not source:
                raise ValueError(f"field mapping {part!r}: expected FIELD=SOURCE, e.g. text=body")
            if target not in FIELDS:
                raise ValueError(
                    f"field mapping {part!r}: unknown field {target!r}; known: {', '.join(FIELDS)}"
                )
            mapping[target] = source
    return mapping


_MISSING = object()


def get_path(record: Mapping[str, Any], path: str) -> Any:
    """The value at ``path``: an exact key first (CSV headers may contain dots), then a dotted walk."""
    value = record.get(path, _MISSING)
    if value is not _MISSING:
        return value
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def apply_mapping(record: Mapping[str, Any], mapping: FieldMapping) -> dict[str, Any]:
    """The canonical nested record: mapped fields from their source path, the rest from their own name."""
    out: dict[str, Any] = {}
    author: dict[str, Any] = {}
    for target in FIELDS:
        value = get_path(record, mapping.get(target, target))
        if value is None or value == "":
            continue
        if target.startswith("author."):
            author[target[7:]] = value
        else:
            out[target] = value
    if author:
        out["author"] = author
    return out
