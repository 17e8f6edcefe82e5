"""The inference runner: ``posts.raw`` → decode → tokenise → model → enrich → ``posts.enriched``.

Four threads, each owning one step, joined by bounded queues so memory stays bounded:

    main      consume, decode, dead-letter poison, batch (``batch_size`` or ``max_wait_ms``),
              store offsets of delivered records, pause partitions while the tokeniser is behind
    tokenise  length-sorted micro-batches, tokenised for the post model (overlaps the model run)
    infer     the post model's run per micro-batch: sentiment and entities together
    produce   watchlist matches, ``EnrichedPost``, produce (delivery reports come back to main)

Only the main thread touches the consumer and the offset ledger. A record's offset becomes storable
once its enriched record (or its dead letter) is delivered and every older record of its partition
is too; librdkafka's auto-commit then commits what was stored. On revocation the revoked
partitions are drained and committed before they go; on SIGTERM everything is drained.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Gauge

from pulse import metrics
from pulse.kafka import consumer as make_consumer
from pulse.kafka import dead_letter, produce, publish_dead_letter
from pulse.kafka import producer as make_producer
from pulse.settings import Settings
from schemas import DecodeError, Entity, ModelRef, RawPost, Sentiment, encode
from schemas.models import MAX_RECORD_BYTES
from workers.inference.batching import OffsetLedger, micro_batches
from workers.inference.batching import TopicPartition as TP
from workers.inference.enrich import STAGE, decode_post, enrich
from workers.inference.flow import (
    CommitOutcome,
    PauseGate,
    commit_outcome,
    drop_partitions,
    unassigned_hint_due,
)
from workers.inference.protocols import PostModel
from workers.inference.watchlist import Watchlist

log = logging.getLogger("pulse.inference")

POSTS_PER_SECOND = Gauge("pulse_inference_posts_per_second", "Posts enriched and delivered per second.")

_STOP = object()


def _tp(msg: Message) -> TP:
    return (msg.topic() or "", msg.partition() or 0)


def _offset(msg: Message) -> int:
    return msg.offset() or 0


class WorkerFailed(RuntimeError):
    """A step of the pipeline failed (a bug, a model error, an undeliverable record): exit non-zero."""


# What the enriched record may take of a record's limit: the rest is the key, headers and batch framing.
MAX_ENRICHED_BYTES = MAX_RECORD_BYTES - 4_096


@dataclass(slots=True)
class _Item:
    tp: TP
    offset: int
    key: bytes | None
    post: RawPost
    value: bytes  # the record as consumed: a dead letter's original if its enriched form cannot be produced


@dataclass(slots=True)
class _Deletion:
    """A tombstone consumed from posts.raw: it passes through the pipeline's queues in order (after
    every post consumed before it) and is forwarded to posts.enriched as a tombstone."""

    tp: TP
    offset: int
    key: bytes | None


@dataclass(slots=True)
class _Micro:
    items: list[_Item]
    encoded: Any


@dataclass(slots=True)
class _Scored:
    items: list[_Item]
    sentiments: list[Sentiment]
    entities: list[tuple[Entity, ...]]


class InferenceWorker:
    """One inference process: a member of the consumer group, with its models and threads.

    Only the thread in ``run`` touches the consumer. confluent-kafka (2.16) serialises calls on one
    ``Consumer`` across threads, and a call from another thread waits for a gap between the run
    loop's ``consume`` calls: it waited 9-90 s here. Other threads read ``owned`` instead.
    """

    def __init__(
        self,
        settings: Settings,
        model: PostModel,
        watchlist: Watchlist,
        *,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.cfg = settings.inference
        self.model = model
        self.watchlist = watchlist
        self.models: tuple[ModelRef, ...] = tuple(model.refs)
        self.clock = clock
        self.stopping = threading.Event()
        self._failure: BaseException | None = None
        self._failed = threading.Event()
        self._ledger = OffsetLedger()
        self._deliveries: deque[tuple[TP, int, KafkaError | None]] = deque()
        self._pending: list[Message] = []
        self._pending_since: float | None = None
        self._waiting: list[_Item | _Deletion] = []  # a decoded batch waiting for room in the tokeniser queue
        self._gate = PauseGate(self.cfg.pause_after_ms / 1000)
        self._tok_q: queue.Queue[Any] = queue.Queue(maxsize=self.cfg.queue_batches)
        self._inf_q: queue.Queue[Any] = queue.Queue(maxsize=self.cfg.queue_micro_batches)
        self._out_q: queue.Queue[Any] = queue.Queue(maxsize=self.cfg.queue_micro_batches)
        self._delivered = 0
        self._owned: frozenset[TP] = frozenset()
        self._rate_mark = (time.monotonic(), 0)
        if producer is None:
            producer = make_producer(settings, STAGE, on_fatal=self._producer_fatal)
        self._producer = producer
        self._consumer = (
            consumer
            if consumer is not None
            else make_consumer(
                settings,
                STAGE,
                self.cfg.group_id,
                **{
                    # Prefetch is bounded too: pausing stops fetching, this caps what is already buffered.
                    "queued.max.messages.kbytes": 16384,
                    "statistics.interval.ms": self.cfg.stats_interval_ms,
                    "partition.assignment.strategy": self.cfg.assignment_strategy,
                    "stats_cb": self._on_stats,
                    **({"group.instance.id": self.cfg.instance_id} if self.cfg.instance_id else {}),
                },
            )
        )
        self._threads = [
            threading.Thread(target=self._guard(self._tokenise_loop), name="tokenise", daemon=True),
            threading.Thread(target=self._guard(self._infer_loop), name="infer", daemon=True),
            threading.Thread(target=self._guard(self._produce_loop), name="produce", daemon=True),
        ]

    # ------------------------------------------------------------------ main thread

    def stop(self) -> None:
        """Ask the worker to drain and exit (safe from a signal handler)."""
        self.stopping.set()

    @property
    def delivered(self) -> int:
        """Records whose enriched record or dead letter was delivered (this worker, its partitions)."""
        return self._delivered

    @property
    def owned(self) -> frozenset[TP]:
        """The (topic, partition) pairs assigned to this worker now; safe to read from any thread."""
        return self._owned

    _unassigned_since: float | None = None
    _last_hint: float | None = None
    _drain_gave_up = False  # the shutdown drain timed out: closing does not wait again

    def healthy(self) -> bool:
        return not self._failed.is_set() and all(t.is_alive() for t in self._threads)

    def run(self) -> int:
        """Consume until stopped; 0 after a clean drain, 1 when a step failed."""
        topic = self.settings.topics.raw
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        for thread in self._threads:
            thread.start()
        log.info(
            "inference started",
            extra={
                "stage": STAGE,
                "topic": topic,
                "group": self.cfg.group_id,
                "batch_size": self.cfg.batch_size,
                "models": ",".join(f"{m.name}@{m.version}" for m in self.models),
            },
        )
        try:
            try:
                while not self.stopping.is_set() and not self._failed.is_set():
                    self._step()
                    self._say_why_unassigned()
                self._drain_all()
            except KafkaException as exc:  # a fatal client error: one line and exit 1, no traceback
                self._fail(WorkerFailed(f"the Kafka client failed for good: {_reason(exc)}"))
        finally:
            self._shutdown()
        if self._failure is not None:
            log.error("inference failed", extra={"stage": STAGE, "error": repr(self._failure)})
            return 1
        log.info("inference stopped", extra={"stage": STAGE, "delivered": self._delivered})
        return 0

    def _say_why_unassigned(self) -> None:
        now = time.monotonic()
        if self._owned:
            self._unassigned_since = None
            return
        if self._unassigned_since is None:
            self._unassigned_since = now
        if unassigned_hint_due(self._unassigned_since, now, self._last_hint):
            self._last_hint = now
            log.warning(
                "waiting for partitions",
                extra={
                    "stage": STAGE,
                    "group": self.cfg.group_id,
                    "waited_s": round(now - self._unassigned_since),
                    "why": "other members own every partition, or the group still lists a worker that was "
                    "killed (the local broker never expires one; Kafka does after session.timeout.ms). "
                    "Give each worker a stable INFERENCE__INSTANCE_ID (pulse run does): a restart under "
                    "the same id takes its partitions back at once.",
                },
            )

    def _step(self) -> None:
        """One turn of the loop: fill the batch, hand it on when full or due, account for deliveries."""
        wait_s = self.cfg.max_wait_ms / 1000
        room = self.cfg.batch_size - len(self._pending)
        if room > 0 and not self._gate.paused:
            if self._pending_since is not None:
                timeout = max(0.0, self._pending_since + wait_s - time.monotonic())
            else:
                timeout = 0.1  # idle: wake up now and then to account for deliveries and signals
            self._consume(room, timeout)
        due = self._pending_since is not None and time.monotonic() >= self._pending_since + wait_s
        if self._pending and (len(self._pending) >= self.cfg.batch_size or due):
            self._submit()
        self._account()

    def _consume(self, n: int, timeout: float) -> None:
        for msg in self._consumer.consume(num_messages=max(1, n), timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consume error", extra={"stage": STAGE, "error": err.str()})
                continue
            self._ledger.track(_tp(msg), _offset(msg))
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            self._pending.append(msg)

    def _submit(self) -> None:
        """Decode the pending batch, dead-letter poison, queue the rest for the tokeniser.

        A tombstone (no value: the post was deleted at its source) splits the batch: the posts before
        it, then the tombstone, then the rest go into the queue in that order, so nothing consumed
        after a deletion is produced before it."""
        batch, self._pending, self._pending_since = self._pending, [], None
        started = time.perf_counter()
        segments: list[list[_Item | _Deletion]] = []
        posts = 0
        for msg in batch:
            tp = _tp(msg)
            if msg.value() is None:
                segments.append([_Deletion(tp, _offset(msg), msg.key())])
                segments.append([])
                continue
            try:
                post = decode_post(msg.value())
            except DecodeError as exc:
                self._dead_letter(msg, "decode", str(exc))
                continue
            if not segments:
                segments.append([])
            segments[-1].append(_Item(tp, _offset(msg), post.id.encode(), post, msg.value() or b""))
            posts += 1
        metrics.LATENCY.labels(STAGE, "decode").observe(time.perf_counter() - started)
        if posts:
            metrics.BATCH_SIZE.labels(STAGE).observe(posts)
        for items in segments:
            if not items:
                continue
            try:
                self._tok_q.put_nowait(items)
            except queue.Full:
                self._wait_for_room(items)
        metrics.QUEUE_DEPTH.labels(STAGE, "tokenise").set(self._tok_q.qsize())

    def _wait_for_room(self, items: list[_Item | _Deletion]) -> None:
        """Backpressure: wait for the tokeniser; pause every assigned partition while it is behind.

        ``PauseGate`` decides when (after ``pause_after_ms`` of a full queue): on the local broker,
        waiting 500 ms before pausing left fetches outstanding that cost the broker 0.2-0.25 of 2
        cores (0.4 with no pausing) against ~0.1 with 50 ms. While paused, the group is served
        (rebalances, max.poll.interval.ms) until there is room.
        """
        self._waiting = items
        full_since = time.monotonic()
        try:
            # A revocation meanwhile removes its partitions' items from the list (see _on_revoke).
            while items and not self._failed.is_set():
                try:
                    self._tok_q.put(items, timeout=0.02)
                    return
                except queue.Full:
                    if self._gate.full(full_since, time.monotonic()):
                        self._set_paused(True)
                    if self._gate.paused:
                        self._consume(self.cfg.batch_size, 0)
                    self._account()
        finally:
            self._waiting = []
            if self._gate.room():
                self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        assigned = self._consumer.assignment()
        if assigned:
            (self._consumer.pause if paused else self._consumer.resume)(assigned)
        if paused:
            metrics.MESSAGES.labels(STAGE, "paused").inc()

    def _dead_letter(self, msg: Message, reason: str, error: str) -> None:
        letter = dead_letter(STAGE, reason, error, msg.value() or b"", message=msg)
        tp, offset = _tp(msg), _offset(msg)
        callback = functools.partial(self._on_delivery, tp, offset)
        publish_dead_letter(self._producer, self.settings.topics.dlq, letter, on_delivery=callback)
        metrics.MESSAGES.labels(STAGE, "dead_letter").inc()

    def _poll(self, timeout: float) -> None:
        """Serve delivery reports; a producer that failed for good fails the worker instead."""
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            self._fail(WorkerFailed(f"the producer failed for good: {_reason(exc)}"))

    def _producer_fatal(self, err: KafkaError) -> None:
        # librdkafka's error callback: the producer is fenced (e.g. the broker lost records it had
        # acknowledged, so the idempotent sequence no longer matches). Nothing more can be delivered.
        self._fail(WorkerFailed(f"the producer failed for good: {err.name()}: {err.str()}"))

    def _account(self) -> None:
        """Apply delivery reports to the ledger and store the offsets that advanced."""
        self._poll(0)
        while self._deliveries:
            tp, offset, err = self._deliveries.popleft()
            if err is not None:
                # librdkafka has already retried for message.timeout.ms: give up, replay on restart.
                self._fail(WorkerFailed(f"delivery of {tp[0]}[{tp[1]}]@{offset} failed: {err.str()}"))
                continue
            if self._ledger.done(tp, offset):
                self._delivered += 1
        self._store(self._ledger.storable())
        now = time.monotonic()
        mark_t, mark_n = self._rate_mark
        if now - mark_t >= 2.0:
            POSTS_PER_SECOND.set((self._delivered - mark_n) / (now - mark_t))
            self._rate_mark = (now, self._delivered)
        metrics.QUEUE_DEPTH.labels(STAGE, "producer").set(len(self._producer))

    def _store(self, offsets: dict[TP, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()])
        except KafkaException as exc:
            # A partition revoked between delivery and store: its new owner replays from the commit.
            log.warning("offset store failed", extra={"stage": STAGE, "error": str(exc)})

    def _drain(self, tps: Sequence[TP] | None, abandoned: int = 0) -> bool:
        """Wait until every record in flight (in ``tps``, or all) is delivered; False on timeout."""
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while self._ledger.in_flight(tps) > abandoned and not self._failed.is_set():
            if time.monotonic() >= deadline:
                log.warning(
                    "drain timed out",
                    extra={"stage": STAGE, "in_flight": self._ledger.in_flight(tps) - abandoned},
                )
                return False
            self._poll(0.02)
            self._account()
        self._account()
        return True

    def _drain_all(self) -> None:
        if self._pending and not self._failed.is_set():
            self._submit()
        if not self._drain(None):
            self._drain_gave_up = True
            return  # what is left is replayed from the committed offset
        self._producer.flush(self.cfg.drain_timeout_s)
        self._account()

    def _shutdown(self) -> None:
        abandon = self._failed.is_set() or self._drain_gave_up
        for q in (self._tok_q, self._inf_q, self._out_q):
            if abandon:  # what is queued is replayed from the committed offset: do not work through it
                with contextlib.suppress(queue.Empty):
                    while True:
                        q.get_nowait()
            # A full queue means a stuck thread: it is a daemon (see _join_pipeline).
            with contextlib.suppress(queue.Full):
                q.put_nowait(_STOP)
        try:
            self._commit()
        finally:
            self._consumer.close()
            with contextlib.suppress(KafkaException):  # a fatal producer refuses to flush: it is gone
                self._producer.flush(5)
            self._join_pipeline()

    def _join_pipeline(self) -> None:
        # The pipeline threads finish the step in hand and stop. A process that exits while one of
        # them is inside ONNX Runtime aborts ("terminate called without an active exception", 134).
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def pipeline_alive(self) -> bool:
        """Whether a pipeline thread is still running after ``run`` returned (stuck in a step)."""
        return any(t.is_alive() for t in self._threads)

    def _commit(self) -> None:
        """Commit the stored offsets now (auto-commit would do it within its interval)."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            outcome = (
                commit_outcome(err.code(), err.fatal(), KafkaError._NO_OFFSET)
                if err is not None
                else CommitOutcome.RETRY
            )
            if outcome is CommitOutcome.NOTHING_STORED:
                return
            if outcome is CommitOutcome.FATAL:
                self._fail(WorkerFailed(f"commit failed for good: {exc}"))
            log.warning("commit failed", extra={"stage": STAGE, "error": str(exc), "outcome": outcome.value})

    # ------------------------------------------------------------------ rebalance (main thread)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            # Pause is a partition's state in librdkafka, kept across a loss and a new assignment:
            # partitions lost while paused came back paused and were never read again (the drill's
            # broker restart under load). Set it from the gate, both ways.
            (consumer.pause if self._gate.paused else consumer.resume)(partitions)
        self._owned = self._owned | {(p.topic, p.partition) for p in partitions}
        log.info(
            "partitions assigned",
            extra={"stage": STAGE, "partitions": ",".join(str(p.partition) for p in partitions)},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish and commit what is in flight for the partitions that go; drop what was not started."""
        revoked = [(p.topic, p.partition) for p in partitions]
        gone = set(revoked)
        abandoned = self._drop(gone)
        # Not started means not produced: the new owner consumes those from the committed offset.
        # Closing after a shutdown drain that already timed out: waiting once more would only delay the
        # exit (the records left are replayed from the committed offset either way).
        if not self._drain_gave_up and self._drain(revoked, abandoned):
            self._commit()
        self._ledger.forget(revoked)
        self._owned = self._owned - gone
        log.info(
            "partitions revoked",
            extra={
                "stage": STAGE,
                "partitions": ",".join(str(p) for _, p in revoked),
                "abandoned": abandoned,
            },
        )

    def _drop(self, gone: set[TP]) -> int:
        """Forget the not-yet-started records of partitions that went; how many there were."""
        self._pending, pending_dropped = drop_partitions(self._pending, gone, _tp)
        waiting, waiting_dropped = drop_partitions(self._waiting, gone, lambda item: item.tp)
        self._waiting[:] = waiting  # in place: _wait_for_room holds this list
        if not self._pending:
            self._pending_since = None
        return pending_dropped + waiting_dropped

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a handshake: their new owner replays; commit nothing."""
        gone = {(p.topic, p.partition) for p in partitions}
        self._drop(gone)
        self._ledger.forget(gone)
        self._owned = self._owned - gone
        log.warning(
            "partitions lost", extra={"stage": STAGE, "partitions": ",".join(str(p) for _, p in gone)}
        )

    def _on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                lag = pstats.get("consumer_lag", -1)
                if pid != "-1" and lag >= 0:
                    metrics.CONSUMER_LAG.labels(STAGE, topic, pid).set(lag)

    # ------------------------------------------------------------------ pipeline threads

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except KafkaException as exc:  # the producer failed for good: the reason, not a traceback
                self._fail(WorkerFailed(f"the producer failed for good: {_reason(exc)}"))
            except BaseException as exc:  # a pipeline thread must never die silently
                log.exception(
                    "pipeline step failed", extra={"stage": STAGE, "step": threading.current_thread().name}
                )
                self._fail(exc)

        return run

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._failed.set()

    def _tokenise_loop(self) -> None:
        while (items := self._tok_q.get()) is not _STOP:
            if isinstance(items[0], _Deletion):
                self._inf_q.put(items[0])  # passed along in order, untouched
                continue
            lengths = [len(item.post.text) for item in items]
            for idx in micro_batches(lengths, self.cfg.micro_batch):
                micro = [items[i] for i in idx]
                texts = [item.post.text for item in micro]
                started = time.perf_counter()
                encoded = _Micro(micro, self.model.tokenize(texts))
                metrics.LATENCY.labels(STAGE, "tokenise").observe(time.perf_counter() - started)
                self._inf_q.put(encoded)
                metrics.QUEUE_DEPTH.labels(STAGE, "infer").set(self._inf_q.qsize())

    def _infer_loop(self) -> None:
        while (micro := self._inf_q.get()) is not _STOP:
            if isinstance(micro, _Deletion):
                self._out_q.put(micro)
                continue
            started = time.perf_counter()
            sentiments, entities = self.model.infer(micro.encoded)
            metrics.LATENCY.labels(STAGE, "infer").observe(time.perf_counter() - started)
            if len(sentiments) != len(micro.items) or len(entities) != len(micro.items):
                raise WorkerFailed(
                    f"model returned {len(sentiments)}/{len(entities)} results for {len(micro.items)} texts"
                )
            self._out_q.put(_Scored(micro.items, sentiments, entities))
            metrics.QUEUE_DEPTH.labels(STAGE, "produce").set(self._out_q.qsize())

    def _produce_loop(self) -> None:
        topic = self.settings.topics.enriched
        while (scored := self._out_q.get()) is not _STOP:
            if isinstance(scored, _Deletion):  # forwarded: the streams stage removes what it kept
                callback = functools.partial(self._on_delivery, scored.tp, scored.offset)
                produce(self._producer, topic, None, scored.key, on_delivery=callback)
                metrics.MESSAGES.labels(STAGE, "deleted").inc()
                continue
            started = time.perf_counter()
            now = self.clock()
            for item, sentiment, ents in zip(scored.items, scored.sentiments, scored.entities, strict=True):
                record = enrich(
                    item.post, sentiment, ents, self.watchlist.find(item.post.text), self.models, now
                )
                value = encode(record)
                callback = functools.partial(self._on_delivery, item.tp, item.offset)
                if len(value) > MAX_ENRICHED_BYTES:  # never a stuck partition: the post goes to the DLQ
                    error = (
                        f"enriched record of {len(value):,} bytes is over the {MAX_ENRICHED_BYTES:,} limit"
                    )
                    where = (*item.tp, item.offset)
                    letter = dead_letter(STAGE, "too_large", error, item.value, key=item.key, origin=where)
                    publish_dead_letter(
                        self._producer, self.settings.topics.dlq, letter, on_delivery=callback
                    )
                    metrics.MESSAGES.labels(STAGE, "dead_letter").inc()
                    continue
                produce(self._producer, topic, value, item.key, on_delivery=callback)
            metrics.LATENCY.labels(STAGE, "produce").observe(time.perf_counter() - started)
            metrics.MESSAGES.labels(STAGE, "enriched").inc(len(scored.items))

    def _on_delivery(self, tp: TP, offset: int, err: KafkaError | None, msg: Message) -> None:
        # Runs on whichever thread polls the producer: hand the report to the main thread.
        self._deliveries.append((tp, offset, err))


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return f"{err.name()}: {err.str()}" if err is not None else str(exc)
