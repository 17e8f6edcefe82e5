"""Kafka clients with the project's defaults, and dead-letter building/publishing shared by every stage."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from pulse import metrics
from pulse.addresses import LOCAL_HOSTS, host_port, port_open
from pulse.settings import Settings
from schemas import DeadLetter, encode
from schemas.models import DEAD_LETTER_ERROR_CHARS, DEAD_LETTER_ORIGINAL_BYTES, MAX_RECORD_BYTES

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]
MAX_ID_BYTES = 4_096  # a dead letter's key (an id, usually) is kept up to this length


class QueueFullTimeout(BufferError):
    """The producer's local queue stayed full for longer than the caller would wait."""


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | str | None = None,
    *,
    on_delivery: DeliveryCallback | None = None,
    timeout_s: float | None = None,
    while_full: Callable[[], None] | None = None,
    poll_s: float = 0.05,
) -> float:
    """Produce one record; while librdkafka's local queue is full, serve delivery reports and retry.

    Backpressure, never a drop: the caller blocks until there is room, for at most ``timeout_s``
    (None: as long as it takes; the queue always drains, by deliveries or by their failures after
    ``message.timeout.ms``), then ``QueueFullTimeout``. ``while_full`` runs after each wait (a place
    to raise the failure a delivery report recorded). Returns the seconds it waited (0.0: room at once).
    """
    began: float | None = None
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value, key)
            else:
                producer.produce(topic, value, key, on_delivery=on_delivery)
            return 0.0 if began is None else time.monotonic() - began
        except BufferError:
            now = time.monotonic()
            if began is None:
                began = now
            elif timeout_s is not None and now - began >= timeout_s:
                raise QueueFullTimeout(f"producer queue for {topic} full for {timeout_s:g} s") from None
            producer.poll(poll_s)
            if while_full is not None:
                while_full()


def producer(
    settings: Settings, stage: str, on_fatal: Callable[[KafkaError], None] | None = None, **overrides: Any
) -> Producer:
    """An idempotent, compressing producer tuned by ``KAFKA__PRODUCER__*``; ``overrides`` are librdkafka
    options a stage sets for itself; ``on_fatal`` hears of a fatal client error (after it is logged)."""
    conf = settings.kafka.config(
        **{
            "client.id": f"pulse-{stage}",
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": settings.kafka.producer.compression,
            "linger.ms": settings.kafka.producer.linger_ms,
            "message.timeout.ms": settings.kafka.producer.delivery_timeout_ms,
            # The contract's size (schemas.models.MAX_RECORD_BYTES); the topics allow it plus a batch's
            # overhead (infra/topics.yaml), so what a producer accepts a broker accepts.
            "message.max.bytes": MAX_RECORD_BYTES,
            "error_cb": _error_logger(stage, on_fatal),
            "logger": _ClientLog(stage),
            **overrides,
        }
    )
    return Producer(conf)


class _ClientLog:
    """librdkafka's own log lines through Python logging (the stage's format and level), at most 10 per
    10 s per facility: a broker that is away for a minute makes librdkafka log every reconnect
    attempt of every connection (`FAIL ... Connection refused`), hundreds of lines that say one thing.
    The next line logged of a facility carries ``not_logged_before``. confluent-kafka hands them over
    on ``poll``/``flush``/``consume``, as (facility, client name, message)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._throttles: dict[str, LogThrottle] = {}

    def log(self, level: int, fmt: str, *args: object) -> None:
        facility = str(args[0]) if args else ""
        throttle = self._throttles.setdefault(facility, LogThrottle())
        allowed, left_out = throttle.allow()
        if allowed:
            extra: dict[str, object] = {"stage": self.stage}
            if left_out:
                extra["not_logged_before"] = left_out
            log.log(level, "librdkafka: " + fmt, *args, extra=extra)


class _ProbeLog:
    """librdkafka's log lines during a readiness probe, at DEBUG.

    A probe that fails is an answer, not a warning: without this, librdkafka's own thread writes
    request time-outs straight to stderr whenever its socket timer fires before ``list_topics``
    gives up (a race both sides of which are ``timeout``), and a one-line CLI error gets three
    lines of transport noise in front of it.
    """

    def log(self, level: int, msg: str, *args: object) -> None:
        log.debug("kafka probe: " + msg, *args)


def ready(settings: Settings, timeout: float = 3.0) -> bool:
    """True when the cluster answers a metadata request."""
    host, port = host_port(settings.kafka.bootstrap_servers, 9092)
    if host in LOCAL_HOSTS and not port_open(host, port):
        return False  # skip librdkafka's connection retries for the common 'nothing there' case
    admin = AdminClient(
        settings.kafka.config(**{"socket.timeout.ms": int(timeout * 1000), "logger": _ProbeLog()})
    )
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def consumer(settings: Settings, stage: str, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that stores offsets only when told to (at-least-once by construction)."""
    conf = settings.kafka.config(
        **{
            "client.id": f"pulse-{stage}",
            "group.id": group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "error_cb": _error_logger(stage),
            "logger": _ClientLog(stage),
            **overrides,
        }
    )
    return Consumer(conf)


def rest(consumer: Consumer, wait: Callable[[float], object], seconds: float) -> None:
    """Stop fetching for ``seconds`` (pause the assignment, ``wait``, resume): for a consumer of a topic
    that is mostly quiet, whose last ``consume`` came back empty. A broker that answers an empty fetch at
    once instead of holding it for ``fetch.wait.max.ms`` (the local one does) would otherwise have
    librdkafka re-fetch in a loop, a quarter of a core per idle consumer. Rebalances happen only inside
    ``consume``/``poll``, so the assignment cannot change while paused."""
    assigned = consumer.assignment()
    if not assigned:
        wait(seconds)
        return
    consumer.pause(assigned)
    try:
        wait(seconds)
    finally:
        consumer.resume(assigned)


def _error_logger(
    stage: str, on_fatal: Callable[[KafkaError], None] | None = None
) -> Callable[[KafkaError], None]:
    throttles: dict[str, LogThrottle] = {}

    def on_error(err: KafkaError) -> None:
        # librdkafka retries transient errors itself (logged at most 10 per 10 s per code: a broker
        # away reports every failed reconnect); a fatal one (an idempotent producer whose sequence
        # the broker lost, say) is always logged and leaves the client unusable: ``on_fatal`` makes
        # the stage end non-zero.
        extra: dict[str, object] = {"stage": stage, "error": err.str(), "code": err.name()}
        if err.fatal():
            log.error("kafka client error", extra=extra)
            if on_fatal is not None:
                on_fatal(err)
            return
        allowed, left_out = throttles.setdefault(err.name(), LogThrottle()).allow()
        if allowed:
            log.warning(
                "kafka client error", extra=extra | ({"not_logged_before": left_out} if left_out else {})
            )

    return on_error


def dead_letter(
    stage: str,
    reason: str,
    error: str,
    original: bytes,
    *,
    key: bytes | None = None,
    message: Message | None = None,
    origin: tuple[str, int, int] | None = None,
    source: str | None = None,
) -> DeadLetter:
    """A DeadLetter carrying the original bytes and, for Kafka input, topic/partition/offset (of
    ``message``, or ``origin`` when the message itself is no longer at hand).

    It always fits a record: an original over ``DEAD_LETTER_ORIGINAL_BYTES`` keeps its first bytes,
    flagged ``truncated`` with the whole's length and sha256; the error text is cut likewise."""
    if key is None and message is not None:
        key = message.key()
    letter = DeadLetter(
        stage=stage,
        reason=reason,
        error=error,
        original=original,
        key=key,
        topic=message.topic() if message is not None else origin[0] if origin else None,
        partition=message.partition() if message is not None else origin[1] if origin else None,
        offset=message.offset() if message is not None else origin[2] if origin else None,
        source=source,
        failed_at=datetime.now(UTC),
    )
    return fitted(letter)


def fitted(letter: DeadLetter) -> DeadLetter:
    """``letter`` cut to always fit a record (``publish_dead_letter`` applies it to every dead letter): an
    original over ``DEAD_LETTER_ORIGINAL_BYTES`` keeps its first bytes, flagged ``truncated`` with the
    whole's length and sha256; the error text and the key are cut too."""
    original, error, key = letter.original, letter.error, letter.key
    update: dict[str, Any] = {}
    if len(original) > DEAD_LETTER_ORIGINAL_BYTES:
        update |= {
            "original": original[:DEAD_LETTER_ORIGINAL_BYTES],
            "truncated": True,
            "original_bytes": len(original),
            "original_sha256": hashlib.sha256(original).hexdigest(),
        }
    if len(error) > DEAD_LETTER_ERROR_CHARS:
        update["error"] = error[: DEAD_LETTER_ERROR_CHARS - 40] + f"… ({len(error):,} characters in all)"
    if key is not None and len(key) > MAX_ID_BYTES:
        update["key"] = key[:MAX_ID_BYTES]
    return letter.model_copy(update=update) if update else letter


class LogThrottle:
    """At most ``burst`` log lines per ``window_s`` seconds; the rest are counted, not logged.

    A flood of bad input must not become a flood of log lines: every dead letter is still counted
    in ``pulse_dead_letters_total`` and kept in the dead-letter topic, and the next line that is
    logged says how many were left out since the last one.
    """

    def __init__(
        self, burst: int = 10, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._logged = 0
        self._suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """(whether to log this one, how many were left out before it)."""
        with self._lock:
            now = self.clock()
            if now - self._window_start >= self.window_s:
                self._window_start, self._logged = now, 0
            if self._logged >= self.burst:
                self._suppressed += 1
                return False, 0
            self._logged += 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed


DEAD_LETTER_LOG = LogThrottle()


def publish_dead_letter(
    producer: Producer,
    topic: str,
    letter: DeadLetter,
    on_delivery: DeliveryCallback | None = None,
    *,
    while_full: Callable[[], None] | None = None,
) -> None:
    """Produce a dead letter (key: the original key) and count it; delivery reported to ``on_delivery``.

    Waits (``produce``) while the producer queue is full. Logged as a warning, at most 10 per 10 s
    (``DEAD_LETTER_LOG``); the metric counts every one. Always fits a record (``fitted``).
    """
    letter = fitted(letter)
    metrics.DEAD_LETTERS.labels(letter.stage, letter.reason).inc()
    logged, left_out = DEAD_LETTER_LOG.allow()
    if logged:
        log.warning(
            "dead letter",
            extra={
                "stage": letter.stage,
                "reason": letter.reason,
                "error": letter.error,
                "topic": letter.topic,
                "partition": letter.partition,
                "offset": letter.offset,
                **({"not_logged_before": left_out} if left_out else {}),
            },
        )
    produce(producer, topic, encode(letter), letter.key, on_delivery=on_delivery, while_full=while_full)
