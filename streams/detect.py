"""The detectors' shell: every step of event time, trend snapshots and spike alerts from the trend store.

Runs in the streams process that owns partition 0 of ``posts.enriched`` (one leader per group,
handed over with the partition on a rebalance). Each tick reads the watermark; every step end the
watermark has passed gets a *final* snapshot per window size and an alert check; the step still
filling gets a provisional snapshot once. Progress (the last final step done, per window size and
for alerts) and the alerts' cool-downs live in Redis, so a restarted or new leader goes on where the
last one stopped: an alert is published at most once per id (a crash between its delivery and the
record of it can publish the same id again; consumers key alerts by id).

Published records go to Kafka (``trends`` keyed ``<size>:<window start>``, ``alerts`` keyed by id) and,
once delivered, to Redis: the latest snapshot per window size, the alerts (by id, indexed by window
end) and the events stream the API's server-sent events read (``XADD``, capped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter

from pulse import kafka
from pulse.settings import Settings
from schemas import (
    Alert,
    Evidence,
    NameCount,
    SamplePost,
    SentimentCounts,
    TermCount,
    TrendSnapshot,
    Window,
    encode,
)
from streams import STAGE
from streams.buckets import Window as Span
from streams.buckets import step_ends, window_ending
from streams.keys import Keys
from streams.read import TrendReader
from streams.spikes import Finding, Rule, alert_id, baseline_share, cooled_down, sentiment_spike, volume_spike
from streams.terms import KINDS

log = logging.getLogger("pulse.streams")

ALERTS = Counter(
    "pulse_alerts_total", "Alerts raised, by kind and subject.", ["kind", "subject_kind", "subject"]
)
SNAPSHOTS = Counter("pulse_trend_snapshots_total", "Trend snapshots published.", ["window_s", "final"])
MAX_BACKLOG_STEPS = 30  # after a long stop, the newest steps are evaluated, the rest skipped (logged)
STEPS_PER_TICK = 2  # live, event time moves 1 s a second (a step per 10 ticks); catching up is spread out
EVENTS_KEPT = 10_000  # entries of the events stream (server-sent events replay from it)


class DeliveryFailed(RuntimeError):
    """A snapshot or an alert was not acknowledged: nothing is recorded, the step is done again."""


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _window(span: Span) -> Window:
    return Window(start=_dt(span.start), end=_dt(span.end), size_s=span.size)


class Detector:
    def __init__(
        self,
        settings: Settings,
        reader: TrendReader,
        client: redis.Redis,
        keys: Keys,
        producer: Producer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.trends = settings.trends
        self.alerts = settings.alerts
        self.reader = reader
        self.client = client
        self.keys = keys
        self.producer = producer
        self.clock = clock
        self.rule = Rule(
            min_volume=self.alerts.min_volume,
            min_baseline_volume=self.alerts.min_baseline_volume,
            min_share_delta=self.alerts.min_share_delta,
            min_volume_ratio=self.alerts.min_volume_ratio,
            z=self.alerts.z,
        )
        self._provisional: dict[int, int] = {}  # window size -> the open step last published

    # -- the tick ---------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Everything due at this moment: final snapshots, alert checks, one provisional snapshot."""
        watermark_ms = self.reader.watermark_ms(int(self.clock() * 1000))
        if watermark_ms is None:
            return
        step = self.trends.step_s
        done_until = watermark_ms // 1000 // step * step
        raw = self.client.hgetall(self.keys.detector_state())
        state = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
        open_end = -(-self.reader.now_s() // step) * step
        for size in self.trends.windows:
            due = self._due(state.get(f"trends:{size}"), done_until, f"trends:{size}")
            for end in due[:STEPS_PER_TICK]:
                self.snapshot(size, end, watermark_ms, final=True)
                self.client.hset(self.keys.detector_state(), f"trends:{size}", end)
            # A provisional snapshot of the step still filling, once, when the finals are caught up (a
            # stream replayed faster than real time would otherwise pay for one at every step).
            caught_up = len(due) <= STEPS_PER_TICK
            if caught_up and open_end > done_until and self._provisional.get(size) != open_end:
                self.snapshot(size, open_end, watermark_ms, final=False)
                self._provisional[size] = open_end
        for end in self._due(state.get("alerts"), done_until, "alerts")[:STEPS_PER_TICK]:
            self.check_alerts(end)
            self.client.hset(self.keys.detector_state(), "alerts", end)

    def _due(self, last: int | None, until: int, what: str) -> list[int]:
        step = self.trends.step_s
        ends = step_ends(last if last is not None else until - step, until, step)
        if len(ends) > MAX_BACKLOG_STEPS:
            log.warning(
                "detector behind: skipping old steps",
                extra={"stage": STAGE, "what": what, "skipped": len(ends) - MAX_BACKLOG_STEPS},
            )
            ends = ends[-MAX_BACKLOG_STEPS:]
        return ends

    # -- trends -----------------------------------------------------------------------------------------
    def snapshot(self, size: int, end_s: int, watermark_ms: int, final: bool) -> TrendSnapshot:
        """Score every kind's terms in the window ``[end - size, end)`` and publish the snapshot."""
        reader, cfg = self.reader, self.trends
        window = window_ending(end_s, size)
        terms = reader.trending_under(KINDS, window, cfg, k=cfg.top_k)
        snapshot = TrendSnapshot(
            window=_window(window),
            final=final,
            watermark=_dt(watermark_ms / 1000),
            terms=tuple(terms),
            generated_at=_dt(self.clock()),
        )
        value = encode(snapshot)
        key = f"{size}:{snapshot.window.start.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        self._deliver(self.settings.topics.trends, key.encode(), value)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.snapshot(size), value)
        pipe.xadd(self.keys.events(), {"type": "trend", "data": value}, maxlen=EVENTS_KEPT, approximate=True)
        pipe.execute()
        SNAPSHOTS.labels(str(size), str(final).lower()).inc()
        return snapshot

    # -- alerts -----------------------------------------------------------------------------------------
    def check_alerts(self, end_s: int) -> list[Alert]:
        """Raise the alerts due for the window ending at ``end_s`` (a final step)."""
        cfg, reader = self.alerts, self.reader
        window = window_ending(end_s, cfg.window_s)
        base = window_ending(window.start, cfg.baseline_s)
        totals = reader.totals(base)
        all_posts = totals.get("n", 0)
        covered = reader.covered_s(base)
        if all_posts < self.rule.min_baseline_volume or covered < cfg.baseline_s // 2:
            return []  # not enough history before this window to tell a spike from a start
        raised = []
        for kind in ("brand", "keyword"):
            subjects = [t for t, _ in reader.top(kind, window, 200, min_count=cfg.min_volume)]
            if not subjects:
                continue
            now = reader.sentiment(kind, subjects, window)
            before = reader.sentiment(kind, subjects, base)
            before_n = reader.counts(kind, subjects, base)
            for subject in subjects:
                mentions = sum(now[subject].values())
                baseline_mentions = before_n[subject] * cfg.window_s / covered
                findings: list[tuple[Finding, float]] = []
                for label in ("negative", "positive"):
                    share0 = baseline_share(
                        before[subject][label],
                        before_n[subject],
                        totals.get(f"s\x1f{label}", 0) / all_posts,
                        self.rule.min_baseline_volume,
                    )
                    found = sentiment_spike(label, now[subject][label], mentions, share0, self.rule)
                    if found is not None:
                        findings.append((found, share0))
                found = volume_spike(mentions, baseline_mentions, self.rule)
                if found is not None:
                    neg0 = before[subject]["negative"] / before_n[subject] if before_n[subject] else 0.0
                    findings.append((found, neg0))
                for finding, share0 in findings:
                    alert = self._raise(
                        kind, subject, window, base, finding, share0, now[subject], baseline_mentions
                    )
                    if alert is not None:
                        raised.append(alert)
        return raised

    def _raise(
        self,
        kind: str,
        subject: str,
        window: Span,
        base: Span,
        finding: Finding,
        share0: float,
        counts: dict[str, int],
        baseline_mentions: float,
    ) -> Alert | None:
        cooldown = self.keys.cooldown(finding.kind, kind, subject)
        last = self.client.get(cooldown)
        if not cooled_down(int(last) if last is not None else None, window.end, self.alerts.cooldown_s):
            return None
        summary = self.reader.summary(kind, subject, window, co_terms=5, samples=50)
        order = {
            "negative_sentiment": lambda s: -float(s.get("negative") or 0.0),
            "positive_sentiment": lambda s: -float(s.get("positive") or 0.0),
        }.get(finding.kind, lambda s: -_dt_ms(s.get("created_at")))
        samples = sorted(summary.samples, key=order)[: self.alerts.samples]
        alert = Alert(
            id=alert_id(finding.kind, kind, subject, window.start, window.size),
            kind=finding.kind,
            subject=subject,
            subject_kind=kind,
            window=_window(window),
            metric=finding.metric,
            observed=finding.observed,
            baseline=finding.baseline,
            score=finding.score,
            effect=finding.effect,
            evidence=Evidence(
                counts=SentimentCounts(**{k: counts.get(k, 0) for k in ("negative", "neutral", "positive")}),
                mentions=sum(counts.values()),
                baseline_mentions=round(baseline_mentions, 3),
                baseline_share=round(min(max(share0, 0.0), 1.0), 4),
                baseline_window=_window(base),
                samples=tuple(SamplePost.model_validate(s) for s in samples),
                co_terms=tuple(TermCount(term=t, kind=k, count=n) for k, t, n in summary.co_terms),
                platforms=tuple(NameCount(name=n, count=c) for n, c in list(summary.platforms.items())[:5]),
                languages=tuple(NameCount(name=n, count=c) for n, c in list(summary.languages.items())[:5]),
                authors=summary.authors,
            ),
            created_at=_dt(self.clock()),
        )
        value = encode(alert)
        self._deliver(self.settings.topics.alerts, alert.id.encode(), value)
        pipe = self.client.pipeline(transaction=False)
        remember_alert(pipe, self.keys, alert, value, self.settings.alerts.retention_s)
        pipe.xadd(self.keys.events(), {"type": "alert", "data": value}, maxlen=EVENTS_KEPT, approximate=True)
        pipe.execute()
        ALERTS.labels(finding.kind, kind, subject).inc()
        log.warning(
            "alert",
            extra={
                "stage": STAGE,
                "id": alert.id,
                "kind": finding.kind,
                "subject": subject,
                "observed": finding.observed,
                "baseline": finding.baseline,
                "score": finding.score,
            },
        )
        return alert

    def _deliver(self, topic: str, key: bytes, value: bytes) -> None:
        failures: list[str] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        kafka.produce(self.producer, topic, value, key, on_delivery=delivered)
        left = self.producer.flush(self.settings.kafka.producer.delivery_timeout_ms / 1000)
        if left or failures:
            raise DeliveryFailed(f"{topic}: {failures[:1] or 'not acknowledged in time'}")


def remember_alert(pipe: Any, keys: Keys, alert: Alert, value: bytes, keep_s: int) -> None:
    """Queue on ``pipe`` what Redis keeps of a published alert: the alert, its place in the index, the
    posts its evidence shows (where a deletion finds it) and its subject's cool-down. ``keep_s``: how
    long the evidence stays (it holds post texts: it expires, for privacy)."""
    end = int(alert.window.end.timestamp())
    pipe.set(keys.alert(alert.id), value, ex=keep_s)
    pipe.zadd(keys.alert_index(), {alert.id: end})
    pipe.zremrangebyscore(keys.alert_index(), "-inf", end - keep_s)
    for sample in alert.evidence.samples:
        pipe.sadd(keys.alerts_with(sample.id), alert.id)
        pipe.expire(keys.alerts_with(sample.id), keep_s)
    pipe.set(keys.cooldown(alert.kind, alert.subject_kind, alert.subject), end)


def _dt_ms(value: object) -> float:
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return 0.0
