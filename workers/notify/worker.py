"""`pulse notify`: consume the alerts topic and deliver each alert to every configured webhook.

At-least-once: an alert's offset is stored only once every webhook took it, or once it is
dead-lettered (reason ``delivery_failed`` after ``NOTIFY__RETRY_S`` of retries on 5xx, timeouts and
connection failures; ``delivery_rejected`` at once on another 4xx). A webhook may therefore see an
alert twice after a crash: the ``Idempotency-Key`` header (the alert id) lets it drop the repeat.
An alert re-published under the same id is delivered again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter

from pulse import kafka, metrics
from pulse.retry import Backoff
from pulse.settings import Settings
from schemas import Alert, DecodeError, decode
from workers.notify.delivery import (
    SIGNATURE_HEADER,
    Answer,
    Webhook,
    answer,
    parse_webhook,
    signature,
    slack_message,
)

STAGE = "notify"
IDLE_REST_S = 1.0  # how long an empty poll rests the consumer: at most this much delivery latency
log = logging.getLogger("pulse.notify")
DELIVERIES = Counter("pulse_notify_deliveries_total", "Webhook deliveries by outcome.", ["format", "outcome"])


class Undeliverable(Exception):
    """A webhook did not take an alert: rejected (4xx) or still failing when the retries ran out."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Interrupted(Exception):
    """Stopping while an alert was being retried: its offset stays unstored, a restart delivers it."""


class Notifier:
    def __init__(
        self,
        settings: Settings,
        *,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.notify
        self.webhooks = [parse_webhook(spec) for spec in self.cfg.webhooks]
        self.secret = self.cfg.secret.get_secret_value().encode() if self.cfg.secret else None
        self.stopping = threading.Event()
        self.sleep = sleep or self.stopping.wait  # a stop cuts a retry's wait short
        self.failed: str | None = None
        self.http = http or httpx.Client(
            timeout=self.cfg.timeout_s, headers={"User-Agent": "social-pulse-notify/0.2"}
        )
        self.producer = producer if producer is not None else kafka.producer(settings, STAGE)
        self.consumer = consumer or kafka.consumer(settings, STAGE, self.cfg.group_id)
        self.delivered = 0

    def stop(self) -> None:
        self.stopping.set()

    def healthy(self) -> bool:
        return self.failed is None

    def run(self) -> int:
        topic = self.settings.topics.alerts
        self.consumer.subscribe([topic])
        where = (
            ", ".join(w.redacted for w in self.webhooks)
            or "nowhere (NOTIFY__WEBHOOKS is empty: alerts are logged)"
        )
        log.info("notify started", extra={"stage": STAGE, "topic": topic, "webhooks": where})
        try:
            while not self.stopping.is_set():
                batch = self.consumer.consume(num_messages=50, timeout=0.5)
                if not batch:  # alerts are rare: rest instead of re-fetching an empty topic in a loop
                    kafka.rest(self.consumer, self.stopping.wait, IDLE_REST_S)
                for msg in batch:
                    if self.stopping.is_set():
                        break  # not handled: its offset is not stored, a restart delivers it
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        continue
                    self.handle(msg)
        except KafkaException as exc:
            self.failed = str(exc)
            log.error("notify failed", extra={"stage": STAGE, "error": str(exc)})
            return 1
        finally:
            self.consumer.close()
            self.producer.flush(10)
            self.http.close()
        log.info("notify stopped", extra={"stage": STAGE, "delivered": self.delivered})
        return 0

    def handle(self, msg: Message) -> None:
        """Deliver one alert everywhere (or dead-letter it), then store its offset."""
        value = msg.value() or b""
        try:
            alert = decode(value, Alert)
        except DecodeError as exc:
            self._dead_letter(msg, "decode", str(exc))
        else:
            for hook in self.webhooks:
                try:
                    self.deliver(hook, alert, value)
                except Undeliverable as exc:
                    self._dead_letter(msg, exc.reason, f"{hook.redacted}: {exc}")
                except Interrupted:
                    log.info(
                        "stopped while retrying; the alert is delivered again after a restart",
                        extra={"stage": STAGE, "id": alert.id},
                    )
                    return
            if not self.webhooks:
                log.info(
                    "alert",
                    extra={"stage": STAGE, "id": alert.id, "kind": alert.kind, "subject": alert.subject},
                )
            self.delivered += 1
            metrics.MESSAGES.labels(STAGE, "handled").inc()
        position = TopicPartition(msg.topic() or "", msg.partition() or 0, (msg.offset() or 0) + 1)
        self.consumer.store_offsets(offsets=[position])

    def deliver(self, hook: Webhook, alert: Alert, wire: bytes) -> None:
        """POST until the webhook takes it; ``Undeliverable`` when it refuses or the retries run out."""
        body = orjson.dumps(slack_message(alert)) if hook.format == "slack" else wire
        backoff, rng = Backoff(base=1.0, cap=30.0), random.Random()
        deadline = time.monotonic() + self.cfg.retry_s
        while True:
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": alert.id,
                "X-Pulse-Alert-Id": alert.id,
            }
            if hook.format == "json" and self.secret is not None:
                headers[SIGNATURE_HEADER] = signature(self.secret, int(time.time()), body)
            try:
                status: int | None = self.http.post(hook.url, content=body, headers=headers).status_code
                problem = f"HTTP {status}"
            except httpx.HTTPError as exc:
                status, problem = None, f"{type(exc).__name__}: {exc}"
            outcome = answer(status)
            if outcome is Answer.DELIVERED:
                DELIVERIES.labels(hook.format, "delivered").inc()
                return
            if outcome is Answer.REJECTED:
                DELIVERIES.labels(hook.format, "rejected").inc()
                raise Undeliverable("delivery_rejected", f"the webhook refused the alert ({problem})")
            if self.stopping.is_set():
                raise Interrupted
            delay = backoff.next_delay(rng)
            if time.monotonic() + delay > deadline:
                DELIVERIES.labels(hook.format, "failed").inc()
                raise Undeliverable(
                    "delivery_failed", f"still failing after {self.cfg.retry_s:g} s ({problem})"
                )
            log.warning(
                "webhook failed, retrying",
                extra={
                    "stage": STAGE,
                    "webhook": hook.redacted,
                    "error": problem,
                    "retry_in_s": round(delay, 1),
                },
            )
            self.sleep(delay)

    def _dead_letter(self, msg: Message, reason: str, error: str) -> None:
        failures: list[str] = []

        def delivered(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                failures.append(err.str())

        letter = kafka.dead_letter(STAGE, reason, error, msg.value() or b"", message=msg)
        kafka.publish_dead_letter(self.producer, self.settings.topics.dlq, letter, on_delivery=delivered)
        if self.producer.flush(30) or failures:
            raise KafkaException(
                KafkaError(KafkaError._MSG_TIMED_OUT, f"dead letter not delivered: {failures[:1]}")
            )
        log.warning(
            "alert not delivered",
            extra={"stage": STAGE, "reason": reason, "error": error, "at": datetime.now(UTC).isoformat()},
        )
