"""`pulse dead-letters`: the dead letters on ``posts.dlq`` as JSON Lines, sealed originals opened on request.

Reads every partition from its start to its current end (the topic keeps 14 days) and prints one JSON
object per dead letter, oldest first (``--last N``: the newest N). ``original`` is the record as text
(bytes that are not UTF-8 escaped as ``\\xNN``); a sealed original (ingest with
``PRIVACY__PSEUDONYMIZE_AUTHORS``) shows as ``original_sealed`` (base64) unless ``--unseal`` opens it
with ``PRIVACY__HMAC_KEY``.
"""

from __future__ import annotations

import base64
import heapq
import sys
import uuid
from collections.abc import Iterator
from typing import TextIO

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pulse.settings import Settings
from schemas import DeadLetter, DecodeError, decode
from workers.ingest.privacy import Sealer, SealError


def letters(settings: Settings, timeout_s: float = 15.0) -> Iterator[DeadLetter]:
    """Every dead letter on the topic now, partition by partition."""
    topic = settings.topics.dlq
    consumer = Consumer(
        settings.kafka.config(
            **{"group.id": f"pulse-dead-letters-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(f"topic {topic} is not there: run 'pulse topics apply'")
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            if low >= high:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low
            while offset < high:
                for msg in consumer.consume(500, timeout=1.0):
                    if msg.error() is not None:
                        raise KafkaException(msg.error())
                    offset = (msg.offset() or 0) + 1
                    try:
                        yield decode(msg.value() or b"", DeadLetter)
                    except DecodeError as exc:
                        where = f"{partition}@{offset - 1}"
                        print(
                            f"pulse: skipped a record that is not a DeadLetter at {where}: {exc}",
                            file=sys.stderr,
                        )
            consumer.unassign()
    finally:
        consumer.close()


def shown(letter: DeadLetter, sealer: Sealer | None) -> dict[str, object]:
    """A dead letter as printed: its fields, the original as text (opened with ``sealer`` if sealed)."""
    doc = letter.model_dump(mode="json", exclude={"original", "key"})
    original = letter.original
    if letter.sealed and sealer is not None:
        original = sealer.open(original)
        doc["sealed"] = False
    if letter.sealed and sealer is None:
        doc["original_sealed"] = base64.b64encode(original).decode()
    else:
        doc["original"] = original.decode("utf-8", "backslashreplace")
    if letter.key is not None:
        doc["key"] = letter.key.decode("utf-8", "backslashreplace")
    return doc


def run(settings: Settings, *, unseal: bool, last: int | None, out: TextIO = sys.stdout) -> int:
    sealer = None
    if unseal:
        key = settings.privacy.hmac_key
        if key is None or not key.get_secret_value():
            print("pulse: error: --unseal needs PRIVACY__HMAC_KEY (the key the originals were sealed with)",
                  file=sys.stderr)  # fmt: skip
            return 2
        sealer = Sealer(key.get_secret_value().encode())
    found = letters(settings)
    chosen = (
        sorted(heapq.nlargest(last, found, key=lambda d: d.failed_at), key=lambda d: d.failed_at)
        if last
        else found
    )
    printed = 0
    try:
        for letter in chosen:
            out.write(orjson.dumps(shown(letter, sealer)).decode() + "\n")
            printed += 1
    except SealError as exc:
        print(f"pulse: error: {exc}", file=sys.stderr)
        return 1
    print(f"{printed:,} dead letters on {settings.topics.dlq}", file=sys.stderr)
    return 0
