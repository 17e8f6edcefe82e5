"""`pulse infer` against the real local broker: exactly once in a normal run, poison to the DLQ,
two workers sharing the partitions, SIGTERM drains, SIGKILL + restart loses nothing.

The models are the shipped ones under ``models/``, opened by the stage's own loader: the worker, the
runtime classes, Kafka and ONNX Runtime are all real. The signal tests run `pulse infer` itself in
a child process.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pulse.settings import Settings
from schemas import Author, DeadLetter, EnrichedPost, RawPost, decode, encode
from schemas.models import MAX_RECORD_BYTES, MAX_SPANS_PER_POST
from tests.factories import post_factory
from tests.kafka_io import read_topic
from workers.inference.loader import load_model, model_dirs
from workers.inference.watchlist import Watchlist
from workers.inference.worker import InferenceWorker

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

WATCHLIST = """
brands:
  - term: Acme
    aliases: [Acme Cloud]
    handles: [acme]
keywords: [outage]
"""


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The shipped models (they are in the repository; the worker runs the real ones here)."""
    model_dirs(SHIPPED)  # a clear ModelLoadError if they are missing
    return SHIPPED


# ------------------------------------------------------------------ Kafka helpers


TEXTS = (
    "Acme Cloud is down again, outage today",
    "I love the great new globex phone",
    "@acme the cloud is fast",
    "initech",
    "the",
    "bad bad bad " * 40,
)


def posts_factory(n: int, run: str) -> list[RawPost]:
    """``n`` posts of one test run, cycling through short, long, matching and plain texts."""
    now = datetime.now(UTC)
    return [
        post_factory(
            id=f"test:{run}:{i}",
            author=Author(id=f"a{i % 17}"),
            text=f"{TEXTS[i % len(TEXTS)]} #{i}",
            created_at=now,
            ingested_at=now,
        )
        for i in range(n)
    ]


def produce(
    settings: Settings,
    records: Sequence[tuple[bytes | None, bytes | None]],
    partition: Callable[[int], int] | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 5})
    for i, (key, value) in enumerate(records):
        if partition is None:
            producer.produce(settings.topics.raw, key=key, value=value)
        else:
            producer.produce(settings.topics.raw, key=key, value=value, partition=partition(i))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def produce_posts(settings: Settings, posts: Sequence[RawPost]) -> None:
    produce(settings, [(p.id.encode(), encode(p)) for p in posts])


def committed(settings: Settings) -> dict[int, int]:
    topic = settings.topics.raw
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": settings.inference.group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        got = consumer.committed([TopicPartition(topic, p) for p in meta.partitions], timeout=10)
        # A partition with nothing committed reads OFFSET_INVALID (-1001): left out, not summed.
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        consumer.close()


def high_watermarks(settings: Settings, topic: str | None = None) -> dict[int, int]:
    topic = topic or settings.topics.raw
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "hw"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


def enriched(settings: Settings, at_least: int = 0) -> list[EnrichedPost]:
    """Every enriched record, once ``at_least`` are there (the workers writing them have stopped)."""
    read = read_topic(settings, settings.topics.enriched, at_least, timeout=60, to_end=True)
    return [decode(value, EnrichedPost) for _, value in read]


def enriched_count(settings: Settings) -> int:
    """Enriched records on the broker now (the topic's high watermarks: cheap to poll)."""
    return sum(high_watermarks(settings, settings.topics.enriched).values())


def enriched_ids(settings: Settings, at_least: int = 0) -> Counter[str]:
    return Counter(record.post.id for record in enriched(settings, at_least))


def dead_letters(settings: Settings) -> list[DeadLetter]:
    read = read_topic(settings, settings.topics.dlq, 0, to_end=True)
    return [decode(value, DeadLetter) for _, value in read]


@pytest.fixture
def infer_settings(fresh_settings: Callable[..., Settings], model_dir: Path, tmp_path: Path) -> Settings:
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text(WATCHLIST)
    return fresh_settings(
        inference={
            "group_id": f"infer-{uuid.uuid4().hex[:8]}",
            "model_dir": model_dir,
            "watchlist": watchlist,
            "http_port": 0,
            "max_wait_ms": 20,
            "stats_interval_ms": 1000,
            # One ONNX Runtime thread per session: two spinning pools per worker on a shared
            # 2-core machine starve everything else (the benchmark measures the default).
            "intra_op_threads": 1,
            "drain_timeout_s": 20,
        }
    )


class Running:
    """A worker on a thread of this process (the signal tests use real processes instead)."""

    def __init__(self, settings: Settings, model_dir: Path) -> None:
        self.worker = InferenceWorker(
            settings, load_model(settings.inference), Watchlist.load(settings.inference.watchlist)
        )
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.worker.run()

    def stop(self) -> int | None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not drain and stop within 60 s"
        return self.rc


@pytest.fixture
def running(model_dir: Path) -> Iterator[Callable[[Settings], Running]]:
    started: list[Running] = []

    def start(settings: Settings) -> Running:
        started.append(Running(settings, model_dir))
        return started[-1]

    yield start
    while started:
        leftover = started.pop()
        if leftover.thread.is_alive():
            leftover.stop()
        del leftover
    # Free the workers' librdkafka clients now, while the session broker is still up (a worker and its
    # consumer's callbacks form a cycle): left to the interpreter's exit, they log "Connect failed"
    # once the broker has gone.
    gc.collect()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


# ------------------------------------------------------------------ tests


def test_every_raw_post_comes_out_enriched_exactly_once(
    infer_settings: Settings, running: Callable[[Settings], Running]
) -> None:
    posts = posts_factory(300, "normal")
    produce_posts(infer_settings, posts)
    before = {step: step_count(step) for step in ("decode", "tokenise", "infer", "produce")}
    enriched_before = sample("pulse_messages_total", outcome="enriched")
    worker = running(infer_settings)
    wait_for(
        lambda: committed(infer_settings) == high_watermarks(infer_settings),
        120,
        "the worker to commit every raw offset",
    )
    assert worker.stop() == 0

    records = enriched(infer_settings)
    ids = Counter(r.post.id for r in records)
    assert set(ids) == {p.id for p in posts}
    assert max(ids.values()) == 1, f"duplicates: {[i for i, c in ids.items() if c > 1][:5]}"
    by_id = {r.post.id: r for r in records}
    first = by_id[posts[0].id]  # "Acme Cloud is down again, outage today"
    assert first.post == posts[0]
    assert {(m.term, m.text) for m in first.matches} == {("Acme", "Acme Cloud"), ("outage", "outage")}
    assert first.sentiment.label in first.sentiment.scores
    assert {m.task for m in first.models} == {"sentiment", "ner"}
    assert all(r.post.text[e.start : e.end] == e.text for r in records for e in r.entities)
    assert dead_letters(infer_settings) == []
    # The worker's metrics saw it: every step timed, every post counted, lag reported.
    assert all(step_count(step) > before[step] for step in before)
    assert sample("pulse_messages_total", outcome="enriched") - enriched_before == len(posts)
    from prometheus_client import REGISTRY

    topic = infer_settings.topics.raw
    lag = [
        REGISTRY.get_sample_value(
            "pulse_consumer_lag", {"stage": "inference", "topic": topic, "partition": str(p)}
        )
        for p in range(6)
    ]
    assert all(v is not None and v >= 0 for v in lag), lag


def test_a_tombstone_is_forwarded_in_order_after_the_post_it_deletes(
    infer_settings: Settings, running: Callable[[Settings], Running]
) -> None:
    posts = posts_factory(40, "deleted")
    gone = [p.id.encode() for p in posts[::4]]  # every fourth post deleted, right after it was consumed
    records: list[tuple[bytes | None, bytes | None]] = []
    for p in posts:
        records.append((p.id.encode(), encode(p)))
        if p.id.encode() in gone:
            records.append((p.id.encode(), None))
    produce(infer_settings, records)
    worker = running(infer_settings)
    wait_for(
        lambda: committed(infer_settings) == high_watermarks(infer_settings),
        120,
        "every raw offset committed",
    )
    assert worker.stop() == 0
    out = read_topic(infer_settings, infer_settings.topics.enriched, expect=len(records))
    assert len(out) == len(records)
    for key in gone:
        assert [value is None for k, value in out if k == key] == [
            False,
            True,
        ]  # the post, then its tombstone
    assert dead_letters(infer_settings) == []


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"stage": "inference", **labels}) or 0.0


def step_count(step: str) -> float:
    return sample("pulse_latency_seconds_count", step=step)


def test_poison_records_go_to_the_dlq_with_provenance_and_do_not_stall_their_partition(
    infer_settings: Settings, running: Callable[[Settings], Running]
) -> None:
    posts = posts_factory(120, "poison")
    good = [(p.id.encode(), encode(p)) for p in posts]
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"bad-json", b"{not json"),
        (
            b"missing-text",
            b'{"id":"x","platform":"t","author":{"id":"a"},'
            b'"created_at":"2026-01-01T00:00:00Z","ingested_at":"2026-01-01T00:00:00Z"}',
        ),
    ]  # (a record with no value is a tombstone, forwarded: see the tombstone test)
    # All into partition 0, poison first: the good records behind them must still come out.
    records = poison + good
    produce(infer_settings, records, partition=lambda i: 0)
    worker = running(infer_settings)
    wait_for(
        lambda: committed(infer_settings).get(0) == len(records),
        120,
        "partition 0 to be committed to its end",
    )
    assert worker.stop() == 0

    ids = enriched_ids(infer_settings)
    assert sorted(ids) == sorted(p.id for p in posts) and max(ids.values()) == 1
    letters = dead_letters(infer_settings)
    assert sorted((dl.key, dl.offset) for dl in letters) == [
        (b"bad-json", 0),
        (b"missing-text", 1),
    ]
    for dl in letters:
        assert dl.stage == "inference" and dl.reason == "decode"
        assert dl.topic == infer_settings.topics.raw and dl.partition == 0
        assert dl.offset is not None and dl.original == (records[dl.offset][1] or b"")
    assert "field 'text'" in next(dl.error for dl in letters if dl.key == b"missing-text")


def test_two_workers_in_one_group_split_the_partitions(
    infer_settings: Settings, running: Callable[[Settings], Running]
) -> None:
    a, b = running(infer_settings), running(infer_settings)
    wait_for(
        lambda: bool(a.worker.owned) and bool(b.worker.owned) and len(a.worker.owned | b.worker.owned) == 6,
        60,
        "both workers to own partitions",
    )
    owned_a = {p for _, p in a.worker.owned}
    owned_b = {p for _, p in b.worker.owned}
    assert owned_a.isdisjoint(owned_b) and owned_a | owned_b == set(range(6))

    posts = posts_factory(300, "split")
    produce_posts(infer_settings, posts)
    wait_for(
        lambda: committed(infer_settings) == high_watermarks(infer_settings), 120, "every offset committed"
    )
    assert a.stop() == 0 and b.stop() == 0
    assert a.worker.delivered > 0 and b.worker.delivered > 0
    assert a.worker.delivered + b.worker.delivered == len(posts)
    ids = enriched_ids(infer_settings)
    assert set(ids) == {p.id for p in posts} and max(ids.values()) == 1


# ------------------------------------------------------------------ real processes and signals


def _env(settings: Settings, kafka_client: dict[str, Any] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA__", "TOPICS__", "INFERENCE__"))}
    env.update(
        {
            "KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "TOPICS__RAW": settings.topics.raw,
            "TOPICS__ENRICHED": settings.topics.enriched,
            "TOPICS__DLQ": settings.topics.dlq,
            "INFERENCE__GROUP_ID": settings.inference.group_id,
            "INFERENCE__MODEL_DIR": str(settings.inference.model_dir),
            "INFERENCE__WATCHLIST": str(settings.inference.watchlist),
            "INFERENCE__HTTP_PORT": "0",
            "INFERENCE__MAX_WAIT_MS": "20",
            "INFERENCE__BATCH_SIZE": "32",
            "INFERENCE__INTRA_OP_THREADS": "1",
            # The restarted process is the same replica (as a pod restarted by its StatefulSet): static
            # membership hands it the partitions back at once, where a new member would wait for the
            # broker to expire the killed one.
            "INFERENCE__INSTANCE_ID": f"{settings.inference.group_id}-0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if kafka_client:
        env["KAFKA__CLIENT"] = json.dumps(kafka_client)  # librdkafka options for the child's clients
    return env


def start_process(
    settings: Settings, log: Path, kafka_client: dict[str, Any] | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pulse.cli", "infer"]
    env = _env(settings, kafka_client)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def _stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(
            f"worker did not exit within 60 s of SIGTERM; log:\n{log.read_text()[-3000:]}"
        ) from None


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_worker_stopped_mid_stream_and_restarted_loses_nothing(
    how: str, infer_settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    posts = posts_factory(400, how)  # enough that the stop lands mid-stream
    log = tmp_path / "worker.log"
    # The first worker's auto-commit interval outlasts the test, so it commits nothing on its own: what
    # it delivered is committed by its drain (SIGTERM) or not at all (SIGKILL), and then every record of
    # it must be replayed. No hoping that the kill lands between two auto-commits.
    first = start_process(infer_settings, log, kafka_client={"auto.commit.interval.ms": 600_000})

    # A live stream, so the stop lands while records are in flight; the last fifth arrives only
    # after the stop, so the restarted worker always has work the first one never saw.
    before_stop, after_stop = posts[: len(posts) * 4 // 5], posts[len(posts) * 4 // 5 :]

    def trickle() -> None:
        for start in range(0, len(before_stop), 50):  # ~500 posts/s
            produce_posts(infer_settings, before_stop[start : start + 50])
            time.sleep(0.1)

    feeder = threading.Thread(target=trickle)
    try:
        feeder.start()
        wait_for(
            lambda: enriched_count(infer_settings) >= 100,
            120,
            "the first worker to deliver enriched records",
        )
        if how == "SIGKILL":
            first.kill()
            assert first.wait(10) == -signal.SIGKILL
        else:
            assert _stop(first, log) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        feeder.join(120)
    by_first = enriched_ids(infer_settings)
    at_stop = sum(committed(infer_settings).values())
    if how == "SIGKILL":
        assert at_stop == 0, "the killed worker committed offsets: its replay below is no longer certain"
    else:
        assert at_stop == by_first.total(), "a drained worker commits everything it delivered"
    produce_posts(infer_settings, after_stop)

    second = start_process(infer_settings, log)  # the default auto-commit interval: it commits as it goes
    try:
        wait_for(
            lambda: committed(infer_settings) == high_watermarks(infer_settings),
            180,
            "the restarted worker to commit every offset",
        )
        assert _stop(second, log) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)

    ids = enriched_ids(infer_settings, len(posts))
    missing = {p.id for p in posts} - set(ids)
    duplicates = sum(c - 1 for c in ids.values())
    record_property("duplicates", duplicates)
    print(
        f"\n{how}: {len(posts)} posts, {by_first.total()} enriched and {at_stop} committed by the first "
        f"worker, {duplicates} duplicates after restart"
    )
    assert not missing, f"{len(missing)} posts lost, e.g. {sorted(missing)[:3]}"
    assert set(ids) == {p.id for p in posts}
    if how == "SIGKILL":
        not_replayed = [i for i in by_first if ids[i] < 2]
        assert not not_replayed, f"delivered, never committed, yet not replayed: {not_replayed[:3]}"
        assert duplicates >= by_first.total() > 0
    else:
        assert duplicates == 0, "a drained worker committed what it produced: a restart must not repeat it"


def test_a_post_naming_a_brand_twenty_thousand_times_comes_out_capped_and_its_partition_moves_on(
    infer_settings: Settings, running: Callable[[Settings], Running]
) -> None:
    # The user test's poison pill: valid (under the contract's 100,000 characters), but its enriched
    # record carried one watchlist match per mention, over 1 MB: MSG_SIZE_TOO_LARGE on every restart.
    flood = post_factory(id="test:flood", text=("Acme " * 20_000)[:99_995])
    after = posts_factory(20, "after-flood")
    produce(infer_settings, [(p.id.encode(), encode(p)) for p in (flood, *after)], partition=lambda i: 0)
    worker = running(infer_settings)
    wait_for(lambda: committed(infer_settings).get(0) == 1 + len(after), 180, "partition 0 to be committed")
    assert worker.stop() == 0
    out = {record.post.id: record for record in enriched(infer_settings)}
    assert set(out) == {"test:flood", *(p.id for p in after)}
    capped = out["test:flood"]
    assert len(capped.matches) == MAX_SPANS_PER_POST and {m.term for m in capped.matches} == {"Acme"}
    assert len(encode(capped)) < MAX_RECORD_BYTES and dead_letters(infer_settings) == []


def test_an_enriched_record_that_still_cannot_fit_is_dead_lettered_not_a_stuck_partition(
    infer_settings: Settings, running: Callable[[Settings], Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing valid reaches the real limit any more (the case above): a lower one exercises the path.
    monkeypatch.setattr("workers.inference.worker.MAX_ENRICHED_BYTES", 20_000)
    big = post_factory(id="test:big", text="a long post about nothing much. " * 1_000)
    after = posts_factory(10, "after-big")
    records = [(p.id.encode(), encode(p)) for p in (big, *after)]
    produce(infer_settings, records, partition=lambda i: 0)
    worker = running(infer_settings)
    wait_for(lambda: committed(infer_settings).get(0) == len(records), 180, "partition 0 to be committed")
    assert worker.stop() == 0
    assert sorted(enriched_ids(infer_settings)) == sorted(p.id for p in after)
    [letter] = dead_letters(infer_settings)
    assert (letter.stage, letter.reason, letter.key, letter.offset) == (
        "inference",
        "too_large",
        b"test:big",
        0,
    )
    assert letter.original == records[0][1] and "over the 20,000 limit" in letter.error
