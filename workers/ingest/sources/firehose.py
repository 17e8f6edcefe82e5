"""Firehose plumbing shared by Bluesky and Mastodon: an asyncio stream in a thread, batches to the runner,
reconnects with capped, jittered exponential backoff, and backpressure through a bounded queue."""

from __future__ import annotations

import argparse
import asyncio
import logging
import queue
import random
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol

from pulse import metrics
from pulse.retry import Backoff
from pulse.settings import Settings
from workers.ingest.pipeline import STAGE, Batch, Item
from workers.ingest.sources import SourceError

log = logging.getLogger(__name__)


class GiveUp(SourceError):
    """The stream failed to connect too many times in a row: the process exits non-zero."""


class Stream(Protocol):
    """An endless stream of records from one service; reconnecting is the caller's job."""

    name: str

    def connect(self) -> AsyncIterator[Item | None]:
        """Connect and yield records; ``None`` for a message that carried no post (counted by the stream)."""
        ...


_END = object()


class FirehoseSource:
    """Adapts a ``Stream`` to ``PostSource``: records arrive in batches of up to ``batch_size`` or
    every ``max_wait`` seconds. When the runner falls behind (the producer queue is full), the queue of
    batches fills, the pump stops reading the socket, and the server's flow control does the rest."""

    def __init__(
        self,
        stream: Stream,
        batch_size: int = 500,
        max_wait: float = 0.25,
        reconnect_max_s: float = 60.0,
        max_attempts: int = 0,
        seed: int | None = None,
    ) -> None:
        self.stream = stream
        self.name = stream.name
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.backoff = Backoff(cap=reconnect_max_s)
        self.max_attempts = max_attempts
        self.rng = random.Random(seed)
        self.error: BaseException | None = None
        self.connects = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=8)
        self._reconnects = metrics.MESSAGES.labels(STAGE, f"{stream.name}_reconnect")

    def rewind(self) -> bool:
        return False

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        thread = threading.Thread(
            target=lambda: asyncio.run(self._pump(stop)), name=f"{self.name}-stream", daemon=True
        )
        thread.start()
        while not stop.is_set():
            try:
                batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if batch is _END:
                break
            assert isinstance(batch, Batch)
            yield batch
        if self.error is not None:
            raise self.error

    def _put(self, item: object, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    async def _pump(self, stop: threading.Event) -> None:
        try:
            await self._run(stop)
        except BaseException as exc:
            self.error = exc
        finally:
            if not stop.is_set():
                self._put(_END, stop)

    async def _run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            self.connects += 1
            session = _Session()
            try:
                await self._session(session, stop)
                return  # stopped
            except _Closed:
                reason = "the server closed the stream"
            except (OSError, TimeoutError, ConnectionError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a library's own connection errors (websockets, aiohttp)
                if not _is_connection_error(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
            if stop.is_set():
                return
            if session.delivered:
                self.backoff.reset()
                failures = 0
            failures += 1
            if self.max_attempts and failures > self.max_attempts:
                raise GiveUp(f"{self.name}: {failures - 1} reconnects in a row failed; last: {reason}")
            delay = self.backoff.next_delay(self.rng)
            self._reconnects.inc()
            log.warning(
                "stream lost, reconnecting",
                extra={"stage": STAGE, "source": self.name, "reason": reason, "in_s": round(delay, 2)},
            )
            await asyncio.sleep(delay)

    async def _session(self, session: _Session, stop: threading.Event) -> None:
        """One connection: a reader task feeds a bounded queue; this loop cuts it into batches."""
        items: asyncio.Queue[object] = asyncio.Queue(maxsize=self.batch_size * 2)

        async def read() -> None:
            try:
                async for item in self.stream.connect():
                    await items.put(item)
                await items.put(_Closed())
            except Exception as exc:
                await items.put(_Failed(exc))

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        batch: list[Item] = []
        flush_at = loop.time() + self.max_wait
        try:
            while not stop.is_set():
                try:
                    item = await asyncio.wait_for(items.get(), timeout=max(0.01, flush_at - loop.time()))
                except TimeoutError:
                    item = None
                if isinstance(item, _Closed):
                    raise item
                if isinstance(item, _Failed):
                    raise item.error
                if isinstance(item, Item):
                    batch.append(item)
                    session.delivered += 1
                if len(batch) >= self.batch_size or (batch and loop.time() >= flush_at):
                    await asyncio.to_thread(self._put, Batch(batch, self.name), stop)
                    batch = []
                if loop.time() >= flush_at:
                    flush_at = loop.time() + self.max_wait
        finally:
            reader.cancel()
            if batch:
                await asyncio.to_thread(self._put, Batch(batch, self.name), stop)


class _Session:
    delivered = 0


class _Closed(Exception):
    """The server ended the stream."""


@dataclass
class _Failed:
    error: Exception


def _is_connection_error(exc: Exception) -> bool:
    module = type(exc).__module__
    return module.startswith(("websockets", "aiohttp"))


def run_firehose(stream: Stream, args: argparse.Namespace, settings: Settings) -> int:
    from workers.ingest import app
    from workers.ingest.publisher import PublishError
    from workers.ingest.runner import Progress, Runner

    try:
        pipeline, publisher = app.pipeline(settings, warm=not args.no_warm, success_reports=False)
    except PublishError as exc:
        print(f"pulse ingest: error: {exc}", file=sys.stderr)
        return 2
    stop = app.serve(settings, args.metrics_port, publisher)
    source = FirehoseSource(
        stream,
        batch_size=min(settings.ingest.batch_size, 500),
        reconnect_max_s=settings.ingest.reconnect_max_s,
        max_attempts=settings.ingest.reconnect_attempts,
    )
    runner = Runner(
        source,
        pipeline,
        publisher,
        progress=Progress() if sys.stderr.isatty() else None,
        stop=stop,
        flush_timeout=settings.ingest.flush_timeout_s,
    )
    return runner.run()
