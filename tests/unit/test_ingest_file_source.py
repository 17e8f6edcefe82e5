"""Reading JSON Lines and CSV files (local files only; no sockets)."""

from __future__ import annotations

import threading
from pathlib import Path

from workers.ingest.pipeline import Batch, Item
from workers.ingest.sources.file import FileSource, detect_format


def read_all(source: FileSource) -> list[Batch]:
    return list(source.batches(threading.Event()))


def test_jsonl_batches_keep_line_numbers_for_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b"".join(b'{"n": %d}\r\n' % i for i in range(5)) + b'{"n": 5}')  # CRLF, no final newline
    batches = read_all(FileSource(str(path), "jsonl", batch_size=2))
    records = [r for b in batches for r in b.records]
    assert len(records) == 6 and records[-1] == b'{"n": 5}'
    assert [b.origin_of(0) for b in batches] == [
        "posts.jsonl:1",
        "posts.jsonl:3",
        "posts.jsonl:5",
        "posts.jsonl:6",
    ]


def test_csv_rows_with_quoted_newlines_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "posts.csv"
    path.write_text(
        'id,author.id,text,created_at\n1,u1,"multi\nline, with comma",2026-11-28T10:00:00Z\n'
        '2,u2\n3,u3,"say ""hi""",1795867140\n'
    )
    items = [r for b in read_all(FileSource(str(path), detect_format(str(path), None))) for r in b.records]
    assert all(isinstance(i, Item) for i in items)
    first, bad, third = items
    assert isinstance(first, Item) and first.value["text"] == "multi\nline, with comma"
    assert isinstance(bad, Item) and bad.problem and "2 fields" in bad.problem and bad.origin == "posts.csv:4"
    assert isinstance(third, Item) and third.value["text"] == 'say "hi"' and third.value["author.id"] == "u3"


def test_a_stop_ends_reading_early(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_bytes(b'{"n": 1}\n' * 300_000)  # more than one read chunk
    stop = threading.Event()
    seen = 0
    for batch in FileSource(str(path), "jsonl", batch_size=1000).batches(stop):
        seen += len(batch)
        stop.set()
    assert 0 < seen < 300_000
