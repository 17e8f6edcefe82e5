"""The counting process: the faust process hands it each batch's raw records and gets the batch's stats back.

Decoding, planning, dead letters, the Lua writes and the detectors (on a thread of their own, while this
process owns partition 0) run in a child process of the streams
process, so they use a second core instead of competing for the faust process's GIL: in one process,
a thread doing this work took its time out of faust's own (measured: 0.70 of a no-op agent's rate;
see docs/streams.md). The faust process keeps the group, the fetching and the order of the calls; the
child keeps the store's cache of applied offsets. One call at a time crosses a pipe (faust's agent runs
with concurrency 1; rebalance handlers and timers are serialised with it by a lock). A failure in the
child is raised in the faust process, which ends non-zero; when the faust process ends, the pipe
closes and the child exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from pulse.settings import Settings
from streams import STAGE
from streams.aggregate import Record
from streams.processing import BatchStats, Counters, Health

log = logging.getLogger("pulse.streams")
TP = tuple[str, int]
SLOW_CALL_S = 15.0  # a call running longer than this (Redis away, being retried) makes /healthz unhealthy


class CountingFailed(RuntimeError):
    """The counting process raised, or went away: the streams process must end non-zero."""


def _serve(settings_doc: dict[str, Any], conn: Connection) -> None:
    """(child) Build the processor and the detector, then answer calls until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from pulse import kafka, logs, redis_client
    from streams.detect import Detector
    from streams.keys import Keys
    from streams.processing import BatchProcessor
    from streams.read import TrendReader
    from streams.store import RedisTrendStore

    settings = Settings(**settings_doc)
    logs.configure(settings.log_level, settings.log_format)
    cfg = settings.streams
    keys = Keys(settings.redis.key_prefix, shards=cfg.shards)
    client = redis_client.client(settings, socket_timeout=10, socket_connect_timeout=5)
    store = RedisTrendStore.for_stage(client, keys, cfg)
    producer = kafka.producer(settings, STAGE)
    processor = BatchProcessor(settings, store, producer)
    reader = TrendReader(
        client, keys, lateness_ms=cfg.lateness_s * 1000, idle_after_ms=cfg.idle_after_s * 1000
    )
    detector = Detector(settings, reader, client, keys, producer)
    leader = threading.Event()  # this process owns partition 0: it runs the detectors
    failure: list[str] = []

    def detect_while_leader() -> None:
        # On a thread of its own, so an assignment never waits behind a detector tick (a rebalance
        # that takes long loses the race with the next one inside faust, and stalls).
        while failure == []:
            time.sleep(1.0)
            if leader.is_set():
                try:
                    processor.guarded("detectors", detector.tick)
                except Exception as exc:  # reported on the next call: the streams process ends non-zero
                    log.exception("detectors failed", extra={"stage": STAGE})
                    failure.append(f"detectors: {type(exc).__name__}: {exc}")

    def owns(tps: Iterable[TP]) -> None:
        leader.set() if (settings.topics.enriched, 0) in processor.counters.owned else leader.clear()

    def assigned(tps: list[TP]) -> dict[TP, int | None]:
        resume = processor.assigned(tps)
        owns(tps)
        return resume

    def revoked(tps: list[TP]) -> None:
        processor.revoked(tps)
        owns(tps)

    if cfg.detectors:
        threading.Thread(target=detect_while_leader, name="detectors", daemon=True).start()
    calls: dict[str, Callable[..., Any]] = {
        "assigned": assigned,
        "revoked": revoked,
        "sought": processor.sought,
        "process": lambda rows: processor.process([Record(*row) for row in rows]),
        "state": lambda tps: ({tp: processor.resume_offset(tp) for tp in tps}, processor.watermark_ms()),
    }
    try:
        while True:
            try:
                op, args = conn.recv()
            except (EOFError, OSError):
                return  # the faust process is gone or done
            if failure:
                conn.send(("error", failure[0]))
                continue
            try:
                conn.send(("ok", calls[op](*args)))
            except Exception as exc:  # crosses to the faust process, which ends non-zero
                log.exception("counting failed", extra={"stage": STAGE, "call": op})
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        failure.append("stopped")
        producer.flush(10)


class Offloaded:
    """The ``Processor`` the faust app sees, backed by the counting process."""

    def __init__(self, settings: Settings) -> None:
        context = multiprocessing.get_context("spawn")  # the faust process has threads: never fork it
        self._conn, child_conn = context.Pipe()
        self._child = context.Process(
            target=_serve,
            args=(settings.model_dump(), child_conn),
            name="pulse-streams-counting",
            daemon=True,
        )
        self._child.start()
        child_conn.close()
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self.health = Health()
        self.counters = Counters()
        self._state: tuple[dict[TP, int | None], int | None] = ({}, None)

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            if self.health.failed:
                raise CountingFailed(self.health.failed)
            self._busy_since = time.monotonic()
            try:
                self._conn.send((op, args))
                status, value = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                self.health.failed = f"the counting process exited ({self._child.exitcode})"
                raise CountingFailed(self.health.failed) from None
            finally:
                self._busy_since = None
        if status == "error":
            self.health.failed = str(value)
            raise CountingFailed(str(value))
        return value

    def ok(self) -> bool:
        busy = self._busy_since
        return self.health.ok() and (busy is None or time.monotonic() - busy < SLOW_CALL_S)

    def assigned(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        tps = list(tps)
        resume: dict[TP, int | None] = self._call("assigned", tps)
        self.counters.owned = set(tps)
        return resume

    def revoked(self, tps: Iterable[TP]) -> None:
        tps = list(tps)
        self._call("revoked", tps)
        self.counters.owned -= set(tps)

    def process(self, records: list[Record]) -> BatchStats | None:
        rows = [(r.topic, r.partition, r.offset, r.value, r.key) for r in records]
        stats: BatchStats | None = self._call("process", rows)
        if stats is not None:
            stats.export()
            self.counters.add(stats)
        return stats

    def sought(self, targets: dict[TP, int]) -> None:
        self._call("sought", targets)

    def refresh_state(self, tps: list[TP]) -> None:
        """Resume offsets and the watermark of the owned partitions, for the lag gauges."""
        self._state = self._call("state", tps)

    def resume_offset(self, tp: TP) -> int | None:
        return self._state[0].get(tp)

    def watermark_ms(self) -> int | None:
        return self._state[1]

    def close(self) -> None:
        self._conn.close()
        self._child.join(15)
        if self._child.is_alive():
            self._child.kill()
            self._child.join(5)
