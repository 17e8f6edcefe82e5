"""Log lines carry key=value fields (or JSON) so they can be grepped by stage, topic and offset."""

from __future__ import annotations

import logging

import orjson
import pytest

from pulse.logs import JsonFormatter, KeyValueFormatter


def _record(msg: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("pulse.test", logging.WARNING, __file__, 1, msg, None, None)
    record.__dict__.update(fields)
    return record


def test_key_value_lines_quote_what_needs_quoting() -> None:
    line = KeyValueFormatter().format(
        _record("dead letter", stage="inference", error='bad "json" here', offset=7)
    )
    assert ' warning pulse.test "dead letter" stage=inference error="bad \\"json\\" here" offset=7' in line


def test_json_lines_parse_back() -> None:
    doc = orjson.loads(JsonFormatter().format(_record("batch done", stage="ingest", size=64)))
    assert doc["msg"] == "batch done"
    assert doc["stage"] == "ingest"
    assert doc["size"] == 64
    assert doc["level"] == "warning"


@pytest.mark.parametrize("formatter", [KeyValueFormatter(), JsonFormatter()])
def test_exceptions_are_kept(formatter: logging.Formatter) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in formatter.format(record)
