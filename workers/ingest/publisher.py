"""The Kafka edge of ingest: an idempotent producer keyed by post id, backpressure, dead letters, metrics."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pulse import kafka, metrics
from pulse.settings import Settings
from schemas import DeadLetter
from workers.ingest.pipeline import STAGE, Post
from workers.ingest.privacy import Privacy

log = logging.getLogger(__name__)

DeliveryCallback = kafka.DeliveryCallback

# Broker answers that condemn one record rather than the connection: dead-letter it, keep going.
_RECORD_ERRORS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD}
_LATENCY_SAMPLE = 64  # observe produce→ack latency for one message in this many (histograms cost ~1 µs)


class PublishError(RuntimeError):
    """Delivery failed after librdkafka's own retries (message.timeout.ms): the process must exit non-zero."""


class Publisher:
    """Thread-safe. ``publish`` blocks (polling) while the producer queue is full: sources slow down.

    ``success_reports=False`` (pull sources: file, generator, firehoses) asks the client for failed
    deliveries only (``delivery.report.only.error``): no Python callback and no ``Message`` object per
    acknowledged record, about a quarter of the stage's CPU at full speed. Every failure is still reported
    (and ends the process non-zero, as ever); ``published`` is then counted as produced minus failed minus
    still in flight, a lower bound while running that is exact once flushed, and produce latency is
    observed per batch (produce → the whole batch acknowledged). Per-message callbacks (``delivery``,
    the HTTP source) need ``success_reports=True``.
    """

    def __init__(
        self, settings: Settings, producer: Producer | None = None, *, success_reports: bool = True
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.raw
        self.dlq = settings.topics.dlq
        self.success_reports = success_reports
        self.privacy = Privacy.from_settings(settings.privacy)
        ingest = settings.ingest
        self.producer = (
            producer
            if producer is not None
            else kafka.producer(
                settings,
                STAGE,
                on_fatal=self._fatal,
                **{
                    "queue.buffering.max.messages": ingest.queue_max_messages,
                    "batch.num.messages": ingest.batch_num_messages,
                    "on_delivery": self._delivered,
                    # handled inside confluent-kafka's own callback trampoline (successes skip Python)
                    "delivery.report.only.error": not success_reports,
                },
            )
        )
        self.error: KafkaError | None = None
        self._acked = 0  # with success reports: acknowledged raw-topic records
        self._produced = 0  # without: raw-topic records handed to the producer ...
        self._lost = 0  # ... those that failed or were rejected ...
        self._acked_floor = 0  # ... and the highest count of acknowledged ones derived so far
        self._checkpoints: deque[tuple[int, float]] = deque()  # (records produced by then, when)
        self._abandoned = 0  # records still in flight when the producer was closed
        self.failed = 0
        self.dead_lettered = 0
        self.blocked_s = 0.0
        self._sample = 0
        self._exported = 0
        self._rejected: list[DeadLetter] = []
        self._lock = threading.Lock()
        self._failure_log = kafka.LogThrottle(burst=3, window_s=10.0)
        self._fatal_error: KafkaError | None = None
        self._published_metric = metrics.MESSAGES.labels(STAGE, "published")
        self._latency = metrics.LATENCY.labels(STAGE, "produce")
        self._queue = metrics.QUEUE_DEPTH.labels(STAGE, "producer")

    @property
    def published(self) -> int:
        """Raw-topic records the broker acknowledged (without success reports: at least this many; exact
        once flushed)."""
        if self.success_reports:
            return self._acked
        # len(producer) counts every record not yet reported on, dead letters too: a lower bound
        producer = self.__dict__.get("producer")
        in_flight = len(producer) if producer is not None else self._abandoned
        acked = self._produced - self._lost - in_flight
        if acked > self._acked_floor:
            self._acked_floor = acked
        return self._acked_floor

    # -- delivery reports (called from poll()/flush(), on whichever thread polls) -------------------
    @property
    def fatal(self) -> bool:
        """The producer hit a fatal error (the broker lost its idempotence state, say): unusable."""
        return self._fatal_error is not None or (self.error is not None and self.error.fatal())

    def fatal_cause(self, wait_s: float = 2.0) -> str | None:
        """Why the producer is in a fatal state. librdkafka queues the reason from its broker thread
        after setting the state, so the call that failed may only say "Local: Fatal error": the queue is
        served for up to ``wait_s`` until the reason comes, through the error callback or (what
        confluent-kafka does with a fatal error) raised from ``poll``."""
        deadline = time.monotonic() + wait_s
        while self._fatal_error is None and "producer" in self.__dict__:
            try:
                self.producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is not None and err.fatal() and err.code() != KafkaError._FATAL:
                    self._fatal(err)
            if time.monotonic() >= deadline:
                break
        err = self._fatal_error
        return f"{err.name()}: {err.str()}" if err is not None else None

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        # Called by librdkafka through confluent-kafka: an exception escaping here would be left set and
        # surface later as a SystemError in an unrelated call (seen in flush after a broker restart).
        try:
            self._on_report(err, msg)
        except Exception as exc:
            log.error("delivery report failed", extra={"stage": STAGE, "error": repr(exc)})
            if self.error is None:
                self.error = KafkaError(KafkaError._FAIL, f"delivery report failed: {exc!r}")

    def _on_report(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            if msg.topic() == self.topic:
                self._acked += 1
            return
        topic = msg.topic()
        if topic == self.topic:
            self._lost += 1
        if err.code() in _RECORD_ERRORS and topic != self.dlq:
            self._dead_letter_rejected(err, msg)
            return
        self.failed += 1
        if self.error is None:
            self.error = err
        # Once one failed the stage stops; a broker that went away fails thousands in flight: a few lines.
        logged, left_out = self._failure_log.allow()
        if logged:
            extra = {"stage": STAGE, "topic": msg.topic(), "error": err.str(), "failed": self.failed}
            log.error(
                "delivery failed", extra={**extra, **({"not_logged_before": left_out} if left_out else {})}
            )

    def _fatal(self, err: KafkaError) -> None:
        # The producer cannot go on: every source stops on ``check`` with this one-line reason.
        self._fatal_error = err
        if self.error is None:
            self.error = err

    def _dead_letter_rejected(self, err: KafkaError, msg: Message) -> None:
        value = msg.value() or b""
        letter = kafka.dead_letter(
            STAGE,
            "too_large" if err.code() == KafkaError.MSG_SIZE_TOO_LARGE else "rejected",
            f"broker rejected the record: {err.str()}",
            value,
            key=msg.key(),
            source=msg.topic(),
        )
        self._rejected.append(letter)  # produced after poll() returns: not from inside librdkafka's callback

    def check(self) -> None:
        """Raise ``PublishError`` once any delivery has failed for good."""
        if self.error is not None:
            raise PublishError(f"delivery to {self.topic} failed: {self.error.str()}")

    # -- producing --------------------------------------------------------------------------------
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Produce one record, waiting while the local queue is full (backpressure, never a drop)."""
        self.blocked_s += kafka.produce(
            self.producer, topic, value, key, on_delivery=on_delivery, while_full=self.check
        )

    def publish(self, key: bytes | str, value: bytes, on_delivery: DeliveryCallback | None = None) -> None:
        """Produce a post to the raw topic; ``on_delivery`` (if any) hears its own acknowledgement."""
        if not self.success_reports:
            if on_delivery is not None:
                raise ValueError("per-message delivery callbacks need a Publisher with success_reports")
            self.produce(self.topic, key, value)  # type: ignore[arg-type]
            self._produced += 1
            self._sample += 1
            if self._sample >= _LATENCY_SAMPLE:
                self._sample = 0
                self._checkpoints.append((self._produced, time.perf_counter()))
            return
        self._sample += 1
        if on_delivery is not None or self._sample >= _LATENCY_SAMPLE:
            self._sample = 0
            on_delivery = self._timed(time.perf_counter(), on_delivery)
        self.produce(self.topic, key, value, on_delivery)  # type: ignore[arg-type]

    def delete(self, key: bytes | str, on_delivery: DeliveryCallback | None = None) -> None:
        """Publish a deletion: a tombstone (no value) keyed by the deleted post's id."""
        self.produce(self.topic, key.encode() if isinstance(key, str) else key, None, on_delivery)

    def publish_many(self, posts: Iterable[Post]) -> None:
        """``publish`` for a batch of ``Post``s."""
        posts = list(posts)
        self.publish_batch([post.key for post in posts], [post.value for post in posts])

    def publish_batch(self, keys: Sequence[bytes | str], values: Sequence[bytes]) -> None:
        """``publish`` for a batch (keys: post ids, as str or bytes), with the per-post work kept to the
        produce call itself."""
        produce = self.producer.produce
        topic = self.topic
        if not self.success_reports:
            for key, value in zip(keys, values, strict=True):
                try:
                    produce(topic, value, key)
                except BufferError:
                    self.produce(topic, key, value)  # type: ignore[arg-type]
            self._produced += len(keys)
            if keys:
                self._checkpoints.append((self._produced, time.perf_counter()))
            return
        for key, value in zip(keys, values, strict=True):
            self._sample += 1
            if self._sample >= _LATENCY_SAMPLE:
                self.publish(key, value)
                continue
            try:
                produce(topic, value, key)
            except BufferError:
                self.produce(topic, key, value)  # type: ignore[arg-type]

    def delivery(self, then: DeliveryCallback) -> DeliveryCallback:
        """A per-message callback for a raw-topic post that also does the producer-wide bookkeeping."""
        if not self.success_reports:
            raise ValueError("per-message delivery callbacks need a Publisher with success_reports")
        return self._timed(time.perf_counter(), then)

    def _timed(self, started: float, then: DeliveryCallback | None) -> DeliveryCallback:
        # A per-message callback replaces the producer-wide one, so it does that one's work too.
        def done(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self._latency.observe(time.perf_counter() - started)
            self._delivered(err, msg)
            if then is not None:
                then(err, msg)

        return done

    def dead_letter(self, letter: DeadLetter, on_delivery: DeliveryCallback | None = None) -> None:
        self.dead_lettered += 1
        letter = self.privacy.dead_letter(letter)  # sealed or redacted when PRIVACY__* say so
        kafka.publish_dead_letter(self.producer, self.dlq, letter, on_delivery, while_full=self.check)

    def poll(self, timeout: float = 0) -> None:
        """Serve delivery reports and export counters; call it often (a few times per batch)."""
        self.producer.poll(timeout)
        while self._rejected:
            self.dead_letter(self._rejected.pop(0))
        self._queue.set(len(self.producer))
        self.flush_metrics()

    def flush_metrics(self) -> None:
        """Move the delivered count into the Prometheus counter (batched: a Counter.inc per post costs)."""
        with self._lock:
            published = self.published
            pending = published - self._exported
            if pending > 0:
                self._published_metric.inc(pending)
                self._exported = published
            checkpoints = self._checkpoints
            if checkpoints and checkpoints[0][0] <= published:
                now = time.perf_counter()
                while checkpoints and checkpoints[0][0] <= published:
                    self._latency.observe(now - checkpoints.popleft()[1])

    def flush(self, timeout: float) -> int:
        """Wait for every in-flight record to be acknowledged; returns how many are still in flight."""
        remaining = int(self.producer.flush(timeout))
        if self._rejected:
            self.poll()
            remaining = int(self.producer.flush(timeout))
        self._queue.set(remaining)
        self.flush_metrics()
        return remaining

    def close(self) -> None:
        """Release the producer now (it and this object reference each other through the delivery
        callback, so without this only a GC pass would disconnect it). Flush first."""
        producer = self.__dict__.pop("producer", None)
        if producer is not None:
            # A producer in a fatal state raises its error again from poll: it is closing anyway.
            with contextlib.suppress(KafkaException):
                producer.poll(0)
            self._abandoned = len(producer)  # never acknowledged: not published
            del producer

    def in_flight(self) -> int:
        return len(self.producer)

    def wait_ready(self, timeout: float) -> None:
        """Fail fast (with a message) when the broker or the topic is not there."""
        try:
            md = self.producer.list_topics(self.topic, timeout=timeout)
        except KafkaException as exc:
            raise PublishError(
                f"cannot reach the broker at {self.settings.kafka.bootstrap_servers}: {exc}"
            ) from None
        topic = md.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise PublishError(f"topic {self.topic} is not there: run 'pulse topics apply'")


def count(outcome: str, n: int = 1) -> None:
    if n:
        metrics.MESSAGES.labels(STAGE, outcome).inc(n)
