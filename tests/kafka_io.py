"""Reading a topic back in integration and e2e tests: every record, and a pause to catch extras."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from pulse.settings import Settings


def read_topic(
    settings: Settings,
    topic: str,
    expect: int,
    timeout: float = 30.0,
    settle: float = 1.0,
    *,
    to_end: bool = False,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) on ``topic``: waits for ``expect`` records, then ``settle`` s more for extras
    (so a test that counts duplicates sees them).

    ``to_end``: for a topic whose writers have finished. Once ``expect`` records are there (or at the
    ``timeout``), reads exactly up to the high watermarks instead of settling: an empty topic reads
    back ``[]`` having really looked, which a subscription still joining its group would not have.
    """
    consumer = Consumer(
        settings.kafka.config(
            **{
                "group.id": f"t-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    deadline = time.monotonic() + timeout
    try:
        if to_end:
            return _to_high_watermarks(consumer, topic, expect, deadline)
        consumer.subscribe([topic])
        out: list[tuple[bytes | None, bytes]] = []
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
            if len(out) >= expect:
                quiet_until = quiet_until or time.monotonic() + settle
                if time.monotonic() >= quiet_until:
                    break
        return out
    finally:
        consumer.close()


def _to_high_watermarks(
    consumer: Consumer, topic: str, expect: int, deadline: float
) -> list[tuple[bytes | None, bytes]]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    while True:
        highs = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        }
        if sum(highs.values()) >= expect or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    consumer.assign([TopicPartition(topic, p, 0) for p in highs])
    out: list[tuple[bytes | None, bytes]] = []
    positions = dict.fromkeys(highs, 0)
    # Reading what is already there takes seconds at most: the extra 30 s only bound a broker gone wrong.
    while any(positions[p] < highs[p] for p in highs) and time.monotonic() < deadline + 30:
        for msg in consumer.consume(1000, timeout=0.5):
            assert msg.error() is None, msg.error()
            partition, offset = msg.partition() or 0, msg.offset() or 0
            positions[partition] = offset + 1
            if offset < highs[partition]:
                out.append((msg.key(), msg.value()))
    return out
