"""Reading a topic back in integration and e2e tests: every record, and a pause to catch extras."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer

from pulse.settings import Settings


def read_topic(
    settings: Settings, topic: str, expect: int, timeout: float = 30.0, settle: float = 1.0
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) on ``topic``: waits for ``expect`` records, then ``settle`` s more for extras
    (so a test that counts duplicates sees them)."""
    consumer = Consumer(
        settings.kafka.config(
            **{
                "group.id": f"t-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
            if len(out) >= expect:
                quiet_until = quiet_until or time.monotonic() + settle
                if time.monotonic() >= quiet_until:
                    break
    finally:
        consumer.close()
    return out
