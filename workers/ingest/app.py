"""Wiring for one ingest process: settings → pipeline, publisher, metrics endpoint, stop on SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from pulse import metrics
from pulse.settings import Settings
from pulse.shutdown import on_stop_signals
from workers.ingest.dedup import RecentIds
from workers.ingest.language import Py3LangidDetector
from workers.ingest.mapping import FieldMapping
from workers.ingest.pipeline import STAGE, Pipeline
from workers.ingest.privacy import Privacy
from workers.ingest.publisher import Publisher
from workers.ingest.records import RecordBuilder, Replay

log = logging.getLogger(__name__)


def detector(settings: Settings) -> Py3LangidDetector:
    """The language detector, its model loading in the background from now on."""
    found = Py3LangidDetector(settings.ingest.lang_min_confidence, settings.ingest.lang_min_letters)
    found.preload()
    return found


def tune_gc() -> None:
    """Fewer cyclic-GC passes: ingest allocates a few short-lived, acyclic containers per post, and the
    default gen-0 threshold (700) would run a collection every ~100 posts for nothing to free."""
    gc.set_threshold(50_000, 20, 100)


def pipeline(
    settings: Settings,
    platform: str | None = None,
    mapping: FieldMapping | None = None,
    warm: bool = True,
    *,
    success_reports: bool = True,
    replay: Replay | None = None,
) -> tuple[Pipeline, Publisher]:
    """The pipeline and its publisher; checks the broker and topic, and warms dedup from posts.raw.

    ``success_reports=False`` for sources that need no per-post acknowledgement (see ``Publisher``)."""
    publisher = Publisher(settings, success_reports=success_reports)
    publisher.wait_ready(timeout=15.0)
    recent = RecentIds(settings.ingest.dedup_window)
    if warm and settings.ingest.dedup_warm_records:
        from workers.ingest.history import warm_dedup

        n = warm_dedup(
            settings, recent, min(settings.ingest.dedup_warm_records, settings.ingest.dedup_window)
        )
        if n:
            log.info("dedup window warmed from the topic", extra={"stage": STAGE, "keys": n})
    tune_gc()
    builder = RecordBuilder(platform, replay=replay)
    privacy = Privacy.from_settings(settings.privacy)
    return Pipeline(builder, detector(settings), recent, mapping, privacy=privacy), publisher


def serve_metrics(
    settings: Settings, port: int | None, health: Callable[[], bool] = lambda: True
) -> ThreadingHTTPServer | None:
    port = settings.ingest.metrics_port if port is None else port
    if port < 0:
        return None
    server = metrics.serve(settings.ingest.metrics_host, port, health)
    log.info("metrics at /metrics and /healthz", extra={"stage": STAGE, "port": server.server_address[1]})
    return server


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the loop stops reading, flushes what is in flight, exits 0."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info(
            "stopping: flushing what is in flight",
            extra={"stage": STAGE, "signal": signal.Signals(signum).name},
        )
        stop.set()

    on_stop_signals(handler)
    return stop


def serve(settings: Settings, metrics_port: int | None, publisher: Publisher) -> threading.Event:
    """What every ingest command runs beside its loop: the signal handlers and the metrics server.

    /healthz is healthy while the publisher has no fatal error. Returns the stop event.
    """
    stop = stop_on_signals()
    serve_metrics(settings, metrics_port, health=lambda: publisher.error is None)
    return stop
