"""Whole pipeline on the embedded stack: sustained posts/s, ingest-to-Redis latency, CPU and RSS, lag.

    python bench/bench_pipeline.py [--rates 100,200,300,400] [--step-s 180] [--latency-rate 200]
                                   [--out bench/results/pipeline.json]

One run, everything real: `pulse ingest generator` → posts.raw → `pulse infer` (sentiment + NER, CPU)
→ posts.enriched → `pulse streams` → Redis, read back through the store's read side (what the API
serves). Each process is started once; its topics, groups and Redis key prefix are the run's own.

- **Sustained rate**: the generator publishes at each rate of ``--rates`` in turn for ``--step-s``
  seconds. The backlog is what was published and is not yet counted in Redis (posts.raw's end minus
  the offsets Redis has applied). A rate is sustained when the backlog at the end of the step is no
  more than 5 s of input above the backlog 30 s into it (flat: neither stage falls behind). Between
  steps the backlog drains. The sustained rate is the highest step that stays flat.
- **Latency** at ``--latency-rate`` (capped at 2/3 of the sustained rate): while the generator runs, a
  marker post with a hashtag of its own is written to posts.raw every 0.5 s, stamped as ingest stamps
  posts (``ingested_at``); it is observed when its hashtag's count is visible through
  ``TrendReader`` (polled every 100 ms over the last two minutes' buckets). p50/p95/p99 over the
  markers.
- **CPU and RSS** of every process (children included: the streams stage counts in a child), sampled
  every 5 s; **lag over time** as a PNG (matplotlib) next to the JSON.

Uses the broker at KAFKA__BOOTSTRAP_SERVERS when one answers there (else a private noida-db) and the
Redis at REDIS__URL (the run's keys are deleted afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from local_broker import bench_broker  # noqa: E402  (bench/, beside this script)

from pulse import redis_client, services, topics  # noqa: E402
from pulse.settings import Settings  # noqa: E402
from schemas import Author, RawPost, encode  # noqa: E402
from streams.keys import Keys  # noqa: E402
from streams.read import TrendReader  # noqa: E402

PULSE = [sys.executable, "-m", "pulse.cli"]
WATCHLIST = REPO_ROOT / "infra" / "sample" / "watchlist.yaml"
SAMPLE_S = 5.0
WARMUP_S = 30.0
FLAT_S = 5.0  # a flat backlog grows by at most this many seconds of input over a step


def _env(settings: Settings, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "__" not in k}
    env.update(
        {
            "KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "REDIS__URL": settings.redis.url,
            "REDIS__KEY_PREFIX": prefix,
            **{f"TOPICS__{role.upper()}": name for role, name in settings.topics.by_role().items()},
            "INFERENCE__WATCHLIST": str(WATCHLIST),
            "INFERENCE__GROUP_ID": f"{prefix}-inference",
            "INFERENCE__HTTP_PORT": "0",
            "STREAMS__GROUP_ID": f"{prefix}-streams",
            "STREAMS__HTTP_PORT": "0",
            "INGEST__METRICS_PORT": "-1",
            **extra,
        }
    )
    return env


class Probe:
    """The backlog and the processes, every ``SAMPLE_S`` seconds, on a thread."""

    def __init__(self, settings: Settings, keys: Keys, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        self.settings, self.keys, self.procs = settings, keys, procs
        self.client = redis_client.client(settings)
        self.consumer = Consumer(settings.kafka.config(**{"group.id": f"probe-{uuid.uuid4().hex[:6]}"}))
        self.samples: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._handles = {name: psutil.Process(p.pid) for name, p in procs.items()}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def ends(self, topic: str) -> int:
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high
        return total

    def applied(self) -> int:
        raw = self.client.hgetall(self.keys.offsets(0))
        enriched = self.settings.topics.enriched
        return sum(int(v) + 1 for k, v in raw.items() if k.decode().rpartition(":")[0] == enriched)

    def backlog(self) -> int:
        return max(0, self.ends(self.settings.topics.raw) - self.applied())

    def _usage(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, proc in self._handles.items():
            with contextlib.suppress(psutil.Error):
                family = [proc, *proc.children(recursive=True)]
                cpu = sum(p.cpu_percent(None) for p in family)
                rss = sum(p.memory_info().rss for p in family)
                out[name] = {"cpu_percent": round(cpu, 1), "rss_mb": round(rss / 2**20, 1)}
        return out

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            raw, applied = self.ends(self.settings.topics.raw), self.applied()
            self.samples.append(
                {
                    "t": round(time.monotonic() - self.started, 1),
                    "published": raw,
                    "counted": applied,
                    "backlog": max(0, raw - applied),
                    "processes": self._usage(),
                }
            )

    def start(self) -> None:
        self._usage()  # cpu_percent's first call is a baseline
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(30)
        self.consumer.close()
        self.client.close()


_SEEDS = iter(range(1000, 10_000))


def generator(
    settings: Settings, prefix: str, rate: float, seconds: float, log: Path
) -> subprocess.Popen[bytes]:
    """``pulse ingest generator`` at ``rate`` for ``seconds``; a seed of its own each time (post ids
    hold the seed: a repeated seed would be all duplicates)."""
    count = str(int(rate * seconds))
    argv = [*PULSE, "ingest", "generator", "--rate", f"{rate:g}", "--count", count, "--metrics-port", "-1"]
    argv += ["--seed", str(next(_SEEDS)), "--no-warm"]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=_env(settings, prefix), stdout=out, stderr=subprocess.STDOUT)


def step(
    probe: Probe, settings: Settings, prefix: str, rate: float, seconds: float, log: Path
) -> dict[str, Any]:
    """One rate for ``seconds``: is the backlog flat? Then let it drain."""
    began = time.monotonic()
    gen = generator(settings, prefix, rate, seconds, log)
    time.sleep(WARMUP_S)
    after_warmup = probe.backlog()
    if gen.wait(seconds + 120) != 0:
        raise RuntimeError(f"the generator failed at {rate:g} posts/s; see {log}")
    at_end = probe.backlog()
    elapsed = time.monotonic() - began
    flat = at_end - after_warmup <= rate * FLAT_S
    print(
        f"  {rate:g} posts/s for {elapsed:.0f} s: backlog {after_warmup:,} after warm-up, {at_end:,} at the "
        f"end: {'flat' if flat else 'growing'}",
        file=sys.stderr,
    )
    drained = wait_drained(probe, timeout=600)
    return {
        "rate": rate,
        "seconds": round(elapsed, 1),
        "backlog_after_warmup": after_warmup,
        "backlog_at_end": at_end,
        "flat": flat,
        "drained_in_s": drained,
    }


def wait_drained(probe: Probe, timeout: float) -> float | None:
    began = time.monotonic()
    while probe.backlog() > 0:
        if time.monotonic() - began > timeout:
            return None
        time.sleep(1)
    return round(time.monotonic() - began, 1)


def latency(
    probe: Probe, settings: Settings, prefix: str, reader: TrendReader, rate: float, seconds: float, log: Path
) -> dict[str, Any]:
    """Markers every 0.5 s during a run at ``rate``: from written to posts.raw to counted in Redis."""
    producer = Producer(settings.kafka.config(**{"linger.ms": 0}))
    gen = generator(settings, prefix, rate, seconds, log)
    time.sleep(WARMUP_S)  # measure the steady state, not the warm-up
    outstanding: dict[str, float] = {}
    seen: list[float] = []
    next_marker, n = time.monotonic(), 0
    stop_at = time.monotonic() + seconds - WARMUP_S
    while time.monotonic() < stop_at or outstanding:
        now = time.monotonic()
        if now >= next_marker and now < stop_at:
            tag = f"benchmark{uuid.uuid4().hex[:10]}"
            stamp = datetime.now(UTC)
            post = RawPost(
                id=f"bench:{tag}", platform="bench", author=Author(id="bench"), text=f"latency marker #{tag}",
                lang="en", created_at=stamp, ingested_at=stamp, hashtags=(tag,),
            )  # fmt: skip
            producer.produce(settings.topics.raw, encode(post), post.id.encode())
            producer.poll(0)
            outstanding[tag] = time.monotonic()
            next_marker, n = now + 0.5, n + 1
        if outstanding:  # a short window (12 buckets of 10 s): the poll must not load the machine
            window = reader.window(120, end_s=int(time.time()) + 60)
            found = reader.counts("hashtag", list(outstanding), window)
            done = time.monotonic()
            for tag, count in found.items():
                if count > 0 and tag in outstanding:
                    seen.append(done - outstanding.pop(tag))
            if time.monotonic() > stop_at + 120:
                break  # what is left is lost or very late: reported below
        time.sleep(0.1)
    producer.flush(10)
    gen.wait(seconds + 120)
    seen.sort()

    def q(p: float) -> float:
        return round(seen[min(len(seen) - 1, int(p * len(seen)))], 3)

    return {
        "rate": rate,
        "markers": n,
        "observed": len(seen),
        "p50_s": q(0.50),
        "p95_s": q(0.95),
        "p99_s": q(0.99),
        "max_s": round(seen[-1], 3),
        "mean_s": round(statistics.fmean(seen), 3),
    }


def plot(samples: list[dict[str, Any]], steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot([s["t"] for s in samples], [s["backlog"] for s in samples], color="#3465a4")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("backlog (published, not yet counted)")
    ax.set_title("Social Pulse pipeline: backlog over time, by generator rate")
    for s in steps:
        ax.annotate(f"{s['rate']:g}/s", (s["t0"], 0), textcoords="offset points", xytext=(2, 4), fontsize=8)
        ax.axvline(s["t0"], color="#888", linewidth=0.6, linestyle=":")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,200,300,400", help="posts/s, comma-separated, rising")
    parser.add_argument("--step-s", type=float, default=180.0, help="seconds at each rate")
    parser.add_argument("--latency-rate", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # clean up on a stop, too

    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    settings, started = bench_broker(workdir, range(19500, 19600))
    suffix = uuid.uuid4().hex[:6]
    prefix = f"bench-pipeline-{suffix}"
    names = {role: f"bench.{name}.{suffix}" for role, name in settings.topics.by_role().items()}
    settings = settings.model_copy(update={"topics": settings.topics.model_copy(update=names)})
    topics.provision(settings)
    keys = Keys(prefix)
    logs = {name: workdir / f"{name}.log" for name in ("inference", "streams", "generator")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name, argv in (("inference", ["infer"]), ("streams", ["streams"])):
        with logs[name].open("wb") as out:
            procs[name] = subprocess.Popen(
                [*PULSE, *argv], env=_env(settings, prefix), stdout=out, stderr=subprocess.STDOUT
            )
    probe = Probe(settings, keys, procs)
    reader = TrendReader(redis_client.client(settings), keys)
    steps: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while not all("partitions assigned" in logs[n].read_text() for n in ("inference", "streams")):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                raise RuntimeError(f"the stages did not start; see {workdir}")
            time.sleep(0.5)
        probe.start()
        print(f"stages up; logs in {workdir}", file=sys.stderr)
        for rate in rates:
            t0 = round(time.monotonic() - probe.started, 1)
            result = step(probe, settings, prefix, rate, args.step_s, logs["generator"])
            steps.append({**result, "t0": t0})
            if not result["flat"]:
                break
        sustained = max((s["rate"] for s in steps if s["flat"]), default=None)
        # below the sustained rate (at it, any burst queues up): two thirds of it, at most --latency-rate
        at = min(args.latency_rate, round(sustained * 2 / 3)) if sustained else args.latency_rate
        print(f"latency at {at:g} posts/s", file=sys.stderr)
        t0 = round(time.monotonic() - probe.started, 1)
        lat = latency(probe, settings, prefix, reader, at, args.step_s, logs["generator"])
        steps.append({"rate": at, "t0": t0, "latency_run": True})
    finally:
        probe.stop()
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        with redis_client.client(settings) as client:
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
        if started:
            services.down(settings)
    per_process: dict[str, dict[str, float]] = {}
    for name in procs:
        cpu = [s["processes"][name]["cpu_percent"] for s in probe.samples if name in s["processes"]]
        rss = [s["processes"][name]["rss_mb"] for s in probe.samples if name in s["processes"]]
        if cpu:
            per_process[name] = {
                "cpu_percent_mean": round(statistics.fmean(cpu), 1),
                "cpu_percent_max": max(cpu),
                "rss_mb_max": max(rss),
            }
    png = args.out.with_name(args.out.stem + "_lag.png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(probe.samples, steps, png)
    doc = {
        "benchmark": "pipeline: generator -> ingest -> inference (CPU) -> streams -> Redis, read side",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "broker": settings.kafka.bootstrap_servers + (" (private noida-db)" if started else ""),
        },
        "flat_rule": f"backlog at the end <= backlog {WARMUP_S:g} s in + {FLAT_S:g} s of input",
        "steps": [s for s in steps if not s.get("latency_run")],
        "sustained_posts_per_s": sustained,
        "target_sustained_posts_per_s": 300,
        "latency": lat,
        "target_p99_s_at_200": 2.0,
        "processes": per_process,
        "lag_plot": str(png.relative_to(REPO_ROOT)) if png.is_relative_to(REPO_ROOT) else str(png),
        "samples": probe.samples,
    }
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    summary = {k: v for k, v in doc.items() if k != "samples"}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
