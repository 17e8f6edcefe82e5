"""Posts deleted at their source (tombstones on ``posts.enriched``): what the streams stage forgets.

A tombstone is applied like any record (its offset advances exactly once) and then, after the batch's
write, its post is removed from every sample that holds it (``RedisTrendStore.forget_posts``) and
every alert whose evidence showed it is re-published under the same id without it: to the alerts
topic (compacted by id, so the old version goes), to the alert the API reads, and to the events
stream the dashboard follows. Both steps are idempotent, so a replay after a crash repeats them
harmlessly. Counts keep the post: they are aggregates that name no one (docs/privacy.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from confluent_kafka import KafkaError, Message, Producer

from pulse import kafka
from schemas import Alert, decode, encode
from streams import STAGE
from streams.detect import EVENTS_KEPT
from streams.keys import Keys

log = logging.getLogger("pulse.streams")


class RepublishFailed(RuntimeError):
    """A re-published alert was not acknowledged: the deletion is retried with the batch."""


def scrub_alerts(
    client: redis.Redis, keys: Keys, producer: Producer, topic: str, post_ids: Sequence[str], timeout_s: float
) -> list[str]:
    """Re-publish every alert whose evidence shows one of ``post_ids`` without those posts; their ids."""
    gone = set(post_ids)
    members = [m for pid in gone for m in client.smembers(keys.alerts_with(pid))]
    alert_ids = sorted({m.decode() if isinstance(m, bytes) else str(m) for m in members})
    changed: list[tuple[str, bytes]] = []
    for alert_id in alert_ids:
        value = client.get(keys.alert(alert_id))
        if value is None:  # expired (ALERTS__RETENTION_S)
            continue
        alert = decode(value, Alert)
        kept = tuple(s for s in alert.evidence.samples if s.id not in gone)
        if len(kept) == len(alert.evidence.samples):
            continue
        evidence = alert.evidence.model_copy(update={"samples": kept})
        changed.append((alert_id, encode(alert.model_copy(update={"evidence": evidence}))))
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    for alert_id, value in changed:
        kafka.produce(producer, topic, value, alert_id.encode(), on_delivery=delivered)
    left = producer.flush(timeout_s) if changed else 0
    if left or failures:
        raise RepublishFailed(f"{left or len(failures)} re-published alerts not delivered: {failures[:1]}")
    pipe = client.pipeline(transaction=False)
    for alert_id, value in changed:
        pipe.set(keys.alert(alert_id), value, keepttl=True)
        pipe.xadd(keys.events(), {"type": "alert", "data": value}, maxlen=EVENTS_KEPT, approximate=True)
    for pid in gone:
        pipe.delete(keys.alerts_with(pid))
    pipe.execute()
    if changed:
        log.info(
            "alerts re-published without deleted posts",
            extra={"stage": STAGE, "alerts": ",".join(a for a, _ in changed)},
        )
    return [a for a, _ in changed]
