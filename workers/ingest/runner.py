"""The loop for pull sources: batches → pipeline → producer, with pacing, progress, and a clean stop."""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TextIO

from confluent_kafka import KafkaError, KafkaException

from workers.ingest.pipeline import STAGE, Pipeline, Post
from workers.ingest.publisher import Publisher, PublishError, count
from workers.ingest.sources import PostSource, SourceError

log = logging.getLogger(__name__)


class Pacer(Protocol):
    def delay(self, elapsed: float, created_at: datetime) -> float: ...


@dataclass
class Stats:
    read: int = 0
    sent: int = 0  # handed to the producer
    duplicates: int = 0
    dead_letters: int = 0
    unsent: int = 0  # read but not handed over because a stop came first
    blank: int = 0  # blank lines: read, not records
    deletions: int = 0  # deletion records: published as tombstones (counted in published too)


class Progress:
    """One status line on stderr, rewritten at most ``every`` seconds: totals and the current rate."""

    def __init__(self, stream: TextIO = sys.stderr, every: float = 0.5) -> None:
        self.stream = stream
        self.every = every
        self.started = time.monotonic()
        self._last = 0.0
        self._last_published = 0

    def update(self, stats: Stats, publisher: Publisher, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.every:
            return
        window = max(now - self._last, 1e-6) if self._last else max(now - self.started, 1e-6)
        rate = (publisher.published - self._last_published) / window
        if final:
            rate = publisher.published / max(now - self.started, 1e-6)
        self._last, self._last_published = now, publisher.published
        line = (
            f"\r{now - self.started:7.1f}s  read {stats.read:,}  published {publisher.published:,}  "
            f"dup {stats.duplicates:,}  dlq {stats.dead_letters:,}  in-flight {publisher.in_flight():,}  "
            f"{rate:,.0f} posts/s{' avg' if final else ''}   "
        )
        self.stream.write(line + ("\n" if final else ""))
        self.stream.flush()


class Runner:
    def __init__(
        self,
        source: PostSource,
        pipeline: Pipeline,
        publisher: Publisher,
        *,
        pacer: Pacer | None = None,
        loop: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        flush_timeout: float = 30.0,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.publisher = publisher
        self.pacer = pacer
        self.loop = loop
        self.progress = progress
        self.stop = stop or threading.Event()
        self.flush_timeout = flush_timeout
        self.stats = Stats()
        self._started = time.monotonic()  # pacing runs on from one looped pass to the next

    def run(self) -> int:
        """Publish until the source ends or ``stop`` is set, then flush; the process exit code."""
        try:
            return self._run()
        finally:
            self.publisher.close()

    def _run(self) -> int:
        try:
            while True:
                self._drain()
                if self.stop.is_set() or not self.loop or not self.source.rewind():
                    break
                builder = self.pipeline.builder
                builder.replay = builder.replay.next_pass(builder.span)
                log.info("replay starts over", extra={"stage": STAGE, "pass": builder.replay.pass_number})
        except (PublishError, KafkaException, SourceError) as exc:  # failed for good, after retries
            # A produce call on a fenced producer only says "Local: Fatal error"; the reason comes later.
            generic = (
                isinstance(exc, KafkaException) and bool(exc.args) and exc.args[0].code() == KafkaError._FATAL
            )
            fatal = self.publisher.fatal or generic
            extra: dict[str, object] = {"stage": STAGE, "error": str(exc)}
            cause = self.publisher.fatal_cause() if generic else None
            if cause is not None:
                extra["cause"] = cause
            log.error("giving up", extra=extra)
            if not fatal:  # a producer in a fatal state only fails what it still holds: no flush
                self.publisher.flush(min(self.flush_timeout, 5.0))
            return 1
        return self._finish()

    def _drain(self) -> None:
        stats, publisher, stop = self.stats, self.publisher, self.stop
        started = self._started
        for batch in self.source.batches(stop):
            stats.read += len(batch)
            outcome = self.pipeline.process(batch)
            for letter in outcome.dead:
                publisher.dead_letter(letter)
            stats.dead_letters += len(outcome.dead)
            if outcome.dead:
                count("dead_letter", len(outcome.dead))
            stats.duplicates += len(outcome.duplicates)
            count("duplicate", len(outcome.duplicates))
            stats.blank += outcome.blank
            count("blank", outcome.blank)
            if self.pacer is None:
                publisher.publish_batch(outcome.keys, outcome.values)
                stats.sent += len(outcome.keys)
            else:
                self._paced(outcome.posts, started)
            for key in outcome.deletions:  # after the batch's posts: a post and its deletion stay in order
                publisher.delete(key)
            stats.deletions += len(outcome.deletions)
            count("deleted", len(outcome.deletions))
            publisher.poll()
            publisher.check()
            if self.progress is not None:
                self.progress.update(stats, publisher)
            if stop.is_set():
                break

    def _paced(self, posts: list[Post], started: float) -> None:
        assert self.pacer is not None
        for index, post in enumerate(posts):
            due = time.monotonic() + self.pacer.delay(time.monotonic() - started, post.created_at)
            while not self.stop.is_set() and (wait := due - time.monotonic()) > 0:
                self.publisher.poll(min(wait, 0.1))  # serve acks while waiting
                if self.progress is not None:
                    self.progress.update(self.stats, self.publisher)
            if self.stop.is_set():
                self.stats.unsent += len(posts) - index
                return
            self.publisher.publish(post.key, post.value)
            self.stats.sent += 1

    def _finish(self) -> int:
        publisher, stats = self.publisher, self.stats
        remaining = publisher.flush(self.flush_timeout)
        if self.progress is not None:
            self.progress.update(stats, publisher, final=True)
        fields = {
            "stage": STAGE,
            "read": stats.read,
            "published": publisher.published,
            "duplicates": stats.duplicates,
            "dead_letters": stats.dead_letters,
            "blank": stats.blank,
            "unsent": stats.unsent,
            **({"deletions": stats.deletions} if stats.deletions else {}),
        }
        if stats.unsent:
            count("unsent", stats.unsent)
        if remaining or publisher.error is not None:
            log.error(
                "stopped with records not acknowledged",
                extra={**fields, "in_flight": remaining, "error": publisher.error and publisher.error.str()},
            )
            return 1
        log.info("stopped" if self.stop.is_set() else "done", extra=fields)
        return 0
