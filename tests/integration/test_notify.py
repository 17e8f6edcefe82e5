"""`pulse notify` against the real broker and a local HTTP receiver: signed JSON and Slack deliveries,
retries on 5xx, dead letters for what a webhook refuses or never takes, offsets only after delivery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import SecretStr

from pulse.settings import Settings
from schemas import Alert, DeadLetter, decode, encode
from tests.factories import alert_factory
from tests.harness import WebhookReceiver as Receiver
from tests.kafka_io import read_topic
from workers.notify.delivery import SIGNATURE_HEADER, verify
from workers.notify.worker import Notifier

pytestmark = [pytest.mark.timeout(120)]
SECRET = "whsec-test"


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None) -> Receiver:
        server = Receiver(statuses)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def publish(settings: Settings, alerts: list[Alert]) -> None:
    producer = Producer(settings.kafka.config())
    for alert in alerts:
        producer.produce(settings.topics.alerts, encode(alert), alert.id.encode())
    assert producer.flush(30) == 0


def run_until(notifier: Notifier, done: Callable[[], bool], timeout: float = 60) -> int:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(notifier.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    notifier.stop()
    thread.join(30)
    assert result, "notify did not stop"
    return result[0]


def notifier(settings: Settings, *webhooks: str, retry_s: float = 30.0) -> Notifier:
    update = {
        "webhooks": webhooks,
        "secret": SecretStr(SECRET),
        "retry_s": retry_s,
        "group_id": f"n-{settings.topics.alerts}",
    }
    cfg = settings.notify.model_copy(update=update)
    # Backoff sleeps shortened: the retry budget still counts real time.
    return Notifier(settings.model_copy(update={"notify": cfg}), sleep=lambda s: time.sleep(min(s, 0.05)))


def test_each_alert_reaches_a_json_webhook_signed_and_a_slack_webhook_formatted(
    settings: Settings, receiver: Callable[..., Receiver]
) -> None:
    hook, slack = receiver(), receiver()
    alerts = [alert_factory(id=f"a{i}") for i in range(3)]
    publish(settings, alerts)
    n = notifier(
        settings, f"http://127.0.0.1:{hook.port}/hook", f"slack+http://127.0.0.1:{slack.port}/services/T/B/X"
    )
    assert run_until(n, lambda: len(hook.requests) == 3 and len(slack.requests) == 3) == 0
    for (path, headers, body), alert in zip(hook.requests, alerts, strict=True):
        assert path == "/hook" and decode(body, Alert) == alert  # the alert as published
        assert headers["Idempotency-Key"] == alert.id
        assert verify(SECRET.encode(), headers[SIGNATURE_HEADER], body, int(time.time()))
        assert not verify(b"another key", headers[SIGNATURE_HEADER], body, int(time.time()))
        assert not verify(SECRET.encode(), headers[SIGNATURE_HEADER], body + b" ", int(time.time()))
    message = orjson.loads(slack.requests[0][2])
    assert message["text"].startswith("Negative spike: Acme") and message["blocks"][0]["type"] == "section"
    assert SIGNATURE_HEADER not in slack.requests[0][1]
    committed = n_committed(settings, n)
    assert committed == 3  # every offset stored once delivered


def n_committed(settings: Settings, n: Notifier) -> int:
    c = Consumer(settings.kafka.config(**{"group.id": n.cfg.group_id}))
    try:
        parts = c.committed([TopicPartition(settings.topics.alerts, 0)], timeout=10)
        return max(parts[0].offset, 0)
    finally:
        c.close()


def test_a_5xx_is_retried_until_the_webhook_takes_the_alert(
    settings: Settings, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([503, 500, 502])
    publish(settings, [alert_factory(id="retry-me")])
    n = notifier(settings, f"http://127.0.0.1:{hook.port}/")
    assert run_until(n, lambda: len(hook.requests) == 4) == 0
    assert [decode(b, Alert).id for _, _, b in hook.requests] == ["retry-me"] * 4
    assert read_topic(settings, settings.topics.dlq, 0, to_end=True) == []


def test_what_a_webhook_refuses_or_never_takes_is_dead_lettered_and_the_stream_moves_on(
    settings: Settings, receiver: Callable[..., Receiver]
) -> None:
    refuses = receiver([400])
    publish(settings, [alert_factory(id="refused")])
    n = notifier(settings, f"http://127.0.0.1:{refuses.port}/")
    assert run_until(n, lambda: bool(read_topic(settings, settings.topics.dlq, 0, to_end=True))) == 0
    down = receiver([503] * 1000)
    publish(settings, [alert_factory(id="never")])
    n = notifier(settings, f"http://127.0.0.1:{down.port}/", retry_s=0.5)
    assert run_until(n, lambda: len(read_topic(settings, settings.topics.dlq, 0, to_end=True)) == 2) == 0
    letters = [decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, 2, to_end=True)]
    assert [(d.stage, d.reason, decode(d.original, Alert).id) for d in letters] == [
        ("notify", "delivery_rejected", "refused"),
        ("notify", "delivery_failed", "never"),
    ]
    assert "HTTP 400" in letters[0].error and "HTTP 503" in letters[1].error


def test_stopping_mid_retry_dead_letters_nothing_and_a_restart_delivers_the_alert(
    settings: Settings, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([503] * 5)
    publish(settings, [alert_factory(id="in-hand")])
    first = notifier(settings, f"http://127.0.0.1:{hook.port}/", retry_s=300)
    assert run_until(first, lambda: len(hook.requests) >= 2) == 0  # stopped while it was retrying
    assert read_topic(settings, settings.topics.dlq, 0, to_end=True) == []
    assert n_committed(settings, first) == 0  # not handled: its offset was not stored
    hook.statuses.clear()
    again = notifier(settings, f"http://127.0.0.1:{hook.port}/")
    seen = len(hook.requests)
    assert run_until(again, lambda: len(hook.requests) > seen) == 0
    assert decode(hook.requests[-1][2], Alert).id == "in-hand" and n_committed(settings, again) == 1
