"""File and stdin: JSON Lines or CSV, read in large chunks without blocking shutdown."""

from __future__ import annotations

import csv
import io
import os
import select
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from workers.ingest.pipeline import Batch, Item

Format = Literal["jsonl", "csv"]
CHUNK = 1 << 20


def detect_format(path: str | None, explicit: str | None) -> Format:
    if explicit in ("jsonl", "csv"):
        return explicit  # type: ignore[return-value]
    if path and path.lower().endswith((".csv", ".csv.txt", ".tsv")):
        return "csv"
    return "jsonl"


def read_chunks(stream: BinaryIO, stop: threading.Event, chunk: int = CHUNK) -> Iterator[list[bytes]]:
    """Complete lines (without the newline) as they arrive, a chunk at a time.

    Pipes are waited on with select() in short slices so a SIGTERM is noticed even while stdin is idle.
    """
    fd = stream.fileno()
    is_pipe = not stat.S_ISREG(os.fstat(fd).st_mode)
    rest = b""
    while not stop.is_set():
        if is_pipe:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
        data = os.read(fd, chunk)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1 :]
        yield data[:cut].split(b"\n")
    if rest and not stop.is_set():
        yield [rest]


class FileSource:
    """JSON Lines or CSV from a path, or from stdin when the path is '-'."""

    name = "file"

    def __init__(self, path: str, fmt: Format = "jsonl", batch_size: int = 2000) -> None:
        self.path = path
        self.fmt = fmt
        self.batch_size = batch_size
        self.label = "stdin" if path == "-" else Path(path).name
        self._header: list[str] | None = None

    def rewind(self) -> bool:
        return self.path != "-"

    def _open(self) -> BinaryIO:
        if self.path == "-":
            import sys

            return sys.stdin.buffer
        return open(self.path, "rb")

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        stream = self._open()
        self._header = None
        try:
            if self.fmt == "jsonl":
                yield from self._jsonl(stream, stop)
            else:
                yield from self._csv(stream, stop)
        finally:
            if self.path != "-":
                stream.close()

    def _jsonl(self, stream: BinaryIO, stop: threading.Event) -> Iterator[Batch]:
        lineno = 1  # of the next line
        size = self.batch_size
        for lines in read_chunks(stream, stop):
            # hand over what a pipe gave us now rather than waiting for a full batch
            for start in range(0, len(lines), size):
                part = lines[start : start + size]
                yield Batch(part, self.label, lineno)  # a CRLF's '\r' is JSON whitespace: no need to strip
                lineno += len(part)

    def _csv(self, stream: BinaryIO, stop: threading.Event) -> Iterator[Batch]:
        lineno = 0
        pending: list[bytes] = []  # a record whose quoted field spans lines
        batch: list[bytes | Item] = []
        for lines in read_chunks(stream, stop):
            for line in lines:
                lineno += 1
                pending.append(line[:-1] if line.endswith(b"\r") else line)
                record = b"\n".join(pending)
                if record.count(b'"') % 2:
                    continue  # an open quote: the record goes on on the next line
                pending = []
                item = self._csv_item(record, lineno)
                if item is not None:
                    batch.append(item)
                if len(batch) >= self.batch_size:
                    yield Batch(batch, self.label)
                    batch = []
            if batch:
                yield Batch(batch, self.label)
                batch = []
        if pending and not stop.is_set():
            item = self._csv_item(b"\n".join(pending), lineno)
            if item is not None:
                yield Batch([item], self.label)

    def _csv_item(self, record: bytes, lineno: int) -> Item | None:
        if not record.strip():
            return None
        text = record.decode("utf-8", errors="replace")
        row = next(csv.reader(io.StringIO(text)), [])
        if self._header is None:
            self._header = [h.strip().lstrip("\ufeff") for h in row]
            return None
        origin = f"{self.label}:{lineno}"
        if len(row) != len(self._header):
            return Item(
                record,
                origin=origin,
                problem=f"CSV row has {len(row)} fields, the header has {len(self._header)}",
            )
        return Item(record, dict(zip(self._header, row, strict=True)), origin=origin)
