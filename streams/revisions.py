"""Posts deleted or edited at their source: what the streams stage changes in what it keeps.

A deletion is a tombstone on ``posts.enriched`` (no value); an edit a new version of a post
(``post.edited_at`` set). Both are applied like any record (the offset advances exactly once) and
neither is counted (an edit was counted as the post it revises). After the batch's write, a deleted
post is removed from every sample that holds it and an edited one's sample shows its latest text and
sentiment (``RedisTrendStore.forget_posts`` / ``revise_posts``), and every alert whose evidence shows
either is re-published under the same id with the post removed or revised: to the alerts topic
(compacted by id, so the old version goes), to the alert the API reads, and to the events stream
the dashboard follows. All of it is idempotent (an older version never replaces a newer one), so a
replay after a crash repeats it harmlessly. Counts keep deleted posts and count an edited post
with its first version's sentiment (docs/privacy.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import redis
from confluent_kafka import KafkaError, Message, Producer

from pulse import kafka
from schemas import Alert, SamplePost, decode, encode
from streams import STAGE
from streams.detect import EVENTS_KEPT
from streams.keys import Keys

log = logging.getLogger("pulse.streams")


class RepublishFailed(RuntimeError):
    """A re-published alert was not acknowledged: the deletion is retried with the batch."""


def revise_alerts(
    client: redis.Redis,
    keys: Keys,
    producer: Producer,
    topic: str,
    deleted: Sequence[str],
    edited: Mapping[str, SamplePost],
    timeout_s: float,
) -> list[str]:
    """Re-publish every alert whose evidence shows a post of ``deleted`` (without it) or of ``edited``
    (with its newer version); the ids of the alerts that changed."""
    gone = set(deleted)
    wanted = gone | set(edited)
    members = [m for pid in wanted for m in client.smembers(keys.alerts_with(pid))]
    alert_ids = sorted({m.decode() if isinstance(m, bytes) else str(m) for m in members})
    changed: list[tuple[str, bytes]] = []
    for alert_id in alert_ids:
        value = client.get(keys.alert(alert_id))
        if value is None:  # expired (ALERTS__RETENTION_S)
            continue
        alert = decode(value, Alert)
        samples = tuple(_newest(s, edited.get(s.id)) for s in alert.evidence.samples if s.id not in gone)
        if samples == alert.evidence.samples:
            continue
        evidence = alert.evidence.model_copy(update={"samples": samples})
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
    for pid in gone:  # an edited post's alerts may need revising again
        pipe.delete(keys.alerts_with(pid))
    pipe.execute()
    if changed:
        log.info(
            "alerts re-published with deleted posts removed or edited ones revised",
            extra={"stage": STAGE, "alerts": ",".join(a for a, _ in changed)},
        )
    return [a for a, _ in changed]


def _newest(shown: SamplePost, edit: SamplePost | None) -> SamplePost:
    """The version of a post to show: the edit, unless what is shown is as new or newer."""
    if edit is None:
        return shown
    if shown.edited_at is not None and edit.edited_at is not None and shown.edited_at >= edit.edited_at:
        return shown
    return edit
