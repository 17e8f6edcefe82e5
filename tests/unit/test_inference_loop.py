"""The worker loop against in-memory fakes of the consumer, producer and models (no sockets).

The real broker runs in tests/integration; here the fakes make the timing-dependent guarantees
checkable: backpressure bounds what is in flight, offsets never run ahead of deliveries, a failed
delivery or model stops the worker with exit code 1 without storing past the failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from pulse.settings import Settings, load
from schemas import Author, DeadLetter, EnrichedPost, Entity, ModelRef, RawPost, Sentiment, decode, encode
from workers.inference.watchlist import Watchlist
from workers.inference.worker import InferenceWorker

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 11, 28, tzinfo=UTC)


class FakeMessage:
    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        self._t, self._p, self._o, self._k, self._v = topic, partition, offset, key, value

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> None:
        return None


class FakeConsumer:
    """Partitions of in-memory records; paused partitions return nothing, like librdkafka."""

    def __init__(self, records: Mapping[int, Sequence[bytes | None]], topic: str = "posts.raw") -> None:
        self.topic = topic
        self.queues = {
            p: [FakeMessage(topic, p, o, b"k", v) for o, v in enumerate(vals)] for p, vals in records.items()
        }
        self.paused: set[int] = set()
        self.pause_calls = 0
        self.stored: dict[int, int] = {}
        self.commits = 0
        self.consumed = 0
        self.lock = threading.Lock()
        self.on_store: Callable[[int, int], None] = lambda p, o: None
        self.callbacks: dict[str, Any] = {}
        self.assigned: set[int] | None = None  # None: every partition (a test takes them away)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks
        callbacks["on_assign"](self, self.assignment())

    def assignment(self) -> list[TopicPartition]:
        held = self.queues if self.assigned is None else self.assigned
        return [TopicPartition(self.topic, p) for p in held]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        out: list[FakeMessage] = []
        for p, q in self.queues.items():
            while q and p not in self.paused and len(out) < num_messages:
                out.append(q.pop(0))
        self.consumed += len(out)
        if not out:
            time.sleep(min(max(timeout, 0), 0.01))
        return out

    def pause(self, parts: list[TopicPartition]) -> None:
        self.pause_calls += 1
        self.paused |= {tp.partition for tp in parts}

    def resume(self, parts: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in parts}

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self.on_store(tp.partition, tp.offset)
            self.stored[tp.partition] = tp.offset

    def commit(self, asynchronous: bool = True) -> None:
        self.commits += 1

    def close(self) -> None:
        self.callbacks["on_revoke"](self, self.assignment())


class FakeProducer:
    """Records every produce; delivers on poll (or fails records whose value ``fail`` picks)."""

    def __init__(self, fail: Callable[[bytes], bool] = lambda v: False) -> None:
        self.pending: list[tuple[str, bytes | None, bytes, Callable[..., None]]] = []
        self.delivered: list[tuple[str, bytes | None, bytes]] = []
        self.fail = fail
        self.produced = 0
        self.lock = threading.Lock()

    def produce(
        self,
        topic: str,
        value: bytes = b"",
        key: bytes | None = None,
        on_delivery: Callable[..., None] | None = None,
    ) -> None:
        assert on_delivery is not None, "every record needs a delivery report: offsets depend on it"
        with self.lock:
            self.pending.append((topic, key, value, on_delivery))
            self.produced += 1

    def poll(self, timeout: float = 0) -> int:
        with self.lock:
            batch, self.pending = self.pending, []
        for topic, key, value, callback in batch:
            if self.fail(value):
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.delivered.append((topic, key, value))
                callback(None, None)
        return len(batch)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.pending)


class FakeModel:
    """A post model: 'bad' texts are negative, 'Acme' is a company; counts its calls per micro-batch."""

    refs = (
        ModelRef(task="sentiment", name="fake", version="1"),
        ModelRef(task="ner", name="fake", version="1"),
    )

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.delay, self.fail_on = delay, fail_on
        self.batch_lengths: list[list[int]] = []
        self.tokenised = self.runs = 0

    def tokenize(self, texts: Sequence[str]) -> list[str]:
        self.tokenised += 1
        self.batch_lengths.append([len(t) for t in texts])
        return list(texts)

    def infer(self, encoded: list[str]) -> tuple[list[Sentiment], list[tuple[Entity, ...]]]:
        self.runs += 1
        time.sleep(self.delay)
        if self.fail_on and any(self.fail_on in t for t in encoded):
            raise RuntimeError("model exploded")
        sentiments = [
            Sentiment(label="negative" if "bad" in t else "neutral", scores={"negative": 0.5, "neutral": 0.5})
            for t in encoded
        ]
        entities: list[tuple[Entity, ...]] = []
        for text in encoded:
            i = text.find("Acme")
            entities.append(
                ()
                if i < 0
                else (Entity(type="company", text="Acme", start=i, end=i + 4, normalized="acme", score=0.9),)
            )
        return sentiments, entities


def post_bytes(i: int, text: str = "Acme is bad") -> bytes:
    return encode(
        RawPost(
            id=f"t:{i}",
            platform="test",
            author=Author(id="a"),
            text=f"{text} {'x' * (i % 7)}",
            created_at=NOW,
            ingested_at=NOW,
        )
    )


def fake_settings(**inference: Any) -> Settings:
    return load(
        inference={
            "batch_size": 8,
            "micro_batch": 4,
            "max_wait_ms": 5,
            "stats_interval_ms": 0,
            "drain_timeout_s": 5,
            **inference,
        }
    )


def run_until(worker: InferenceWorker, done: Callable[[], bool], timeout: float = 20) -> int:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()))
    thread.start()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)
    worker.stop()
    thread.join(timeout)
    assert not thread.is_alive()
    return result[0]


def make(
    records: Mapping[int, Sequence[bytes | None]],
    producer: FakeProducer | None = None,
    model: FakeModel | None = None,
    **inference: Any,
) -> tuple[InferenceWorker, FakeConsumer, FakeProducer]:
    consumer = FakeConsumer(records)
    producer = producer if producer is not None else FakeProducer()
    worker = InferenceWorker(
        fake_settings(**inference),
        model or FakeModel(),
        Watchlist.from_dict({"brands": ["Acme"]}),
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        clock=lambda: NOW,
    )
    return worker, consumer, producer


def test_every_record_enriched_exactly_once_keyed_by_post_id_and_offsets_stored_to_the_end() -> None:
    records: dict[int, list[bytes | None]] = {
        0: [post_bytes(i) for i in range(50)],
        1: [post_bytes(100 + i) for i in range(30)],
    }
    worker, consumer, producer = make(records)
    assert run_until(worker, lambda: consumer.stored == {0: 50, 1: 30}) == 0
    enriched = [decode(v, EnrichedPost) for t, _, v in producer.delivered]
    # Compared as multisets, not in order: the worker length-sorts each batch into micro-batches, so
    # output order is not consumption order (the offsets stored are, through the ledger).
    assert sorted(e.post.id for e in enriched) == sorted(
        [f"t:{i}" for i in range(50)] + [f"t:{100 + i}" for i in range(30)]
    )
    first = enriched[0]
    assert first.sentiment.label == "negative" and first.entities[0].text == "Acme"
    assert [(m.term, m.text) for m in first.matches] == [("Acme", "Acme")]
    assert {k for _, k, _ in producer.delivered} == {e.post.id.encode() for e in enriched}  # key = post id
    assert consumer.commits >= 1


def test_micro_batches_reach_the_model_length_sorted_and_bounded() -> None:
    model = FakeModel()
    worker, consumer, _ = make({0: [post_bytes(i) for i in range(64)]}, model=model)
    run_until(worker, lambda: consumer.stored == {0: 64})
    assert all(len(b) <= 4 for b in model.batch_lengths)
    assert all(b == sorted(b) for b in model.batch_lengths)


def test_a_slow_model_pauses_the_partitions_and_bounds_what_is_in_flight() -> None:
    n = 400
    producer = FakeProducer()
    worker, consumer, _ = make(
        {0: [post_bytes(i) for i in range(n // 2)], 1: [post_bytes(i + n) for i in range(n // 2)]},
        producer=producer,
        # 50 ms a micro-batch: the tokeniser queue stays full for longer than the worker's 20 ms
        # wait for room (with 10 ms it sometimes emptied in time, and nothing was ever paused)
        model=FakeModel(delay=0.05),
        queue_batches=1,
        pause_after_ms=0,
        queue_micro_batches=1,
    )
    in_flight: list[int] = []
    original = consumer.consume

    def consume(num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        # Inside the worker: consumed, not yet handed to the producer (whose queue librdkafka bounds).
        in_flight.append(consumer.consumed - producer.produced)
        return original(num_messages, timeout)

    consumer.consume = consume  # type: ignore[method-assign]
    assert run_until(worker, lambda: consumer.stored == {0: n // 2, 1: n // 2}, timeout=40) == 0
    assert consumer.pause_calls > 0
    assert not consumer.paused, "partitions left paused"
    # pending + waiting + queued + one in each step, in batches of 8: far below the 400 available.
    assert max(in_flight) <= 8 * 7, max(in_flight)


def test_offsets_never_run_ahead_of_deliveries() -> None:
    producer = FakeProducer()
    worker, consumer, _ = make({0: [post_bytes(i) for i in range(120)]}, producer=producer)

    def check(partition: int, offset: int) -> None:
        delivered = {decode(v, EnrichedPost).post.id for _, _, v in producer.delivered}
        assert {f"t:{i}" for i in range(offset)} <= delivered, (
            f"stored {offset} before its records were delivered"
        )

    consumer.on_store = check
    assert run_until(worker, lambda: consumer.stored == {0: 120}) == 0


def test_poison_goes_to_the_dlq_with_provenance_and_the_partition_moves_on() -> None:
    # offset 2 has no value: a tombstone (the post was deleted at its source), forwarded in order
    records: dict[int, list[bytes | None]] = {0: [b"{oops", post_bytes(1), None, post_bytes(3)]}
    worker, consumer, producer = make(records)
    assert run_until(worker, lambda: consumer.stored == {0: 4}) == 0
    by_topic: dict[str, list[bytes | None]] = {}
    for topic, _, value in producer.delivered:
        by_topic.setdefault(topic, []).append(value)
    letters = [decode(v, DeadLetter) for v in by_topic["posts.dlq"] if v is not None]
    assert [(dl.offset, dl.partition, dl.topic, dl.reason, dl.stage, dl.original) for dl in letters] == [
        (0, 0, "posts.raw", "decode", "inference", b"{oops"),
    ]
    enriched = by_topic["posts.enriched"]
    assert [None if v is None else decode(v, EnrichedPost).post.id for v in enriched] == ["t:1", None, "t:3"]


def test_a_failed_delivery_stops_the_worker_without_storing_past_it() -> None:
    producer = FakeProducer(fail=lambda v: b'"t:5"' in v)
    worker, consumer, _ = make({0: [post_bytes(i) for i in range(20)]}, producer=producer)
    assert run_until(worker, lambda: False, timeout=3) == 1
    assert consumer.stored.get(0, 0) <= 5  # t:5 is offset 5: never stored past it


def test_a_model_failure_stops_the_worker_with_exit_code_1() -> None:
    worker, consumer, _ = make(
        {0: [post_bytes(i) for i in range(20)] + [post_bytes(99, "boom")]},
        model=FakeModel(fail_on="boom"),
    )
    assert run_until(worker, lambda: False, timeout=3) == 1
    assert consumer.stored.get(0, 0) <= 20
    assert not worker.healthy()


def test_partitions_lost_while_paused_are_consumed_again_when_they_come_back() -> None:
    """The drill's broker restart: the partitions were paused (the tokeniser behind), the group lost
    them, and librdkafka kept them paused when they were assigned again (pause is a partition's state,
    not the assignment's): the worker sat idle with lag for good. A new assignment sets the state."""
    n = 200
    worker, consumer, _ = make(
        {0: [post_bytes(i) for i in range(n)], 1: [post_bytes(1000 + i) for i in range(n)]},
        model=FakeModel(delay=0.05),
        queue_batches=1,
        pause_after_ms=0,
        queue_micro_batches=1,
    )
    everything = [TopicPartition("posts.raw", p) for p in (0, 1)]
    events: list[str] = []
    original = consumer.consume

    def consume(num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if consumer.paused and not events:  # as librdkafka does, inside a poll: the group lost them
            events.append("lost")
            consumer.assigned = set()
            consumer.callbacks["on_lost"](consumer, everything)
        elif events == ["lost"]:  # a later poll: the same partitions come back
            events.append("assigned")
            consumer.assigned = None
            consumer.callbacks["on_assign"](consumer, everything)
        return original(num_messages, timeout)

    consumer.consume = consume  # type: ignore[method-assign]
    done = run_until(worker, lambda: consumer.stored == {0: n, 1: n}, timeout=40)
    assert events == ["lost", "assigned"]
    assert consumer.stored == {0: n, 1: n}, f"stuck: {consumer.paused=} {consumer.stored=}"
    assert done == 0


def test_revocation_drains_and_commits_the_revoked_partitions_and_drops_what_was_not_started() -> None:
    worker, consumer, producer = make(
        {0: [post_bytes(i) for i in range(40)], 1: [post_bytes(100 + i) for i in range(40)]},
        batch_size=100,
        max_wait_ms=2_000,
    )
    revoked: list[int] = []
    original = consumer.consume

    def consume(num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if consumer.consumed >= 80 and not revoked:
            # As librdkafka does, inside the next poll: the batch is still filling (max_wait 2 s),
            # so partition 1 goes before any of its records started.
            revoked.append(1)
            before = consumer.commits
            assert worker.owned == {("posts.raw", 0), ("posts.raw", 1)}
            consumer.callbacks["on_revoke"](consumer, [TopicPartition("posts.raw", 1)])
            assert consumer.commits == before + 1
            assert worker.owned == {("posts.raw", 0)}
            del consumer.queues[1]
        return original(num_messages, timeout)

    consumer.consume = consume  # type: ignore[method-assign]
    assert run_until(worker, lambda: consumer.stored.get(0) == 40, timeout=20) == 0
    ids = [decode(v, EnrichedPost).post.id for _, _, v in producer.delivered]
    assert sorted(ids) == sorted(f"t:{i}" for i in range(40)), (
        "records of the revoked partition were produced"
    )
    assert 1 not in consumer.stored


def test_the_model_is_tokenised_and_run_once_per_micro_batch() -> None:
    model = FakeModel()
    worker, consumer, producer = make({0: [post_bytes(i) for i in range(40)]}, model=model)
    assert run_until(worker, lambda: consumer.stored == {0: 40}) == 0
    assert model.runs == model.tokenised >= 10  # micro_batch 4: at least 40 / 4 runs, one per micro-batch
    enriched = [decode(v, EnrichedPost) for _, _, v in producer.delivered]
    assert len(enriched) == 40
    assert all(e.sentiment.label == "negative" and e.entities[0].text == "Acme" for e in enriched)
    assert all(e.models == FakeModel.refs for e in enriched)
