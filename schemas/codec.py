"""The one codec for every message: orjson bytes in and out, validated by the pydantic models."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


class DecodeError(ValueError):
    """Bytes that are not a valid message. ``field`` is a dotted path ('' for the whole record)."""

    def __init__(self, message_type: str, field: str, problem: str) -> None:
        self.message_type = message_type
        self.field = field
        self.problem = problem
        where = f"field '{field}'" if field else "record"
        super().__init__(f"invalid {message_type}: {where}: {problem}")


def encode(message: BaseModel) -> bytes:
    """Serialise a message to compact JSON bytes (UTC RFC 3339 timestamps, base64 bytes)."""
    return orjson.dumps(message.model_dump(mode="json"))


def decode(data: bytes | bytearray | memoryview | str, message_type: type[T]) -> T:
    """Parse and validate bytes as ``message_type``; raise ``DecodeError`` naming the field."""
    name = message_type.__name__
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(name, "", f"not valid JSON ({exc})") from None
    return validate(obj, message_type)


def validate(obj: Any, message_type: type[T]) -> T:
    """Validate an already-parsed JSON value as ``message_type``; raise ``DecodeError``."""
    name = message_type.__name__
    if not isinstance(obj, dict):
        raise DecodeError(name, "", f"expected a JSON object, got {type(obj).__name__}")
    try:
        return message_type.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        field = ".".join(str(part) for part in errors[0]["loc"])
        problem = _problem(errors[0])
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise DecodeError(name, field, problem) from None


def _problem(error: Any) -> str:
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "extra_forbidden":
        return "is not a known field"
    return str(error["msg"]).rstrip(".").lower()
