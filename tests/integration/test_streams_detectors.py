"""Trending and alerts against the real Redis store and the real broker: spikes raise exactly one alert
with its evidence, a praise wave is not a complaint wave, a flat stream raises nothing, snapshots come
every step and turn final once the watermark passes.

The detector runs in-process here (the store filled through the stage's own planner and Lua writes,
the wall clock under the test's control); the kill test at the end runs `pulse streams` itself.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pulse import kafka, redis_client
from pulse.settings import Settings
from schemas import Alert, Author, Sentiment, TrendSnapshot, WatchMatch, decode, encode
from schemas.views import read_enriched
from streams.aggregate import Record
from streams.detect import Detector
from streams.keys import Keys
from streams.read import TrendReader
from streams.store import RedisTrendStore
from tests.factories import enriched_factory, post_factory
from tests.harness import stage_env
from tests.kafka_io import read_topic
from workers.ingest.scenario import Scenario, Spike

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
BRANDS = ("Acme", "Globex", "Initech", "Umbrella", "Soylent")
RATE = 20  # posts per second of event time
TOPIC = "posts.enriched"


def stream(
    seconds: int,
    end: datetime,
    scenario: Scenario,
    *,
    seed: int = 1,
    keyword_burst: tuple[float, float] | None = None,
) -> list[bytes]:
    """Enriched posts whose sentiment follows ``scenario`` (its spikes included), ending at ``end``; with
    ``keyword_burst`` (start, end seconds), extra posts that mention the keyword 'outage'."""
    rng = random.Random(seed)
    start = end - timedelta(seconds=seconds)
    out = []
    for i in range(seconds * RATE):
        t = i / RATE
        brand = rng.choice(BRANDS) if rng.random() < 0.7 else None
        neg, neu, _ = scenario.sentiment_shares(brand, t)
        x = rng.random()
        label = "negative" if x < neg else "neutral" if x < neg + neu else "positive"
        matches = [WatchMatch(term=brand, kind="brand", text=brand, start=0, end=len(brand))] if brand else []
        in_burst = keyword_burst is not None and keyword_burst[0] <= t < keyword_burst[1] and i % 2 == 0
        background = keyword_burst is not None and rng.random() < 0.02  # the keyword's usual level
        if in_burst or background:
            matches.append(WatchMatch(term="outage", kind="keyword", text="outage", start=0, end=6))
        post = post_factory(
            id=f"d{seed}:{i}",
            text=f"{brand or 'something'} {label} post {i}",
            created_at=start + timedelta(seconds=t),
            author=Author(id=f"u{rng.randrange(500)}", handle=f"h{i}"),
            platform=rng.choice(("bluesky", "mastodon")),
            hashtags=(rng.choice(("tech", "deals", "launch")),),
        )
        scores = {
            "negative": 0.9 if label == "negative" else 0.05,
            "positive": 0.9 if label == "positive" else 0.05,
        }
        out.append(
            encode(
                enriched_factory(
                    post, sentiment=Sentiment(label=label, scores=scores), entities=(), matches=tuple(matches)
                )
            )
        )
    return out


class Harness:
    """The store, its reader and a detector on this test's Redis prefix and topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = redis_client.client(settings)
        keys = Keys(settings.redis.key_prefix)
        self.store = RedisTrendStore(self.client, keys, lateness_ms=5_000, sample_size=50, sample_ttl_s=3600)
        self.reader = TrendReader(self.client, keys, lateness_ms=5_000, idle_after_ms=2_000)
        self.now = time.time()
        self.producer = kafka.producer(settings, "streams")
        self.detector = Detector(
            settings, self.reader, self.client, keys, self.producer, clock=lambda: self.now
        )
        self.offset = 0

    def feed(self, values: list[bytes], chunk: int = 1000) -> None:
        """Apply ``values`` in batches, ticking the detector after each (as the leader's timer would)."""
        for i in range(0, len(values), chunk):
            records = []
            for value in values[i : i + chunk]:
                records.append(Record(TOPIC, 0, self.offset, value, view=read_enriched(value)))
                self.offset += 1
            self.store.apply(records, wall_ms=int(self.now * 1000))
            self.ticks()
        self.now += 3  # the partition goes idle: the watermark runs on to the last post
        self.ticks()

    def ticks(self) -> None:
        # A chunk is 50 s of event time, five steps; a tick does at most two (catching up is spread out).
        for _ in range(4):
            self.detector.tick()

    def close(self) -> None:
        self.producer.flush(10)
        self.client.close()


@pytest.fixture
def detector_settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings(
        trends={"windows": (60,), "step_s": 10, "baseline_windows": 6, "min_count": 5, "min_score": 2.0},
        alerts={"window_s": 60, "baseline_s": 300, "min_volume": 20, "cooldown_s": 600, "samples": 5},
    )


@pytest.fixture
def harness(detector_settings: Settings) -> Iterator[Harness]:
    h = Harness(detector_settings)
    h.store.load([(TOPIC, 0)])
    yield h
    h.close()


def alerts(settings: Settings) -> list[Alert]:
    return [decode(v, Alert) for _, v in read_topic(settings, settings.topics.alerts, 0, to_end=True)]


def test_a_negative_spike_on_one_brand_raises_exactly_one_alert_with_its_evidence(harness: Harness) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    values = stream(600, end, Scenario(brands=BRANDS, spikes=(Spike("Acme", 420, 180, 0.75),)))
    harness.feed(values)
    raised = alerts(harness.settings)
    assert [(a.kind, a.subject) for a in raised] == [("negative_sentiment", "Acme")]
    alert = raised[0]
    spike_start = end - timedelta(seconds=600 - 420)
    # Raised as soon as a window that overlaps the spike is final: early in it, not after it.
    assert spike_start < alert.window.end <= spike_start + timedelta(seconds=60)
    ev = alert.evidence
    assert alert.metric == "negative_share" and alert.score >= 3.0
    assert alert.effect == pytest.approx(alert.observed - alert.baseline, abs=1e-3) and alert.effect >= 0.15
    assert 0.1 <= ev.baseline_share <= 0.3 and ev.baseline_share == pytest.approx(alert.baseline, abs=1e-3)
    assert ev.counts.negative + ev.counts.neutral + ev.counts.positive == ev.mentions >= 20
    assert alert.observed == pytest.approx(ev.counts.negative / ev.mentions, abs=1e-3)
    assert len(ev.samples) == 5 and all("Acme" in s.text for s in ev.samples)
    negatives = [s.negative or 0.0 for s in ev.samples]
    assert negatives == sorted(negatives, reverse=True) and negatives[0] == pytest.approx(0.9)
    assert {c.kind for c in ev.co_terms} == {"hashtag"} and ev.platforms and ev.languages[0].name == "en"
    assert 0 < ev.authors <= ev.mentions
    assert alert.id == f"negative_sentiment:brand:Acme:{alert.window.start.strftime('%Y-%m-%dT%H:%M:%SZ')}:60"
    # The API's view of it is the published one, and the events stream carries it.
    assert harness.reader.alerts([alert.id]) == [encode(alert)]
    # Its evidence holds post texts: it expires (ALERTS__RETENTION_S, privacy).
    keep = harness.settings.alerts.retention_s
    assert 0 < harness.client.ttl(Keys(harness.settings.redis.key_prefix).alert(alert.id)) <= keep


def test_a_praise_wave_raises_a_positive_alert_and_not_a_negative_one(harness: Harness) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    praise = Scenario(brands=BRANDS, negative=0.2, neutral=0.45)
    values = stream(600, end, praise, seed=2)
    # Globex's last three minutes: nearly all positive (the same shares, the other way round).
    flipped = []
    for value in values:
        post = decode(value, type(enriched_factory()))
        late = post.post.created_at >= end - timedelta(seconds=180)
        if (
            late
            and any(m.term == "Globex" for m in post.matches)
            and random.Random(post.post.id).random() < 0.8
        ):
            post = post.model_copy(
                update={"sentiment": Sentiment(label="positive", scores={"positive": 0.95, "negative": 0.02})}
            )
        flipped.append(encode(post))
    harness.feed(flipped)
    assert [(a.kind, a.subject) for a in alerts(harness.settings)] == [("positive_sentiment", "Globex")]


def test_a_volume_burst_on_a_keyword_raises_a_volume_alert(harness: Harness) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    values = stream(600, end, Scenario(brands=BRANDS), seed=3, keyword_burst=(480, 600))
    harness.feed(values)
    raised = alerts(harness.settings)
    assert [(a.kind, a.subject, a.subject_kind) for a in raised] == [("volume", "outage", "keyword")], [
        (a.kind, a.observed, a.baseline, a.score, a.evidence.mentions, a.evidence.baseline_mentions, a.window)
        for a in raised
    ]
    assert raised[0].metric == "mentions" and raised[0].effect >= 2.0


def test_a_flat_stream_of_the_same_size_raises_nothing_and_snapshots_come_every_step(
    harness: Harness,
) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    harness.feed(stream(600, end, Scenario(brands=BRANDS), seed=4))
    assert alerts(harness.settings) == []
    snapshots = [
        decode(v, TrendSnapshot)
        for _, v in read_topic(harness.settings, harness.settings.topics.trends, 1, to_end=True)
    ]
    finals = sorted(s.window.end for s in snapshots if s.final)
    # Every 10 s step from the first tick to the last final one, once each, final only past the watermark.
    assert finals == [finals[0] + timedelta(seconds=10 * i) for i in range(len(finals))]
    assert len(finals) >= 50
    assert all(s.watermark >= s.window.end for s in snapshots if s.final)
    assert any(not s.final and s.watermark < s.window.end for s in snapshots)
    assert all(s.window.size_s == 60 for s in snapshots)
    latest = decode(harness.reader.snapshot(60) or b"", TrendSnapshot)
    assert latest.window.end >= finals[-1]


def test_trending_terms_rise_against_their_baseline(harness: Harness) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    values = stream(600, end, Scenario(brands=BRANDS), seed=5)
    # A new hashtag takes off in the last minute.
    boosted = []
    for value in values:
        post = decode(value, type(enriched_factory()))
        if post.post.created_at >= end - timedelta(seconds=60) and post.post.id.endswith(("0", "5")):
            post = post.model_copy(update={"post": post.post.model_copy(update={"hashtags": ("newthing",)})})
        boosted.append(encode(post))
    harness.feed(boosted)
    latest = decode(harness.reader.snapshot(60) or b"", TrendSnapshot)
    top = [(t.kind, t.term) for t in latest.terms]
    assert top and top[0] == ("hashtag", "newthing")
    # Its baseline is the EWMA of the windows before (the last overlapping its first 10 s): far below.
    assert latest.terms[0].baseline < latest.terms[0].count / 10 and latest.terms[0].score > 5
    assert ("hashtag", "tech") not in top[:1]  # always busy: not trending


# ------------------------------------------------------------------ the real process, killed mid-spike


def test_the_worker_killed_and_restarted_mid_spike_publishes_no_second_alert(
    fresh_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fresh_settings(streams={"group_id": f"det-{uuid.uuid4().hex[:8]}"})
    end = datetime.now(UTC).replace(microsecond=0)
    values = stream(600, end, Scenario(brands=BRANDS, spikes=(Spike("Acme", 360, 240, 0.75),)), seed=6)
    env = stage_env(
        settings,
        STREAMS__HTTP_PORT="0",
        STREAMS__GROUP_ID=settings.streams.group_id,
        STREAMS__INSTANCE_ID="det-0",
        STREAMS__LATENESS_S="5",
        STREAMS__IDLE_AFTER_S="2",
        STREAMS__BATCH_SIZE="500",
        TRENDS__WINDOWS="60",
        TRENDS__BASELINE_WINDOWS="6",
        ALERTS__WINDOW_S="60",
        ALERTS__BASELINE_S="300",
        ALERTS__MIN_VOLUME="20",
        ALERTS__COOLDOWN_S="600",
    )
    producer = Producer(settings.kafka.config(**{"linger.ms": 5}))

    def produce(part: list[bytes]) -> None:
        for i, value in enumerate(part):
            producer.produce(settings.topics.enriched, value, f"k{i}".encode(), partition=0)
        assert producer.flush(30) == 0

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "streams.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "pulse.cli", "streams"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    produce(values[:8400])  # up to 60 s into the spike
    proc = start()
    try:
        deadline = time.monotonic() + 120
        while not alerts(settings):
            assert proc.poll() is None and time.monotonic() < deadline, "no alert from the first worker"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        produce(values[8400:])  # the rest of the spike arrives while it is down
        proc = start()
        with redis_client.client(settings) as client:
            deadline = time.monotonic() + 120
            keys = Keys(settings.redis.key_prefix)
            while int(client.hget(keys.offsets(0), f"{settings.topics.enriched}:0") or -1) < len(values) - 1:
                assert proc.poll() is None and time.monotonic() < deadline, "the restarted worker stalled"
                time.sleep(0.5)
        time.sleep(8)  # the rest of the spike's windows go final and are checked
        ids = Counter(a.id for a in alerts(settings))
        assert [i.split(":")[:3] for i in ids] == [["negative_sentiment", "brand", "Acme"]]
        assert set(ids.values()) == {1}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_deleted_post_leaves_every_sample_alert_and_api_answer(harness: Harness) -> None:
    # Issue 17: a post deleted at its source (a tombstone on posts.enriched) must not be shown again.
    from streams.processing import BatchProcessor
    from tests.integration.test_api import make_app

    end = datetime.now(UTC).replace(microsecond=0)
    harness.feed(stream(600, end, Scenario(brands=BRANDS, spikes=(Spike("Acme", 420, 180, 0.75),))))
    [alert] = alerts(harness.settings)
    victim = alert.evidence.samples[0]  # shown as evidence
    shown = harness.reader.samples("brand", "Acme", limit=10)  # a brand's recent posts (the API's)
    other = next(s for s in shown if s["id"] != victim.id)  # shown as a recent post
    keys = Keys(harness.settings.redis.key_prefix)
    with make_app(harness.settings) as api:
        assert victim.text in api.get(f"/v1/alerts/{alert.id}").text
        assert str(other["text"]) in api.get("/v1/brands/Acme?window=1h").text
        processor = BatchProcessor(harness.settings, harness.store, harness.producer)
        tombstones = [
            Record(TOPIC, 0, harness.offset + i, None, key=str(pid).encode())
            for i, pid in enumerate((victim.id, other["id"]))
        ]
        for _ in range(2):  # a replay of the same tombstones changes nothing more
            stats = processor.process(tombstones)
            assert stats is not None and stats.deleted == 2 and stats.dead == 0 and stats.counted == 0
        harness.offset += 2
        answers = [
            api.get(path).text
            for path in (f"/v1/alerts/{alert.id}", "/v1/alerts?since=24h", "/v1/brands/Acme?window=1h")
        ]
    assert all(a for a in answers)
    assert not any(text in a for a in answers for text in (victim.text, str(other["text"])))
    assert {victim.id, other["id"]}.isdisjoint(
        s["id"] for s in harness.reader.samples("brand", "Acme", limit=1000)
    )
    stored = decode(harness.reader.alerts([alert.id])[0], Alert)
    gone = {victim.id, str(other["id"])}
    assert [s.id for s in stored.evidence.samples] == [
        s.id for s in alert.evidence.samples if s.id not in gone
    ]
    assert stored.model_copy(update={"evidence": alert.evidence}) == alert  # nothing else changed
    # Re-published under the same id (the alerts topic is compacted by id: the old version goes).
    versions = [
        decode(v, Alert)
        for k, v in read_topic(harness.settings, harness.settings.topics.alerts, 0, to_end=True)
    ]
    assert [a.id for a in versions] == [alert.id, alert.id] and versions[-1] == stored
    held = [
        v
        for key in harness.client.scan_iter(match=f"{keys.prefix}:*:sd:*")
        for v in harness.client.hvals(key)
    ]
    assert held and not any(t.encode() in v for v in held for t in (victim.text, str(other["text"])))
