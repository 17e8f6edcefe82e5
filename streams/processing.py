"""The streams stage's batch processing: decode, dead-letter, apply to Redis once (the store's I/O shell).

``BatchProcessor`` runs in the counting process (``streams.offload``); its results cross back to the
faust process as ``BatchStats``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from pulse import kafka, metrics, redis_client
from pulse.retry import call_with_retries
from pulse.settings import Settings
from schemas import DeadLetter, DecodeError, SamplePost
from schemas.views import read_enriched
from streams import STAGE
from streams.aggregate import Plan, Record, sample_doc
from streams.revisions import revise_alerts
from streams.store import RedisTrendStore
from streams.watermark import watermark

log = logging.getLogger("pulse.streams")
TP = tuple[str, int]


class DeliveryFailed(RuntimeError):
    """A dead letter was not acknowledged by the broker: the batch is not applied (exit non-zero)."""


@dataclass
class Health:
    """What /healthz reports: not healthy while Redis is away or after a failure."""

    waiting_for: str | None = None
    failed: str | None = None

    def ok(self) -> bool:
        return self.waiting_for is None and self.failed is None


@dataclass(frozen=True)
class BatchStats:
    """What one batch came to (picklable: it crosses from the counting process to the faust one)."""

    records: int
    counted: int
    late: int
    dead: int
    replayed: int
    conflicts: int
    decode_s: float
    apply_s: float
    deleted: int = 0  # tombstones: posts removed from the samples and alert evidence
    edited: int = 0  # new versions of posts: samples and evidence show them, counts do not change
    duplicates: int = 0  # later copies of posts already counted (inference is at least once)
    gaps: tuple[tuple[str, int, int], ...] = ()  # (topic, partition, offset): records missing, seek back
    revised: int = 0  # edits and deletions that moved or took out their post's counts
    too_old: int = 0  # edits and deletions too old to revise counts (older than the finest buckets)

    def export(self) -> None:
        """Into this process's Prometheus metrics."""
        metrics.BATCH_SIZE.labels(STAGE).observe(self.records)
        metrics.LATENCY.labels(STAGE, "decode").observe(self.decode_s)
        metrics.LATENCY.labels(STAGE, "apply").observe(self.apply_s)
        for outcome, n in (
            ("counted", self.counted),
            ("late", self.late),
            ("dead_letter", self.dead),
            ("replayed", self.replayed),
            ("conflict", self.conflicts),
            ("deleted", self.deleted),
            ("edited", self.edited),
            ("duplicate", self.duplicates),
            ("gap", len(self.gaps)),
            ("revised", self.revised),
            ("revision_too_old", self.too_old),
        ):
            if n:
                metrics.MESSAGES.labels(STAGE, outcome).inc(n)
        if self.late:
            metrics.LATE_RECORDS.labels(STAGE).inc(self.late)


@dataclass
class Counters:
    batches: int = 0
    counted: int = 0
    late: int = 0
    dead: int = 0
    replayed: int = 0
    duplicates: int = 0
    owned: set[TP] = field(default_factory=set)

    def add(self, stats: BatchStats) -> None:
        self.batches += 1
        self.counted += stats.counted
        self.late += stats.late
        self.dead += stats.dead
        self.replayed += stats.replayed
        self.duplicates += stats.duplicates


class BatchProcessor:
    """One faust batch at a time, on a worker thread: decode, dead-letter, apply to Redis once.

    The I/O shell around ``RedisTrendStore``: transient Redis failures retry for up to
    ``STREAMS__REDIS_RETRY_S`` and then raise (the process exits non-zero); late and undecodable
    records go to the dead-letter topic and are delivered before their offsets are applied.
    """

    def __init__(
        self,
        settings: Settings,
        store: RedisTrendStore,
        producer: Producer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.cfg = settings.streams
        self.store = store
        self.producer = producer
        self.clock = clock
        self.health = Health()
        self.counters = Counters()
        self._lock = threading.Lock()  # faust runs one batch at a time; rebalance handlers also call in

    # -- Redis, with bounded retries ------------------------------------------------------------------
    def _redis(self, what: str, fn: Callable[[], Any]) -> Any:
        def sleep(seconds: float) -> None:
            self.health.waiting_for = f"redis ({what})"
            time.sleep(seconds)

        try:
            result = call_with_retries(
                fn,
                redis_client.TRANSIENT_ERRORS,
                budget_s=self.cfg.redis_retry_s,
                what=what,
                sleep=sleep,
                extra={"stage": STAGE},
            )
        except Exception as exc:
            self.health.failed = str(exc)
            raise
        self.health.waiting_for = None
        return result

    # -- assignment -----------------------------------------------------------------------------------
    def assigned(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        """Load what Redis has applied for newly owned partitions: the offset to resume each from."""
        tps = list(tps)
        with self._lock:
            resume = self._redis("load offsets", lambda: self.store.load(tps))
            self.counters.owned = set(tps)
        return resume

    def revoked(self, tps: Iterable[TP]) -> None:
        with self._lock:
            tps = list(tps)
            self.store.forget(tps)
            self.counters.owned -= set(tps)

    def sought(self, targets: dict[TP, int]) -> None:
        """The stage sought these partitions here: their next batch may start there."""
        with self._lock:
            self.store.sought(targets)

    def resume_offset(self, tp: TP) -> int | None:
        """Where this process would resume ``tp``: the lowest applied offset over the shards, plus one."""
        return self.store.resume_from(tp)

    def watermark_ms(self) -> int | None:
        """The event-time watermark of the partitions this process owns (for the lag gauge)."""
        clocks = [h.clock for shard in self.store.applied.values() for h in shard.values() if h.clock]
        if not clocks:
            return None
        return watermark(
            clocks, int(self.clock() * 1000), self.cfg.lateness_s * 1000, self.cfg.idle_after_s * 1000
        )

    def guarded(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn`` with the same bounded retries on Redis as a batch (the detectors' tick)."""
        return self._redis(what, fn)

    # -- a batch ----------------------------------------------------------------------------------------
    def process(self, records: list[Record]) -> BatchStats | None:
        """Apply one batch (records in consumption order); what happened to it."""
        if not records:
            return None
        started = time.perf_counter()
        for record in records:
            if record.value is None:  # a tombstone: the post was deleted at its source
                continue
            try:
                record.view = read_enriched(record.value)
            except DecodeError as exc:
                record.error = exc
        decoded = time.perf_counter()
        wall_ms = int(self.clock() * 1000)
        too_old = self.store.too_old
        with self._lock:
            result = self._redis(
                "apply batch", lambda: self.store.apply(records, wall_ms, before_write=self._dead_letters)
            )
        plan = result.plan
        # After the write: a post and its deletion in one batch are added, then removed. Every
        # tombstone of the batch, replayed or not (removing twice is harmless; a crash between the
        # write and this step leaves the tombstone's offset applied, and the replay repeats it).
        deleted = sorted({r.key.decode(errors="replace") for r in records if r.value is None and r.key})
        edited = {r.view.post.id: sample_doc(r.view) for r in records if r.view and r.view.post.edited_at}
        if deleted or edited:
            with self._lock:
                self._redis("revise deleted and edited posts", lambda: self._revise(deleted, edited))
        stats = BatchStats(
            records=len(records),
            counted=plan.counted,
            late=len(plan.late),
            dead=len(plan.dead),
            replayed=plan.skipped,
            conflicts=result.conflicts,
            deleted=len(deleted),
            edited=len(edited),
            duplicates=plan.duplicates,
            gaps=tuple((topic, partition, offset) for (topic, partition), offset in plan.gaps.items()),
            revised=plan.revised,
            too_old=self.store.too_old - too_old,
            decode_s=decoded - started,
            apply_s=time.perf_counter() - decoded,
        )
        self.counters.add(stats)
        return stats

    def _revise(self, deleted: list[str], edited: dict[str, bytes]) -> None:
        self.store.forget_posts(deleted)
        self.store.revise_posts(edited)
        revise_alerts(
            self.store.client,
            self.store.keys,
            self.producer,
            self.settings.topics.alerts,
            deleted,
            {pid: SamplePost.model_validate_json(doc) for pid, doc in edited.items()},
            self.settings.kafka.producer.delivery_timeout_ms / 1000,
        )

    def _dead_letters(self, plan: Plan) -> None:
        """Deliver the plan's late and undecodable records to the DLQ before their offsets are applied."""
        if not plan.late and not plan.dead:
            return
        now = datetime.now(UTC)
        failures: list[str] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        lateness = self.settings.streams.lateness_s
        letters = [self._letter(r, "decode", str(r.error), now) for r in plan.dead] + [
            self._letter(r, "late", f"event time more than the allowed lateness ({lateness} s) behind its "
                         "partition's newest event time", now)
            for r in plan.late
        ]  # fmt: skip
        for letter in letters:
            kafka.publish_dead_letter(self.producer, self.settings.topics.dlq, letter, on_delivery=delivered)
        left = self.producer.flush(self.settings.kafka.producer.delivery_timeout_ms / 1000)
        if left or failures:
            raise DeliveryFailed(f"{left or len(failures)} dead letters not delivered: {failures[:1]}")

    def _letter(self, record: Record, reason: str, error: str, now: datetime) -> DeadLetter:
        return DeadLetter(
            stage=STAGE,
            reason=reason,
            error=error,
            original=record.value or b"",
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            failed_at=now,
        )
