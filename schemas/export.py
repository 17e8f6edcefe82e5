"""Writes the JSON Schema files in ``schemas/json/`` from the models: ``python -m schemas.export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from schemas.models import MESSAGES

SCHEMA_DIR = Path(__file__).resolve().parent / "json"
BASE_URI = "https://social-pulse.dev/schemas/"


def schema_for(name: str) -> dict[str, Any]:
    """The JSON Schema of a message as it appears on its topic (every field present), versioned ``$id``."""
    model = MESSAGES[name]
    version = model.model_fields["schema_version"].default
    body = model.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE_URI}{name}.v{version}.json",
        **body,
    }


def file_for(name: str) -> Path:
    version = MESSAGES[name].model_fields["schema_version"].default
    return SCHEMA_DIR / f"{name}.v{version}.json"


def render(name: str) -> bytes:
    return orjson.dumps(schema_for(name), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name in MESSAGES:
        file_for(name).write_bytes(render(name))
        print(f"wrote {file_for(name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
