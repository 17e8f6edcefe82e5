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
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from pulse import metrics
from pulse.settings import Settings
from streams import STAGE
from streams.aggregate import Record

log = logging.getLogger("pulse.streams")

EXIT_SHUTDOWN_HUNG = 3
STALL_S = 10.0  # records left on a partition and no batch for this long: seek back (see watch_progress)
TP = tuple[str, int]


class Processor(Protocol):
    """What the faust app hands its batches and rebalances to (``BatchProcessor``; the bench's no-op)."""

    def assigned(self, tps: Iterable[TP]) -> dict[TP, int | None]: ...

    def revoked(self, tps: Iterable[TP]) -> None: ...

    def process(self, records: list[Record]) -> object: ...

    def resume_offset(self, tp: TP) -> int | None: ...

    def sought(self, targets: dict[TP, int]) -> None: ...

    def watermark_ms(self) -> int | None: ...

    def refresh_state(self, tps: list[TP]) -> None: ...


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
    progress = {"batch_at": time.monotonic()}

    async def seek(targets: dict[Any, int]) -> None:
        """Seek partitions (faust TPs) to these offsets, or to their log's start where retention
        deleted records before they were counted; the processor learns where each was sought."""
        if not targets:
            return
        consumer = app.consumer
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
        await asyncio.to_thread(processor.sought, {(tp.topic, tp.partition): o for tp, o in targets.items()})
        await consumer.seek_wait(targets)

    async def seek_back_over_gaps(gaps: tuple[tuple[str, int, int], ...]) -> None:
        """Records of a partition never reached the agent (faust can drop what it fetched around a
        rebalance) and a later batch did not continue where Redis's applied offset ends: that
        partition was left out of the batch; read it again from its first missing offset."""
        wanted = {(topic, partition): offset for topic, partition, offset in gaps}
        targets = {tp: wanted[(tp.topic, tp.partition)] for tp in app.consumer.assignment()
                   if (tp.topic, tp.partition) in wanted}  # fmt: skip
        log.warning(
            "records missing from a partition: seeking back to the first one",
            extra={
                "stage": STAGE,
                "partitions": ",".join(f"{tp.partition}@{o}" for tp, o in targets.items()),
            },
        )
        await seek(targets)

    async def seek_to_redis(sender: Any, **kwargs: Any) -> None:
        consumer = app.consumer
        assigned = {tp for tp in consumer.assignment() if tp.topic == topic_name}
        resume = await asyncio.to_thread(processor.assigned, [(tp.topic, tp.partition) for tp in assigned])
        targets: dict[Any, int] = {}
        for tp in assigned:
            offset = resume[(tp.topic, tp.partition)]
            if offset is not None:
                targets[tp] = offset
        fresh = sorted(tp for tp in assigned if tp not in targets)
        if fresh:
            # Redis has counted nothing of these: from the log's start, sought explicitly. Left to
            # faust, a partition that comes back after a revocation keeps a stale position and is
            # never read again (the drill's takeover step found it: no commits, nothing to seek to).
            targets.update(await consumer.earliest_offsets(*fresh))
        await seek(targets)
        owned.clear()
        owned.update((tp.topic, tp.partition) for tp in assigned)
        log.info(
            "partitions assigned",
            extra={
                "stage": STAGE,
                "partitions": ",".join(str(tp.partition) for tp in sorted(assigned)),
                "resume": ",".join(
                    f"{tp.partition}@{targets[tp]}{' (start)' if tp in fresh else ''}"
                    for tp in sorted(assigned)
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
    async def watch_progress() -> None:
        """Lag gauges, and a guard: faust can drop records it fetched during a rebalance (the consumer's
        position moves past them, the agent never sees them). A partition with records left that has
        had no batch for a while is sought back to what Redis has applied; seeking again is harmless
        (records at or below the applied offset are not counted twice)."""
        tps = [tp for tp in app.consumer.assignment() if tp.topic == topic_name]
        if not tps or app.rebalancing:
            return
        highs = await app.consumer.highwaters(*tps)
        await asyncio.to_thread(processor.refresh_state, [(tp.topic, tp.partition) for tp in tps])
        stalled = {}
        unknown = [tp for tp in tps if processor.resume_offset((tp.topic, tp.partition)) is None]
        starts = await app.consumer.earliest_offsets(*unknown) if unknown else {}
        for tp in tps:
            resume = processor.resume_offset((tp.topic, tp.partition))
            if resume is None:
                resume = starts[tp]  # nothing counted yet: the whole log is left
            lag = max(0, highs[tp] - resume)
            metrics.CONSUMER_LAG.labels(STAGE, tp.topic, str(tp.partition)).set(lag)
            if lag and time.monotonic() - progress["batch_at"] > STALL_S:
                stalled[tp] = resume
        if stalled and idle.is_set():
            log.warning(
                "partitions stalled with records left: seeking back to the applied offsets",
                extra={
                    "stage": STAGE,
                    "partitions": ",".join(f"{tp.partition}@{o}" for tp, o in stalled.items()),
                },
            )
            metrics.MESSAGES.labels(STAGE, "reseek").inc(len(stalled))
            await seek(stalled)
            progress["batch_at"] = time.monotonic()
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
                stats = await asyncio.to_thread(processor.process, records)
                gaps = getattr(stats, "gaps", ())
                if gaps:
                    await seek_back_over_gaps(gaps)
            finally:
                progress["batch_at"] = time.monotonic()
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
    from streams.offload import Offloaded

    # Until faust installs its own handlers, a stop request simply ends the process (nothing is in
    # flight yet): without this, a SIGTERM during start-up killed it with -15.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_while_starting)
    processor = Offloaded(settings)  # the counting process runs the detectors itself, while leader
    owned: set[TP] = set()
    app = faust_app(settings, processor, owned)
    server = metrics.serve(settings.streams.http_host, settings.streams.http_port, processor.ok)
    log.info(
        "streams started",
        extra={
            "stage": STAGE,
            "topic": settings.topics.enriched,
            "group": settings.streams.group_id,
            "redis": settings.redis.shown_url,
            "metrics": f"{server.server_address[0]!s}:{server.server_address[1]}",
        },
    )
    try:
        code = run_worker(app)
    finally:
        server.shutdown()
        processor.close()
    if processor.health.failed:
        log.error("streams failed", extra={"stage": STAGE, "error": processor.health.failed})
        code = code or 1
    c = processor.counters
    log.info(
        "streams stopped",
        extra={
            "stage": STAGE,
            "batches": c.batches,
            "counted": c.counted,
            "late": c.late,
            "dead": c.dead,
            "duplicates": c.duplicates,
            "replayed": c.replayed,
        },
    )
    return code


def _stop_while_starting(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _hard_exit(grace_s: float) -> None:
    log.critical("shutdown did not finish in time: hard exit", extra={"stage": STAGE, "after_s": grace_s})
    logging.shutdown()
    os._exit(EXIT_SHUTDOWN_HUNG)
