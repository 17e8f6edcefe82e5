"""`make bench-infer`: the inference worker's posts/s (consume → enrich → produce) against the model
runtime alone on the same posts, in the same run; writes ``bench/results/infer.json``.

The runtime-alone rate is the ceiling: tokenise + both models over the same texts, in the same
length-sorted micro-batches, with no Kafka, no decoding, no watchlist and no encoding. The worker
rate is measured on the real local broker (started here unless KAFKA__BOOTSTRAP_SERVERS answers),
from its first delivered record to its last, so group join and model load are not counted. Both are
measured three times, interleaved (runtime, worker, runtime, worker, ...), after one warm-up round
of each, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from pulse import kafka, services, topics
from pulse.settings import Settings, load
from schemas import Author, RawPost, encode
from workers.inference.batching import micro_batches
from workers.inference.loader import load_model
from workers.inference.protocols import PostModel
from workers.inference.watchlist import Watchlist
from workers.inference.worker import InferenceWorker

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.85

_OPENERS = [
    "just tried",
    "can't believe",
    "honestly",
    "update:",
    "so",
    "PSA:",
    "lol",
    "ok so",
    "breaking:",
    "why is",
]
_SUBJECTS = [
    "@Tesla",
    "Apple",
    "the new iPhone",
    "ChatGPT",
    "Starbucks",
    "@delta",
    "my bank",
    "Acme Cloud",
    "the Cybertruck",
    "OpenAI",
    "Delta Airlines",
    "the app",
    "customer support",
    "#outage",
    "Netflix",
]
_PREDICATES = [
    "is down again",
    "works great today",
    "just recalled everything",
    "refund took three weeks",
    "is the best thing that happened this year",
    "leaked data of millions, unreal",
    "is fine I guess",
    "keeps crashing on my phone",
    "support was actually helpful",
    "boycotting them from now on",
    "price went up again",
    "new update looks amazing",
    "nobody asked for this",
    "not working at all",
]
_TAILS = ["", "", "#fail", "🙃", "thoughts?", "https://example.com/x", "smh", "#love", "10/10", "never again"]


def make_posts(n: int, seed: int = 7) -> list[RawPost]:
    """Synthetic but tweet-shaped posts: brands, handles, hashtags, URLs, 3 to ~60 words."""
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    posts = []
    for i in range(n):
        parts = [rnd.choice(_OPENERS), rnd.choice(_SUBJECTS), rnd.choice(_PREDICATES)]
        for _ in range(rnd.choice([0, 0, 0, 1, 2, 4])):
            parts += [rnd.choice(["and", "also", "but"]), rnd.choice(_SUBJECTS), rnd.choice(_PREDICATES)]
        parts.append(rnd.choice(_TAILS))
        text = " ".join(p for p in parts if p)
        posts.append(
            RawPost(
                id=f"bench:{i}",
                platform="bench",
                author=Author(id=f"u{i % 997}"),
                text=text,
                created_at=now,
                ingested_at=now,
            )
        )
    return posts


def runtime_alone(model: PostModel, texts: list[str], batch: int, micro: int) -> float:
    """Posts/s of tokenise + the post model over ``texts``, batch by batch, length-sorted micro-batches,
    as the worker runs them."""
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        for idx in micro_batches([len(t) for t in chunk], micro):
            model.infer(model.tokenize([chunk[i] for i in idx]))
    return len(texts) / (time.perf_counter() - started)


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process and its reaped children (Linux /proc); 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields after the command: state is [0], utime [11], stime [12], cutime [13], cstime [14].
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def worker_rate(
    settings: Settings,
    model: PostModel,
    posts: list[RawPost],
    cpu: dict[str, float] | None = None,
    broker_pid: int | None = None,
) -> float:
    """Posts/s of one worker draining ``posts`` from a fresh set of topics, first to last delivery.

    ``cpu``, when given, receives the CPU seconds this process and the broker used in that window.
    """
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"bench.{name}.{suffix}" for role, name in settings.topics.by_role().items()}
    settings = Settings(
        **{
            **settings.model_dump(),
            "topics": {**settings.topics.model_dump(), **names},
            "inference": {**settings.inference.model_dump(), "group_id": f"bench-{suffix}"},
        }
    )
    topics.provision(settings)
    producer = Producer(settings.kafka.config(**{"linger.ms": 20, "compression.type": "lz4"}))
    for post in posts:
        kafka.produce(producer, settings.topics.raw, encode(post), post.id.encode())
    assert producer.flush(60) == 0, "could not load the raw topic"

    worker = InferenceWorker(settings, model, Watchlist.load(settings.inference.watchlist))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    first: float | None = None
    first_count = 0
    deadline = time.monotonic() + 900
    while worker.delivered < len(posts):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"worker stalled at {worker.delivered}/{len(posts)}")
        if first is None and worker.delivered > 0:
            first, first_count = time.perf_counter(), worker.delivered
            own, broker = time.process_time(), process_cpu_seconds(broker_pid)
        time.sleep(0.005)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    if cpu is not None and first is not None:
        cpu["worker_process"] = time.process_time() - own
        cpu["broker"] = process_cpu_seconds(broker_pid) - broker
        cpu["seconds"] = elapsed
    worker.stop()
    thread.join(60)
    return (len(posts) - first_count) / elapsed if elapsed > 0 else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "infer.json"))
    args = parser.parse_args(argv)

    base = load()
    overrides: dict[str, Any] = {"inference": {**base.inference.model_dump(), "http_port": 0}}
    if args.model_dir:
        overrides["inference"]["model_dir"] = Path(args.model_dir)
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        if not kafka.ready(base, timeout=1.0):
            overrides["kafka"] = {**base.kafka.model_dump(), "bootstrap_servers": f"127.0.0.1:{_free_port()}"}
            overrides["local"] = {**base.local.model_dump(), "data_dir": Path(tmp), "start_timeout_s": 60}
        settings = Settings(**{**base.model_dump(), **overrides})
        started = services.up(settings) if "local" in overrides else {}
        try:
            model = load_model(settings.inference)
            posts = make_posts(args.posts)
            texts = [p.text for p in posts]
            cfg = settings.inference
            # Warm-up for both sides: first runs allocate and pick kernels; a first worker also pays
            # for the broker's first topics and the Kafka clients' first connections.
            runtime_alone(model, texts[:256], cfg.batch_size, cfg.micro_batch)
            broker_pid = started["kafka"].pid if started.get("kafka") else None
            worker_rate(settings, model, posts[:256])
            alone, worker, alone_cpu, worker_cpu = [], [], [], []
            for _ in range(args.rounds):
                t0, c0 = time.perf_counter(), time.process_time()
                alone.append(runtime_alone(model, texts, cfg.batch_size, cfg.micro_batch))
                alone_cpu.append((time.process_time() - c0) / (time.perf_counter() - t0))
                used: dict[str, float] = {}
                worker.append(worker_rate(settings, model, posts, used, broker_pid))
                worker_cpu.append(used)
        finally:
            if started:
                services.down(settings)

    best_alone, best_worker = max(alone), max(worker)
    result = {
        "benchmark": "inference worker vs model runtime alone",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "posts": args.posts,
        "mean_chars": round(statistics.mean(len(t) for t in texts), 1),
        "batch_size": cfg.batch_size,
        "micro_batch": cfg.micro_batch,
        "models": [f"{m.task}:{m.name}@{m.version}" for m in model.refs],
        "providers": list(cfg.providers),
        "runtime_alone_posts_per_s": [round(x, 1) for x in alone],
        "worker_posts_per_s": [round(x, 1) for x in worker],
        "ratio": round(best_worker / best_alone, 3),
        # Each worker round against the runtime round just before it: on a shared machine the
        # load changes between rounds, and adjacent rounds see the most similar load.
        "pairwise_ratios": [round(w / a, 3) for a, w in zip(alone, worker, strict=True)],
        # Cores busy on average (CPU seconds / wall seconds): the bench process during runtime-alone
        # rounds; the bench process (the worker) and the local broker during worker rounds.
        "cores_busy_runtime_alone": [round(x, 2) for x in alone_cpu],
        "cores_busy_worker_process": [
            round(u["worker_process"] / u["seconds"], 2) for u in worker_cpu if u.get("seconds")
        ],
        "cores_busy_broker": (
            [round(u["broker"] / u["seconds"], 2) for u in worker_cpu if u.get("seconds")]
            if broker_pid
            else "not measured (broker not started by the bench)"
        ),
        "target_ratio": TARGET,
        "meets_target": best_worker / best_alone >= TARGET,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
