"""`pulse streams rebuild`: recompute the trend store from ``posts.enriched`` after Redis lost its data.

Reads each partition from the first offset at or after ``--from`` (or the earliest one kept) up to
the end the topic had when the rebuild started, through the same planning and Lua writes as the
stage (so it is effectively once too, and counts come out as the stage would have made them), then
leaves the applied offsets where it stopped: a streams process started afterwards resumes there.
Late and undecodable records are counted but not dead-lettered again (they were when first seen).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from pulse import redis_client
from pulse.retry import call_with_retries
from pulse.settings import Settings
from schemas import Alert, DecodeError, decode
from schemas.views import read_enriched
from streams import STAGE
from streams.aggregate import Record, sample_doc
from streams.detect import remember_alert
from streams.keys import Keys
from streams.store import RedisTrendStore

log = logging.getLogger("pulse.streams")


class RebuildError(RuntimeError):
    """The rebuild cannot start; the message says what to do."""


def parse_since(text: str | None) -> datetime | None:
    """``--from``: an ISO 8601 time with an offset, or None / 'earliest' for the topic's start."""
    if text is None or text.strip().lower() == "earliest":
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RebuildError(
            f"--from {text!r}: expected an ISO 8601 time such as 2026-12-01T09:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise RebuildError(f"--from {text!r}: give a timezone offset (add 'Z' for UTC)")
    return when.astimezone(UTC)


def store_keys(client: redis_client.redis.Redis, keys: Keys) -> list[bytes]:
    """Every key of the store's shards (counts, samples, offsets) and its duplicate marks; not the
    detectors' records."""
    found: list[bytes] = []
    for shard in range(keys.shards):
        found += list(client.scan_iter(match=f"{keys.tag(shard)}:*", count=1000))
    found += list(client.scan_iter(match=f"{keys.prefix}:{{d*}}:u:*", count=1000))
    return found


class _Progress:
    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.started = self._last = time.monotonic()

    def add(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is None or (not final and now - self._last < 0.5):
            return
        self._last = now
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        rate = self.done / max(now - self.started, 1e-6)
        self.stream.write(f"\r[{bar:<30}] {self.done:,}/{self.total:,} posts  {rate:,.0f}/s   ")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def rebuild(settings: Settings, *, since: str | None, wipe: bool, progress: bool | None) -> int:
    start_time = parse_since(since)
    cfg = settings.streams
    keys = Keys(settings.redis.key_prefix, shards=cfg.shards)
    client = redis_client.client(settings, socket_timeout=30, socket_connect_timeout=5)
    if not redis_client.ready(settings):
        raise RebuildError(f"Redis at {settings.redis.shown_url} is not reachable")
    existing = store_keys(client, keys)
    if existing and not wipe:
        raise RebuildError(
            f"the trend store under {keys.prefix!r} is not empty ({len(existing)} keys): stop the streams "
            "processes and pass --wipe to delete it first"
        )
    for i in range(0, len(existing), 500):
        client.delete(*existing[i : i + 500])
    store = RedisTrendStore.for_stage(client, keys, cfg)
    topic = settings.topics.enriched
    consumer = Consumer(
        settings.kafka.config(
            **{
                "group.id": f"pulse-streams-rebuild-{uuid.uuid4().hex[:8]}",  # never commits: assign() only
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RebuildError(f"topic {topic} is not there: run 'pulse topics apply'")
        partitions = sorted(metadata.partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15) for p in partitions}
        if start_time is None:
            starts = {p: ends[p][0] for p in partitions}
        else:
            ms = int(start_time.timestamp() * 1000)
            found = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in partitions], timeout=15)
            starts = {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition][1]) for tp in found}
        todo = {p: (starts[p], ends[p][1]) for p in partitions if starts[p] < ends[p][1]}
        total = sum(end - begin for begin, end in todo.values())
        store.load([(topic, p) for p in partitions])
        show = sys.stderr.isatty() if progress is None else progress
        bar = _Progress(total, sys.stderr if show else None)
        log.info(
            "rebuild started",
            extra={"stage": STAGE, "topic": topic, "posts": total, "since": start_time or "earliest"},
        )
        if todo:
            consumer.assign(
                [
                    TopicPartition(topic, p, begin if begin >= 0 else OFFSET_BEGINNING)
                    for p, (begin, _) in todo.items()
                ]
            )
        counted = late = dead = duplicates = 0
        remaining = dict(todo)
        while remaining:
            messages = consumer.consume(num_messages=cfg.batch_size, timeout=1.0)
            records: list[Record] = []
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                p, offset = msg.partition() or 0, msg.offset() or 0
                if p not in remaining or offset >= remaining[p][1]:
                    continue
                record = Record(topic, p, offset, msg.value(), msg.key())
                if record.value is not None:  # None: a tombstone, applied below
                    try:
                        record.view = read_enriched(record.value)
                    except DecodeError as exc:
                        record.error = exc
                records.append(record)
                if offset + 1 >= remaining[p][1]:
                    del remaining[p]
            if not records:
                continue
            wall_ms = int(time.time() * 1000)
            result = call_with_retries(
                lambda records=records, wall_ms=wall_ms: store.apply(records, wall_ms),  # type: ignore[misc]
                redis_client.TRANSIENT_ERRORS,
                budget_s=cfg.redis_retry_s,
                what="rebuild batch",
                extra={"stage": STAGE},
            )
            if result.plan.gaps:  # the consumer skipped records: never seen with assign(), but never silent
                raise RebuildError(
                    f"records missing from {topic} (partition: first missing) {result.plan.gaps}"
                )
            # Deleted posts stay out of the rebuilt samples; edited ones show their latest text.
            deleted = sorted({r.key.decode(errors="replace") for r in records if r.value is None and r.key})
            edited = {r.view.post.id: sample_doc(r.view) for r in records if r.view and r.view.post.edited_at}
            if deleted or edited:

                def revise(deleted: list[str] = deleted, edited: dict[str, bytes] = edited) -> None:
                    store.forget_posts(deleted)
                    store.revise_posts(edited)

                call_with_retries(
                    revise,
                    redis_client.TRANSIENT_ERRORS,
                    budget_s=cfg.redis_retry_s,
                    what="rebuild deletions and edits",
                    extra={"stage": STAGE},
                )
            counted += result.plan.counted
            late += len(result.plan.late)
            dead += len(result.plan.dead)
            duplicates += result.plan.duplicates
            bar.add(len(records))
        bar.add(0, final=True)
    finally:
        consumer.close()
    print(
        f"rebuilt {topic}: {counted:,} posts counted, {duplicates:,} duplicates, {late:,} late, "
        f"{dead:,} undecodable"
    )
    restored = restore_alerts(settings, client, keys)
    print(f"restored {restored:,} alerts from {settings.topics.alerts} (and their subjects' cool-downs)")
    return 0


def restore_alerts(settings: Settings, client: redis_client.redis.Redis, keys: Keys) -> int:
    """Put back what Redis keeps of every alert on the alerts topic (compacted: the latest version of
    each id) whose evidence has not expired: the alert for the API, the post index a deletion uses,
    and the cool-downs, so a spike still going on after Redis lost its data is not raised again."""
    topic, keep = settings.topics.alerts, settings.alerts.retention_s
    consumer = Consumer(
        settings.kafka.config(
            **{"group.id": f"pulse-streams-rebuild-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
    )
    latest: dict[str, bytes | None] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RebuildError(f"topic {topic} is not there: run 'pulse topics apply'")
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            for p in metadata.partitions
        }
        remaining = {p: high for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        while remaining:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                if (err := msg.error()) is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                p, offset = msg.partition() or 0, msg.offset() or 0
                if (key := msg.key()) is not None:
                    latest[key.decode(errors="replace")] = msg.value()
                if p in remaining and offset + 1 >= remaining[p]:
                    del remaining[p]
    finally:
        consumer.close()
    now = time.time()
    alerts = []
    for value in latest.values():
        if value is None:
            continue
        try:
            alerts.append((decode(value, Alert), value))
        except DecodeError:
            continue  # not ours to judge here: the topic's consumers dead-letter it
    pipe = client.pipeline(transaction=False)
    restored = 0
    for alert, value in sorted(alerts, key=lambda av: av[0].window.end):  # the latest end is the cool-down
        left = keep - int(now - alert.created_at.timestamp())
        if left > 0:
            remember_alert(pipe, keys, alert, value, left)
            restored += 1
    pipe.execute()
    return restored
