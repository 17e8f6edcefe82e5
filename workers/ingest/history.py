"""Warm the dedup window from the newest keys of posts.raw, so a re-run does not republish a replay."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pulse import kafka
from pulse.settings import Settings
from workers.ingest.dedup import RecentIds
from workers.ingest.pipeline import STAGE

log = logging.getLogger(__name__)


def warm_dedup(settings: Settings, recent: RecentIds, limit: int, timeout: float = 30.0) -> int:
    """Add the keys of up to ``limit`` newest records (split across partitions) to ``recent``; how many."""
    if limit <= 0:
        return 0
    consumer = kafka.consumer(
        settings,
        STAGE,
        group_id="pulse-ingest-warm",
        **{
            "enable.auto.commit": False,
            "fetch.max.bytes": 16 << 20,
            "enable.partition.eof": True,
        },
    )
    try:
        topic = settings.topics.raw
        md = consumer.list_topics(topic, timeout=10)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        per_partition = max(1, limit // max(1, len(meta.partitions)))
        assignment = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                assignment.append(TopicPartition(topic, p, max(low, high - per_partition)))
        if not assignment:
            return 0
        consumer.assign(assignment)
        open_partitions = {tp.partition for tp in assignment}
        added = 0
        deadline = time.monotonic() + timeout
        while open_partitions and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(msg.partition())
                        continue
                    raise KafkaException(err)
                key = msg.key()
                if key is not None:
                    recent.add(key.decode("utf-8", errors="replace"))
                    added += 1
        if open_partitions:
            log.warning("dedup warm-up timed out", extra={"stage": STAGE, "keys": added})
        return added
    finally:
        consumer.close()
