"""`pulse streams` processes against the real broker and Redis: exact counts through crashes, rebalances,
late records, idle partitions and a rebuild after Redis lost everything."""

from __future__ import annotations

import os
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
from schemas import Author, DeadLetter, EnrichedPost, Entity, Sentiment, WatchMatch, decode, encode
from streams.keys import Keys
from streams.read import TrendReader
from tests.factories import alert_factory, enriched_factory, post_factory
from tests.harness import stage_env
from tests.kafka_io import read_topic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PULSE = [sys.executable, "-m", "pulse.cli"]
HASHTAGS = ("deals", "launch", "outage", "tech", "review", "unboxing", "support")
BRANDS = ("Acme", "Globex", "Initech")


def generate(n: int, start: datetime, seed: int, step_ms: int = 20) -> list[bytes]:
    """``n`` enriched posts with realistic hashtags, entities and brands, event times from ``start``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = rng.choices(("negative", "neutral", "positive"), (2, 5, 3))[0]
        brand = rng.choice((*BRANDS, None))
        post = post_factory(
            id=f"s{seed}:{i}",
            created_at=start + timedelta(milliseconds=step_ms * i),
            hashtags=tuple(rng.sample(HASHTAGS, rng.randint(0, 3))),
            platform=rng.choice(("bluesky", "mastodon", "http")),
            author=Author(id=f"u{rng.randint(0, 300)}"),
        )
        entities = (
            (Entity(type="company", text="X", start=0, end=1, normalized=brand.lower(), score=0.9),)
            if brand
            else ()
        )
        matches = (
            (WatchMatch(term=brand, kind="brand", text=brand, start=0, end=len(brand)),) if brand else ()
        )
        out.append(
            encode(
                enriched_factory(
                    post,
                    sentiment=Sentiment(label=label, scores={label: 0.9}),
                    entities=entities,
                    matches=matches,
                )
            )
        )
    return out


def hashtag_counts(values: list[bytes]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for value in values:
        counts.update(set(decode(value, EnrichedPost).post.hashtags))
    return counts


def produce(settings: Settings, values: list[bytes], partition: int | None = None) -> None:
    producer = Producer(settings.kafka.config(**{"linger.ms": 10, "compression.type": "lz4"}))
    for i, value in enumerate(values):
        key = f"k{i}".encode()
        if partition is None:
            kafka.produce(producer, settings.topics.enriched, value, key)
        else:
            producer.produce(settings.topics.enriched, value, key, partition=partition)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def reader(settings: Settings) -> TrendReader:
    # One client per test: the connection pool is closed with the test's Redis keys (conftest).
    return TrendReader(
        redis_client.client(settings),
        Keys(settings.redis.key_prefix),
        lateness_ms=30_000,
        idle_after_ms=2_000,
    )


def applied(settings: Settings) -> int:
    """Records the store has applied, over every partition (applied offset + 1, summed)."""
    with redis_client.client(settings) as client:
        raw = client.hgetall(Keys(settings.redis.key_prefix).offsets(0))
    fields = {k.decode(): int(v) for k, v in raw.items()}
    return sum(v + 1 for k, v in fields.items() if k.count(":") == 1)


def wait_for(
    what: str, done: Callable[[], bool], timeout: float = 120, procs: tuple[subprocess.Popen[bytes], ...] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: a streams process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def stream_settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings(
        streams={"group_id": f"streams-{uuid.uuid4().hex[:8]}", "batch_size": 2000, "batch_within_s": 0.3}
    )


@pytest.fixture
def start(stream_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def launch(
        name: str = "a", instance: str | None = None, settings: Settings | None = None
    ) -> subprocess.Popen[bytes]:
        chosen = settings or stream_settings
        extra = {
            "STREAMS__HTTP_PORT": "0",
            "STREAMS__GROUP_ID": chosen.streams.group_id,
            "STREAMS__BATCH_SIZE": str(chosen.streams.batch_size),
            "STREAMS__BATCH_WITHIN_S": str(chosen.streams.batch_within_s),
            "LOG_LEVEL": os.environ.get("STREAMS_TEST_LOG_LEVEL", "INFO"),
        }
        if instance:
            extra["STREAMS__INSTANCE_ID"] = instance
        with (tmp_path / f"streams-{name}-{len(procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [*PULSE, "streams"], env=stage_env(chosen, **extra), stdout=log, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def test_counts_are_exact_for_a_generated_stream_and_sigterm_exits_0(
    stream_settings: Settings, start: Callable[..., subprocess.Popen[bytes]]
) -> None:
    now = datetime.now(UTC) - timedelta(minutes=2)
    values = generate(4000, now, seed=1)
    produce(stream_settings, values)
    proc = start()
    wait_for("all applied", lambda: applied(stream_settings) == 4000, procs=(proc,))
    r = reader(stream_settings)
    window = r.window(3600)
    assert dict(r.top("hashtag", window, 20)) == dict(hashtag_counts(values))
    assert r.totals(window)["n"] == 4000
    # Posts deleted at their source: tombstones (key: the post id, no value) leave the samples.
    brand = BRANDS[0]
    shown = [str(p["id"]) for p in r.samples("brand", brand, limit=1000)]
    assert len(shown) >= 5
    producer = Producer(stream_settings.kafka.config())
    for post_id in shown[:5]:
        producer.produce(stream_settings.topics.enriched, None, post_id.encode())
    assert producer.flush(30) == 0
    wait_for("the tombstones applied", lambda: applied(stream_settings) == 4005, procs=(proc,))
    wait_for(
        "the deleted posts gone from the samples",
        lambda: not {str(p["id"]) for p in r.samples("brand", brand, limit=1000)} & set(shown[:5]),
        timeout=10,
    )
    assert r.totals(window)["n"] == 4000  # counts keep the posts (docs/privacy.md)
    assert read_topic(stream_settings, stream_settings.topics.dlq, 0, to_end=True) == []
    assert stop(proc) == 0


def test_killed_twice_mid_stream_and_restarted_the_counts_stay_exact(
    stream_settings: Settings, start: Callable[..., subprocess.Popen[bytes]]
) -> None:
    now = datetime.now(UTC) - timedelta(minutes=3)
    values = generate(9000, now, seed=2, step_ms=10)
    produce(stream_settings, values[:3000])
    proc = start(instance="solo")  # static membership: a restart gets the partitions back at once
    for at_least, more in ((1000, values[3000:6000]), (4000, values[6000:])):
        wait_for("progress", lambda n=at_least: applied(stream_settings) >= n, procs=(proc,))  # type: ignore[misc]
        produce(stream_settings, more)
        proc.kill()
        proc.wait(10)
        proc = start(instance="solo")
    wait_for("all applied", lambda: applied(stream_settings) == 9000, procs=(proc,))
    r = reader(stream_settings)
    assert dict(r.top("hashtag", r.window(3600), 20)) == dict(hashtag_counts(values))
    assert r.totals(r.window(3600))["n"] == 9000
    assert stop(proc) == 0


def logs_say(directory: Path, prefix: str, text: str) -> bool:
    return any(text in log.read_text(errors="replace") for log in directory.glob(f"{prefix}*.log"))


def test_a_rebalance_between_two_workers_leaves_the_counts_exact(
    stream_settings: Settings, start: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    now = datetime.now(UTC) - timedelta(minutes=3)
    values = generate(8000, now, seed=3, step_ms=10)
    produce(stream_settings, values[:4000])
    first = start("a")
    wait_for("first batches", lambda: applied(stream_settings) >= 500, procs=(first,))
    second = start("b")  # joins: the partitions are split between the two
    wait_for(
        "the second joined",
        lambda: logs_say(tmp_path, "streams-b-", '"partitions assigned"'),
        procs=(first, second),
    )
    produce(stream_settings, values[4000:])
    wait_for("more", lambda: applied(stream_settings) >= 6000, procs=(first, second))
    assert stop(second) == 0  # leaves: the first takes its partitions back
    wait_for("all applied", lambda: applied(stream_settings) == 8000, procs=(first,))
    r = reader(stream_settings)
    assert dict(r.top("hashtag", r.window(3600), 20)) == dict(hashtag_counts(values))
    assert stop(first) == 0


def test_late_records_are_dead_lettered_not_counted_and_an_idle_partitions_windows_close(
    stream_settings: Settings, start: Callable[..., subprocess.Popen[bytes]]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    on_time = generate(100, now, seed=4, step_ms=100)  # 10 s of event time
    late = generate(5, now - timedelta(seconds=120), seed=5)  # 2 minutes behind: lateness is 30 s
    produce(stream_settings, on_time + late, partition=0)
    proc = start()
    wait_for("all applied", lambda: applied(stream_settings) == 105, procs=(proc,))
    r = reader(stream_settings)
    assert r.totals(r.window(3600))["n"] == 100
    letters = [decode(v, DeadLetter) for _, v in read_topic(stream_settings, stream_settings.topics.dlq, 5)]
    assert sorted(letter.offset or 0 for letter in letters) == list(range(100, 105))
    assert {(letter.stage, letter.reason, letter.partition) for letter in letters} == {("streams", "late", 0)}
    # Nothing arrives any more: after idle_after (2 s here), the watermark runs on with the wall clock,
    # so the window that holds the newest post closes without new traffic.
    newest_ms = int((now + timedelta(seconds=9.9)).timestamp() * 1000)
    assert r.watermark_ms(now_wall_ms=int(time.time() * 1000) - 10_000) is not None
    wait_for("window closed", lambda: (r.watermark_ms() or 0) > newest_ms, timeout=40)
    assert stop(proc) == 0


def test_rebuild_after_redis_lost_everything_restores_the_exact_counts(
    stream_settings: Settings, start: Callable[..., subprocess.Popen[bytes]]
) -> None:
    began = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    values = generate(3000, began, seed=6)
    produce(stream_settings, values)
    proc = start()
    wait_for("all applied", lambda: applied(stream_settings) == 3000, procs=(proc,))
    assert stop(proc) == 0
    r = reader(stream_settings)
    before = (dict(r.top("hashtag", r.window(3600), 20)), r.totals(r.window(3600)))
    # An alert raised earlier (on the topic, and in Redis until it is lost), then a newer version of it
    # (re-published after a deletion): the rebuild puts the latest back, with its subject's cool-down.
    keys = Keys(stream_settings.redis.key_prefix)
    alert = alert_factory(created_at=datetime.now(UTC) - timedelta(hours=1))
    revised = alert.model_copy(update={"evidence": alert.evidence.model_copy(update={"samples": ()})})
    producer = Producer(stream_settings.kafka.config())
    for version in (alert, revised):
        producer.produce(stream_settings.topics.alerts, encode(version), alert.id.encode())
    assert producer.flush(30) == 0
    with redis_client.client(stream_settings) as client:
        client.flushdb()  # Redis lost its data
    rebuilt = subprocess.run(
        [*PULSE, "streams", "rebuild", "--from", began.isoformat(), "--progress"],
        env=stage_env(stream_settings),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "3,000 posts counted" in rebuilt.stdout and "3,000/3,000" in rebuilt.stderr
    assert (dict(r.top("hashtag", r.window(3600), 20)), r.totals(r.window(3600))) == before
    assert "restored 1 alerts" in rebuilt.stdout
    assert r.alerts([alert.id]) == [encode(revised)]
    with redis_client.client(stream_settings) as client:
        cooldown = client.get(keys.cooldown(alert.kind, alert.subject_kind, alert.subject))
    assert cooldown is not None and int(cooldown) == int(alert.window.end.timestamp())
    again = subprocess.run(
        [*PULSE, "streams", "rebuild"],
        env=stage_env(stream_settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "not empty" in again.stderr and "--wipe" in again.stderr
