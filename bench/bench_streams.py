"""Streams stage throughput: generated EnrichedPost records from a 4-partition lz4 topic into Redis.

    python bench/bench_streams.py [--posts 200000] [--out bench/results/streams.json]

All in one run, on the same records (every run starts from offset 0 of the same topic, with its own
consumer group and its own Redis key prefix):

- ``pulse streams``: one process, all of its counting, posts/s from its first applied batch to the last
  (its detectors off: their work follows event time, not posts; a separate run has them on);
- a no-op faust agent with the same app settings (the same ``faust_app``, a processor that only reads
  the records): the faust ceiling on this machine, and the ratio of the two;
- a plain confluent-kafka consumer doing the same counting (same planner, same Lua writes): what faust
  costs, honestly;
- Redis memory per 1M posts (MEMORY USAGE of the store's keys), peak RSS of the streams process;
- two ``pulse streams`` processes sharing the partitions: counts exact, posts/s of each.

Counts are checked against counts computed directly from the input. Rebalances are counted from the
processes' "partitions assigned" log lines: one per process start, none during a run.

Uses the broker at KAFKA__BOOTSTRAP_SERVERS when one answers there (else a private noida-db) and the
Redis at REDIS__URL (default DB 0 of the local one; the bench's keys are deleted afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from local_broker import bench_broker  # bench/, beside this script

from pulse import kafka, redis_client, services
from pulse.settings import REPO_ROOT, Settings, load
from schemas import Author, EnrichedPost, Entity, ModelRef, RawPost, Sentiment, WatchMatch, encode
from schemas.views import read_enriched
from streams.aggregate import Record
from streams.keys import Keys
from streams.read import TrendReader
from streams.store import RedisTrendStore

PARTITIONS = 4
MODELS = (
    ModelRef(task="sentiment", name="bench", version="1"),
    ModelRef(task="ner", name="bench", version="1"),
)
PULSE = [sys.executable, "-m", "pulse.cli"]


def _zipf_choice(rng: random.Random, items: list[str], weights: list[float]) -> str:
    return rng.choices(items, weights)[0]


def generate(n: int, seed: int = 11, per_s: float = 1000.0) -> list[bytes]:
    """Realistic enriched posts: Zipf-distributed hashtags (2,000) and entities (600), 10 watched brands
    in 60 % of posts, 3 keywords, 4 platforms, 6 languages, 50k authors; ``per_s`` posts per second of
    event time (a live stream's density is its rate: 1,000/s is 86M posts a day), ending now."""
    rng = random.Random(seed)
    tags = [f"tag{i}" for i in range(2000)]
    tag_w = [1 / (i + 1) for i in range(len(tags))]
    names = [f"name {i}" for i in range(600)]
    name_w = [1 / (i + 1) ** 1.1 for i in range(len(names))]
    types = ("company", "person", "location", "product")
    brands = [
        "Acme",
        "Globex",
        "Initech",
        "Umbrella",
        "Soylent",
        "Hooli",
        "Stark",
        "Wayne",
        "Wonka",
        "Cyberdyne",
    ]
    keywords = ["outage", "refund", "recall"]
    end = datetime.now(UTC).replace(microsecond=0)
    step = timedelta(seconds=1 / per_s)
    start = end - step * n
    out = []
    for i in range(n):
        label = rng.choices(("negative", "neutral", "positive"), (2, 5, 3))[0]
        created = start + step * i
        post = RawPost(
            id=f"bench:{seed}:{i}",
            platform=rng.choice(("bluesky", "mastodon", "http", "reddit")),
            author=Author(id=f"u{rng.randrange(50_000)}", handle=f"h{rng.randrange(50_000)}"),
            text=f"post {i} about things "
            + " ".join(rng.sample(["great", "awful", "new", "today", "again"], 2)),
            lang=rng.choice(("en", "en", "en", "es", "de", "fr", "pt", "und")),
            created_at=created,
            ingested_at=created,
            hashtags=tuple({_zipf_choice(rng, tags, tag_w) for _ in range(rng.randint(0, 3))}),
        )
        entities = tuple(
            Entity(
                type=rng.choice(types),
                text="x",
                start=0,
                end=1,
                normalized=_zipf_choice(rng, names, name_w),
                score=0.9,
            )
            for _ in range(rng.randint(0, 2))
        )
        matches = []
        if rng.random() < 0.6:
            brand = rng.choice(brands)
            matches.append(WatchMatch(term=brand, kind="brand", text=brand, start=0, end=len(brand)))
        if rng.random() < 0.1:
            word = rng.choice(keywords)
            matches.append(WatchMatch(term=word, kind="keyword", text=word, start=0, end=len(word)))
        out.append(
            encode(
                EnrichedPost(
                    post=post,
                    sentiment=Sentiment(label=label, scores={label: 0.8, "negative": 0.1}),
                    entities=entities,
                    matches=tuple(matches),
                    models=MODELS,
                    enriched_at=created,
                )
            )
        )
    return out


def expected_counts(values: Iterable[bytes]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {"hashtag": Counter(), "brand": Counter()}
    for value in values:
        view = read_enriched(value)
        counts["hashtag"].update(set(view.post.hashtags))
        counts["brand"].update({m.term for m in view.matches if m.kind == "brand"})
    return counts


def load_topic(settings: Settings, topic: str, values: list[bytes]) -> None:
    admin = AdminClient(settings.kafka.config())
    admin.create_topics([NewTopic(topic, PARTITIONS, 1, config={"compression.type": "producer"})])[
        topic
    ].result()
    producer = Producer(
        settings.kafka.config(**{"linger.ms": 50, "compression.type": "lz4", "batch.num.messages": 10000})
    )
    for i, value in enumerate(values):
        kafka.produce(producer, topic, value, f"bench:{i}".encode())
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0, "could not load the bench topic"


def applied_total(client: Any, keys: Keys) -> int:
    raw = client.hgetall(keys.offsets(0))
    return sum(int(v) + 1 for k, v in raw.items() if k.decode().count(":") == 1)


def measure(
    progress: Callable[[], int], total: int, procs: list[subprocess.Popen[bytes]], timeout: float = 900
) -> dict[str, Any]:
    """Poll until ``progress() == total``: posts/s from the first progress to the last, peak RSS."""
    first: tuple[float, int] | None = None
    peak = dict.fromkeys((p.pid for p in procs), 0)
    deadline = time.monotonic() + timeout
    while True:
        done = progress()
        now = time.monotonic()
        if first is None and done > 0:
            first = (now, done)
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
            with contextlib.suppress(psutil.Error):
                peak[proc.pid] = max(peak[proc.pid], psutil.Process(proc.pid).memory_info().rss)
        if done >= total:
            break
        if now > deadline:
            raise RuntimeError(f"stalled at {done}/{total}")
        time.sleep(0.1)
    assert first is not None
    elapsed = max(now - first[0], 1e-6)
    return {
        "posts_per_s": round((total - first[1]) / elapsed, 1),
        "seconds": round(elapsed, 2),
        "peak_rss_mb": {str(pid): round(rss / 2**20, 1) for pid, rss in peak.items()},
    }


def start_streams(
    settings: Settings, topic: str, group: str, prefix: str, log: Path, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA__", "REDIS__", "TOPICS__", "STREAMS__"))
    }
    env.update(
        {
            "KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "REDIS__URL": settings.redis.url,
            "REDIS__KEY_PREFIX": prefix,
            "TOPICS__ENRICHED": topic,
            "TOPICS__DLQ": f"{topic}.dlq",
            "STREAMS__GROUP_ID": group,
            "STREAMS__HTTP_PORT": "0",
            "LOG_LEVEL": "INFO",
            **(extra or {}),
        }
    )
    with log.open("wb") as out:
        return subprocess.Popen([*PULSE, "streams"], env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(120) for proc in procs]


def assignments(log: Path) -> int:
    return log.read_text(errors="replace").count('"partitions assigned"')


def counted_in(log: Path) -> int:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"streams stopped"' in line:
            return int(line.split("counted=")[1].split()[0])
    return 0


def store_memory(client: Any, prefix: str) -> dict[str, int]:
    """Bytes (MEMORY USAGE) of the store's keys by structure (``z`` top sets, ``m`` sentiment, ...)."""
    by: Counter[str] = Counter()
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        parts = key.decode().split(":")  # prefix:{sN}:<structure>:... (counts), prefix:<record> (detectors)
        structure = parts[2] if parts[1].startswith("{") else f"detector {parts[1]}"
        by[structure] += client.memory_usage(key, samples=0) or 0
    return {"total": sum(by.values()), **dict(by.most_common())}


def wipe(client: Any, prefix: str) -> None:
    batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(batch), 500):
        client.delete(*batch[i : i + 500])


def run_streams(
    settings: Settings,
    topic: str,
    values: list[bytes],
    want: dict[str, Counter[str]],
    workdir: Path,
    workers: int,
    detectors: bool = False,
) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    group = f"bench-streams-{uuid.uuid4().hex[:6]}"
    client = redis_client.client(settings)
    keys = Keys(prefix)
    logs = [workdir / f"streams-{workers}-{i}.log" for i in range(workers)]
    procs = []
    for log in logs:
        extra = {"STREAMS__DETECTORS": "true" if detectors else "false"}
        procs.append(start_streams(settings, topic, group, prefix, log, extra))
        time.sleep(0.5 if workers > 1 else 0)
    try:
        result = measure(lambda: applied_total(client, keys), len(values), procs)
        reader = TrendReader(client, keys)
        window = reader.window(7200)
        got = {
            "hashtag": dict(reader.top("hashtag", window, 100_000)),
            "brand": dict(reader.top("brand", window, 100)),
        }
        result["counts_exact"] = got == {k: dict(v) for k, v in want.items()}
        result["store_bytes"] = store_memory(client, prefix)
    finally:
        codes = stop(procs)
    result["exit_codes"] = codes
    result["assignments"] = [assignments(log) for log in logs]
    result["counted_per_process"] = [counted_in(log) for log in logs]
    if workers > 1:
        result["posts_per_s_per_process"] = [
            round(n / result["seconds"], 1) for n in result["counted_per_process"]
        ]
    wipe(client, prefix)
    return result


class NoopProcessor:
    """Reads every record of every batch and does nothing else; reports progress to a file."""

    def __init__(self, progress: Path) -> None:
        self.progress, self.seen = progress, 0

    def assigned(self, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        return dict.fromkeys(tps)

    def revoked(self, tps: Iterable[tuple[str, int]]) -> None:
        return None

    def process(self, records: list[Record]) -> None:
        self.seen += sum(1 for r in records if r.value)
        tmp = self.progress.with_suffix(".tmp")
        tmp.write_text(str(self.seen))
        tmp.replace(self.progress)

    def resume_offset(self, tp: tuple[str, int]) -> int | None:
        return None

    def sought(self, targets: dict[tuple[str, int], int]) -> None:
        return None

    def watermark_ms(self) -> int | None:
        return None

    def refresh_state(self, tps: list[tuple[str, int]]) -> None:
        return None


def noop_worker(progress: Path) -> int:
    """(child process) the no-op agent on the same faust app as ``pulse streams``."""
    from pulse import logs
    from streams.app import faust_app, run_worker

    settings = load()
    logs.configure("INFO", "text")
    return run_worker(faust_app(settings, NoopProcessor(progress), set()))


def run_noop(settings: Settings, topic: str, total: int, workdir: Path) -> dict[str, Any]:
    progress = workdir / f"noop-{uuid.uuid4().hex[:6]}.txt"
    group = f"bench-noop-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA__", "TOPICS__", "STREAMS__"))}
    env.update(
        {
            "KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "TOPICS__ENRICHED": topic,
            "STREAMS__GROUP_ID": group,
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    with (workdir / "noop.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--noop-worker", str(progress)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def seen() -> int:
        try:
            return int(progress.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    try:
        result = measure(seen, total, [proc])
    finally:
        result_codes = stop([proc])
    result["exit_codes"] = result_codes
    return result


def run_plain(
    settings: Settings, topic: str, values: list[bytes], want: dict[str, Counter[str]]
) -> dict[str, Any]:
    """A plain confluent-kafka consumer doing the same counting: same planner, same Lua writes."""
    prefix = f"bench-plain-{uuid.uuid4().hex[:6]}"
    client = redis_client.client(settings)
    keys = Keys(prefix)
    store = RedisTrendStore(client, keys, lateness_ms=30_000, sample_size=10, sample_ttl_s=86_400)
    consumer = Consumer(
        settings.kafka.config(
            **{"group.id": f"bench-plain-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
        )
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    store.load([(topic, p) for p in range(PARTITIONS)])
    done = 0
    first: float | None = None
    first_done = 0
    try:
        while done < len(values):
            msgs = consumer.consume(10_000, timeout=1.0)
            if not msgs:
                continue
            records = []
            for m in msgs:
                r = Record(topic, m.partition() or 0, m.offset() or 0, m.value(), m.key())
                r.view = read_enriched(r.value)
                records.append(r)
            store.apply(records, int(time.time() * 1000))
            if first is None:
                first, first_done = time.monotonic(), len(records)
            done += len(records)
        elapsed = time.monotonic() - (first or time.monotonic())
    finally:
        consumer.close()
    reader = TrendReader(client, keys)
    window = reader.window(7200)
    exact = {
        "hashtag": dict(reader.top("hashtag", window, 100_000)),
        "brand": dict(reader.top("brand", window, 100)),
    } == {k: dict(v) for k, v in want.items()}
    wipe(client, prefix)
    return {
        "posts_per_s": round((len(values) - first_done) / max(elapsed, 1e-6), 1),
        "seconds": round(elapsed, 2),
        "counts_exact": exact,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of streams vs the no-op agent"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "streams.json")
    parser.add_argument("--noop-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_worker is not None:
        return noop_worker(args.noop_worker)

    workdir = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    settings, started = bench_broker(workdir, range(19400, 19500))
    topic = f"bench.streams.{uuid.uuid4().hex[:6]}"
    try:
        print(f"generating {args.posts:,} enriched posts ...", file=sys.stderr)
        values = generate(args.posts)
        want = expected_counts(values)
        print(f"loading {topic} ({PARTITIONS} partitions, lz4) ...", file=sys.stderr)
        load_topic(settings, topic, values)
        ones, noops = [], []
        for round_ in range(1, args.rounds + 1):  # interleaved: the machine's speed drifts between runs
            print(f"round {round_}: one pulse streams process", file=sys.stderr)
            ones.append(run_streams(settings, topic, values, want, workdir, workers=1))
            print(f"round {round_}: a no-op faust agent, same app settings", file=sys.stderr)
            noops.append(run_noop(settings, topic, len(values), workdir))
        one = max(ones, key=lambda r: r["posts_per_s"])
        noop = max(noops, key=lambda r: r["posts_per_s"])
        print(
            "run: one pulse streams process with its detectors on (the leader's trends and alerts)",
            file=sys.stderr,
        )
        with_detectors = run_streams(settings, topic, values, want, workdir, workers=1, detectors=True)
        print("run: plain confluent-kafka consumer, same counting", file=sys.stderr)
        plain = run_plain(settings, topic, values, want)
        print("run: two pulse streams processes", file=sys.stderr)
        two = run_streams(settings, topic, values, want, workdir, workers=2)
    finally:
        if started:
            services.down(settings)
    import faust

    doc = {
        "benchmark": "streams: generated EnrichedPost records (4 partitions, lz4) -> trend store in Redis",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "posts": args.posts,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "faust_streaming": faust.__version__,
            "broker": settings.kafka.bootstrap_servers + (" (private noida-db)" if started else ""),
            "redis": settings.redis.url,
        },
        "streams_one_process": one,
        "noop_faust_agent": noop,
        "rounds": {
            "streams_posts_per_s": [r["posts_per_s"] for r in ones],
            "noop_posts_per_s": [r["posts_per_s"] for r in noops],
            "ratio_per_round": [
                round(a["posts_per_s"] / b["posts_per_s"], 3) for a, b in zip(ones, noops, strict=True)
            ],
        },
        "ratio_streams_to_noop": round(one["posts_per_s"] / noop["posts_per_s"], 3),  # best of each
        "ratio_median_of_rounds": round(
            sorted(a["posts_per_s"] / b["posts_per_s"] for a, b in zip(ones, noops, strict=True))[
                len(ones) // 2
            ],
            3,
        ),
        "target_ratio": 0.75,
        # The stage as it runs, trends and alerts included, replaying 200 s of event time in ~40 s: the
        # detectors' work follows event time, so a replay faster than real time costs them more than live.
        "streams_one_process_with_detectors": with_detectors,
        "plain_consumer_same_counting": plain,
        "redis_bytes_per_million_posts": round(one["store_bytes"]["total"] * 1_000_000 / args.posts),
        "streams_two_processes": two,
        # One assignment per process start is its join; more would be a rebalance during the run. (The
        # two-process run starts its second process 0.5 s after the first: that join is a rebalance.)
        "rebalances_during_single_process_runs": sum(n - 1 for r in ones for n in r["assignments"]),
        "two_process_assignments": two["assignments"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
