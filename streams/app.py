"""`pulse streams`: the faust-streaming app over ``posts.enriched`` that keeps the trend store in Redis.

Redis is the record of progress. The topic is consumed with ``acks=False``: faust never commits
offsets to Kafka. On every assignment, before faust resumes fetching, each partition is sought to
Redis's applied offset + 1 (``on_rebalance_complete``, which faust sends just before its own seek to
the group's committed offsets, of which there are none). Measured on the local broker, faust's own
commits during a rebalance are refused (IllegalGeneration), aiokafka drops its member id and the
group wedges for good; with no commits, a join settles in ~3 s (see docs/streams.md).

Faust-streaming facts designed around: concurrency 1 (upstream issue #606: with more, faust can
commit past an event still in flight); ``mode.CrashingSupervisor`` (an exception in the agent must
end the process non-zero: with the default supervisor a ``take_events`` agent is restarted and never
fed again, and the failing event of a plain one is acked); the batch is processed off the event loop
(``asyncio.to_thread``) so heartbeats, timers and fetching keep running; a revocation and a shutdown
wait for the batch in hand (with ``acks=False`` faust itself no longer does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from confluent_kafka import KafkaError, Message, Producer

from pulse import kafka, metrics, redis_client
from pulse.retry import call_with_retries
from pulse.settings import Settings
from schemas import DeadLetter, DecodeError
from schemas.views import read_enriched
from streams import STAGE
from streams.aggregate import Plan, Record
from streams.detect import Detector
from streams.keys import Keys
from streams.read import TrendReader
from streams.store import RedisTrendStore
from streams.watermark import watermark

log = logging.getLogger("pulse.streams")

EXIT_SHUTDOWN_HUNG = 3
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


@dataclass
class Counters:
    batches: int = 0
    counted: int = 0
    late: int = 0
    dead: int = 0
    replayed: int = 0
    owned: set[TP] = field(default_factory=set)


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

    def resume_offset(self, tp: TP) -> int | None:
        """Where this process would resume ``tp``: the lowest applied offset over the shards, plus one."""
        held = [shard.get(tp) for shard in self.store.applied.values()]
        return None if any(h is None for h in held) else min(h.offset for h in held if h is not None) + 1

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
    def process(self, records: list[Record]) -> Plan | None:
        """Apply one batch (records in consumption order); the plan that was written."""
        if not records:
            return None
        started = time.perf_counter()
        for record in records:
            try:
                record.view = read_enriched(record.value)
            except DecodeError as exc:
                record.error = exc
        decoded = time.perf_counter()
        wall_ms = int(self.clock() * 1000)
        with self._lock:
            result = self._redis(
                "apply batch", lambda: self.store.apply(records, wall_ms, before_write=self._dead_letters)
            )
        plan = result.plan
        applied = time.perf_counter()
        c = self.counters
        c.batches += 1
        c.counted += plan.counted
        c.late += len(plan.late)
        c.dead += len(plan.dead)
        c.replayed += plan.skipped
        metrics.BATCH_SIZE.labels(STAGE).observe(len(records))
        metrics.LATENCY.labels(STAGE, "decode").observe(decoded - started)
        metrics.LATENCY.labels(STAGE, "apply").observe(applied - decoded)
        for outcome, n in (
            ("counted", plan.counted),
            ("late", len(plan.late)),
            ("dead_letter", len(plan.dead)),
            ("replayed", plan.skipped),
        ):
            if n:
                metrics.MESSAGES.labels(STAGE, outcome).inc(n)
        if plan.late:
            metrics.LATE_RECORDS.labels(STAGE).inc(len(plan.late))
        if result.conflicts:
            metrics.MESSAGES.labels(STAGE, "conflict").inc(result.conflicts)
        return plan

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


class Processor(Protocol):
    """What the faust app hands its batches and rebalances to (``BatchProcessor``; the bench's no-op)."""

    def assigned(self, tps: Iterable[TP]) -> dict[TP, int | None]: ...

    def revoked(self, tps: Iterable[TP]) -> None: ...

    def process(self, records: list[Record]) -> object: ...

    def resume_offset(self, tp: TP) -> int | None: ...

    def watermark_ms(self) -> int | None: ...


def faust_app(
    settings: Settings, processor: Processor, owned: set[TP], detect: Callable[[], None] | None = None
) -> Any:
    """The faust app: one agent (concurrency 1) over posts.enriched, raw bytes, batches off the loop."""
    import faust
    import mode

    cfg = settings.streams
    topic_name = settings.topics.enriched
    conf: dict[str, Any] = {
        "broker": [f"kafka://{server.strip()}" for server in settings.kafka.bootstrap_servers.split(",")],
        "web_enabled": False,  # /metrics and /healthz are pulse's own (STREAMS__HTTP_PORT)
        "topic_disable_leader": True,
        "topic_allow_declare": False,  # topics come from infra/topics.yaml (pulse topics apply)
        "agent_supervisor": mode.CrashingSupervisor,
        "store": "memory://",
        "datadir": tempfile.mkdtemp(prefix="pulse-streams-"),
        "stream_buffer_maxsize": cfg.stream_buffer_maxsize,
        "broker_max_poll_records": cfg.max_poll_records,
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 60.0,  # a revocation waits for the batch in hand
        "consumer_auto_offset_reset": "earliest",  # a partition Redis knows nothing of: from the start
    }
    if cfg.instance_id:
        conf["consumer_group_instance_id"] = cfg.instance_id
    app = faust.App(cfg.group_id, **conf)
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw", acks=False)
    idle = asyncio.Event()
    idle.set()
    state = {"stopping": False}

    async def seek_to_redis(sender: Any, **kwargs: Any) -> None:
        consumer = app.consumer
        assigned = {tp for tp in consumer.assignment() if tp.topic == topic_name}
        resume = await asyncio.to_thread(processor.assigned, [(tp.topic, tp.partition) for tp in assigned])
        targets: dict[Any, int] = {}
        for tp in assigned:
            offset = resume[(tp.topic, tp.partition)]
            if offset is not None:
                targets[tp] = offset
        if targets:
            lows = await consumer.earliest_offsets(*targets)
            highs = await consumer.highwaters(*targets)
            for tp, offset in list(targets.items()):
                if offset > highs[tp]:
                    raise RuntimeError(
                        f"Redis has applied {topic_name}[{tp.partition}] up to {offset - 1} but the topic "
                        f"ends at {highs[tp]}: the topic was recreated? Clear the store and run "
                        f"'pulse streams rebuild'"
                    )
                if offset < lows[tp]:
                    log.error(
                        "records aged out of the topic before they were counted",
                        extra={"stage": STAGE, "partition": tp.partition, "missing": lows[tp] - offset},
                    )
                    metrics.MESSAGES.labels(STAGE, "aged_out").inc(lows[tp] - offset)
                    targets[tp] = lows[tp]
            await consumer.seek_wait(targets)
        owned.clear()
        owned.update((tp.topic, tp.partition) for tp in assigned)
        log.info(
            "partitions assigned",
            extra={
                "stage": STAGE,
                "partitions": ",".join(str(tp.partition) for tp in sorted(assigned)),
                "resume": ",".join(
                    f"{tp.partition}@{targets.get(tp, 'earliest')}" for tp in sorted(assigned)
                ),
            },
        )

    async def finish_batch_then_release(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        await idle.wait()  # the batch in hand is written before the partitions go
        gone = {(tp.topic, tp.partition) for tp in revoked}
        owned.difference_update(gone)
        await asyncio.to_thread(processor.revoked, gone)

    async def finish_batch_then_stop(sender: Any, **kwargs: Any) -> None:
        state["stopping"] = True
        await idle.wait()

    if detect is not None:

        @app.timer(1.0)
        async def detect_on_leader() -> None:
            # The owner of partition 0 runs the detectors: one leader per group, handed over with it.
            if (topic_name, 0) in owned and not state["stopping"]:
                await asyncio.to_thread(detect)

    @app.timer(5.0)
    async def report_lag() -> None:
        tps = [tp for tp in app.consumer.assignment() if tp.topic == topic_name]
        if not tps:
            return
        highs = await app.consumer.highwaters(*tps)
        for tp in tps:
            resume = processor.resume_offset((tp.topic, tp.partition))
            if resume is not None:
                metrics.CONSUMER_LAG.labels(STAGE, tp.topic, str(tp.partition)).set(
                    max(0, highs[tp] - resume)
                )
        mark = processor.watermark_ms()
        if mark is not None:
            metrics.WATERMARK_LAG.labels(STAGE).set(max(0.0, time.time() - mark / 1000))

    # mode's signal types want a keyword-only `signal` parameter these handlers take through **kwargs.
    app.on_rebalance_complete.connect(cast(Any, seek_to_redis))
    app.on_partitions_revoked.connect(cast(Any, finish_batch_then_release))
    app.on_before_shutdown.connect(cast(Any, finish_batch_then_stop))

    @app.agent(topic, concurrency=1)
    async def count(stream: Any) -> None:
        async for batch in stream.take_events(cfg.batch_size, within=cfg.batch_within_s):
            if state["stopping"]:
                continue
            idle.clear()
            try:
                records = [
                    Record(m.topic, m.partition, m.offset, m.value, m.key)
                    for m in (event.message for event in batch)
                    if (m.topic, m.partition) in owned
                ]
                await asyncio.to_thread(processor.process, records)
            finally:
                idle.set()

    return app


def run_worker(app: Any) -> int:
    """Run a faust app in this process until it stops; its exit code (1 when the agent crashed)."""
    import faust

    class Worker(faust.Worker):
        """faust's worker with a deadline on shutdown (a stop during a stuck rebalance can hang)."""

        grace_s = 30.0
        _watchdog: threading.Timer | None = None

        def on_worker_shutdown(self) -> None:
            super().on_worker_shutdown()
            self._watchdog = threading.Timer(self.grace_s, _hard_exit, args=(self.grace_s,))
            self._watchdog.daemon = True
            self._watchdog.start()

    for name in ("faust", "mode", "aiokafka"):
        if logging.getLogger().level > logging.DEBUG:
            logging.getLogger(name).setLevel(logging.WARNING)
    # override_logging=False: the worker leaves the root logger as pulse configured it
    worker = Worker(app, loglevel="INFO", override_logging=False, redirect_stdouts=False, quiet=True)
    worker.spinner = None
    try:
        worker.execute_from_commandline()  # always raises SystemExit
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        if worker._watchdog is not None:
            worker._watchdog.cancel()
    return 0


def run(settings: Settings) -> int:
    """Run one streams process until SIGTERM/SIGINT (exit 0 after the batch in hand) or a failure (1)."""
    keys = Keys(settings.redis.key_prefix, shards=settings.streams.shards)
    client = redis_client.client(settings, socket_timeout=10, socket_connect_timeout=5)
    store = RedisTrendStore(
        client,
        keys,
        lateness_ms=settings.streams.lateness_s * 1000,
        sample_size=settings.streams.sample_size,
        sample_ttl_s=settings.streams.sample_ttl_s,
    )
    producer = kafka.producer(settings, STAGE)
    processor = BatchProcessor(settings, store, producer)
    owned: set[TP] = set()
    reader = TrendReader(
        client,
        keys,
        lateness_ms=settings.streams.lateness_s * 1000,
        idle_after_ms=settings.streams.idle_after_s * 1000,
    )
    detector = Detector(settings, reader, client, keys, producer)
    detect = (lambda: processor.guarded("detectors", detector.tick)) if settings.streams.detectors else None
    app = faust_app(settings, processor, owned, detect=detect)
    server = metrics.serve(settings.streams.http_host, settings.streams.http_port, processor.health.ok)
    log.info(
        "streams started",
        extra={
            "stage": STAGE,
            "topic": settings.topics.enriched,
            "group": settings.streams.group_id,
            "redis": settings.redis.url,
            "metrics": f"{server.server_address[0]!s}:{server.server_address[1]}",
        },
    )
    try:
        code = run_worker(app)
    finally:
        server.shutdown()
        producer.flush(10)
    if processor.health.failed:
        log.error("streams failed", extra={"stage": STAGE, "error": processor.health.failed})
        code = code or 1
    c = processor.counters
    log.info(
        "streams stopped",
        extra={"stage": STAGE, "batches": c.batches, "counted": c.counted, "late": c.late, "dead": c.dead},
    )
    return code


def _hard_exit(grace_s: float) -> None:
    log.critical("shutdown did not finish in time: hard exit", extra={"stage": STAGE, "after_s": grace_s})
    logging.shutdown()
    os._exit(EXIT_SHUTDOWN_HUNG)
