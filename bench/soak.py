"""Soak: the whole pipeline at a fixed rate for a long while; memory and lag must stay flat.

    python bench/soak.py [--minutes 10] [--rate 50] [--warmup-s 120] [--out bench/results/soak.json]

On a private stack (see stack.py): `pulse ingest generator` → posts.raw → `pulse infer` → posts.enriched
→ `pulse streams` → Redis ← `pulse api` (polled every 2 s the way the dashboard polls it). Every 10 s it
samples each process's RSS (children included) and the backlog (published, not yet counted in Redis).

Pass when, after the warm-up:
- **RSS is flat**: each process's median RSS over the last minute is within 10 % of its median over
  the first minute after the warm-up;
- **lag does not grow**: the backlog's median over the last minute is at most its median over the
  first minute plus 5 s of input;
- **counts reconcile**: once the generator has finished and the pipeline drained, Redis counts every
  distinct post on posts.raw exactly once (inference duplicates, if any, are reported);
- no stage exited on its own, and each exits 0 on SIGTERM.

Prints a table and writes the samples and the verdict to ``--out``; exit code 0 only on a pass.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import REPO_ROOT, Stack, Tail, applied_offsets, free_port, machine, wait_for

SAMPLE_S = 10.0
RSS_GROWTH = 0.10
LAG_SLACK_S = 5.0


def status(url: str) -> int:
    """The HTTP status of a GET (0: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def poll_api(port: int, stop: threading.Event, answers: Counter[int]) -> None:
    """What the dashboard does: the overview endpoints every 2 s."""
    paths = ("/v1/trends?window=300", "/v1/brands", "/v1/alerts", "/v1/share-of-voice")
    while not stop.wait(2.0):
        for path in paths:
            answers[status(f"http://127.0.0.1:{port}{path}")] += 1


def minute(samples: list[dict[str, Any]], t0: float, t1: float, pick: Any) -> float | None:
    values = [pick(s) for s in samples if t0 <= s["t"] < t1 and pick(s) is not None]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the generator runs")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="posts/s, below the sustained rate (2 cores: 50)"
    )
    parser.add_argument("--warmup-s", type=float, default=120.0, help="left out of the flatness checks")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    seconds = args.minutes * 60
    if seconds < args.warmup_s + 120:
        parser.error("--minutes must leave at least two minutes after the warm-up")

    workdir = Path(tempfile.mkdtemp(prefix="pulse-soak-"))
    print(f"soak: {args.rate:g} posts/s for {args.minutes:g} min; logs in {workdir}", flush=True)
    stack = Stack(
        workdir,
        prefix=f"soak-{uuid.uuid4().hex[:6]}",
        INFERENCE__GROUP_ID="soak-inference",
        STREAMS__GROUP_ID="soak-streams",
    )
    raw = Tail(stack.settings, stack.settings.topics.raw)
    samples: list[dict[str, Any]] = []
    api_answers: Counter[int] = Counter()
    stop = threading.Event()
    problems: list[str] = []
    count = int(args.rate * seconds)
    try:
        stack.start(
            "inference", ["infer"], ready="partitions assigned", INFERENCE__INSTANCE_ID="soak-infer-0"
        )
        stack.start(
            "streams", ["streams"], ready="partitions assigned", STREAMS__INSTANCE_ID="soak-streams-0"
        )
        api_port = free_port(19900)
        stack.start("api", ["api", "--port", str(api_port)])
        if not wait_for(lambda: status(f"http://127.0.0.1:{api_port}/healthz") == 200, 60):
            raise RuntimeError(f"the API did not answer; see {stack.logs['api']}")
        poller = threading.Thread(target=poll_api, args=(api_port, stop, api_answers), daemon=True)
        poller.start()
        stack.start(
            "generator",
            [
                "ingest",
                "generator",
                "--rate",
                f"{args.rate:g}",
                "--count",
                str(count),
                "--seed",
                "7",
                "--no-warm",
            ],
        )
        began = time.monotonic()
        enriched_topic = stack.settings.topics.enriched
        while stack.procs["generator"].poll() is None:
            time.sleep(SAMPLE_S)
            published = sum(raw.ends().values())
            counted = sum(applied_offsets(stack, enriched_topic).values())
            usage = stack.usage()
            samples.append(
                {
                    "t": round(time.monotonic() - began, 1),
                    "published": published,
                    "backlog": max(0, published - counted),
                    "rss_mb": {n: u["rss_mb"] for n, u in usage.items()},
                    "cpu_s": {n: u["cpu_s"] for n, u in usage.items()},
                }
            )
            last = samples[-1]
            print(
                f"  {last['t']:>6.0f} s  published {published:>7,}  backlog {last['backlog']:>5,}  RSS MB "
                + "  ".join(f"{n} {v:.0f}" for n, v in last["rss_mb"].items()),
                flush=True,
            )
            if time.monotonic() - began > seconds + 300:
                problems.append("the generator did not finish")
                break
        if (rc := stack.procs["generator"].wait(60)) != 0:
            problems.append(f"the generator exited {rc}")
        del stack.procs["generator"]
        # Drained: everything published is counted.
        enriched = Tail(stack.settings, enriched_topic)

        def drained() -> bool:
            # Inference has read everything (one enriched record per raw one, more with duplicates),
            # and the streams stage everything inference wrote.
            ends = enriched.ends()
            applied = applied_offsets(stack, enriched_topic)
            inferred = sum(ends.values()) >= sum(raw.ends().values())
            return inferred and all(applied.get(p, 0) >= e for p, e in ends.items() if e)

        if not wait_for(drained, 300, every=2.0):
            problems.append("the pipeline did not drain within 5 minutes of the generator's end")
        raw.catch_up(timeout=300)
        enriched.catch_up(timeout=300)
        on_raw = {k for _p, _o, k, v in raw.records if v is not None}
        per_post = Counter(k for _p, _o, k, v in enriched.records if v is not None)
        window = stack.reader.window(4 * 3600, end_s=int(time.time()) + 3600)
        counted = stack.reader.totals(window).get("n", 0)
        if counted != len(on_raw):
            problems.append(f"Redis counts {counted:,} posts; posts.raw has {len(on_raw):,}")
        if missing := on_raw - set(per_post):
            problems.append(f"{len(missing):,} posts on posts.raw never reached posts.enriched")
        duplicates = sum(per_post.values()) - len(per_post)
        enriched.close()
        if crashed := stack.exited():
            problems.append(f"stages exited on their own: {crashed}")
    finally:
        stop.set()
        codes = {name: stack.stop(name) for name in list(stack.procs)}
        raw.close()
        stack.close()
    if bad := {n: c for n, c in codes.items() if c != 0}:
        problems.append(f"exit codes on SIGTERM: {bad}")
    if api_answers.get(0) or any(code >= 500 for code in api_answers):
        problems.append(f"API answers: {dict(api_answers)}")

    # Flatness: the first minute after the warm-up against the last minute.
    w, end = args.warmup_s, samples[-1]["t"] if samples else 0.0
    rss: dict[str, dict[str, float | None]] = {}
    for name in samples[-1]["rss_mb"] if samples else {}:
        first = minute(samples, w, w + 60, lambda s, n=name: s["rss_mb"].get(n))
        final = minute(samples, end - 60, end + 1, lambda s, n=name: s["rss_mb"].get(n))
        growth = (final - first) / first if first and final else None
        rss[name] = {
            "after_warmup_mb": first,
            "at_end_mb": final,
            "growth": None if growth is None else round(growth, 3),
        }
        if growth is not None and growth > RSS_GROWTH:
            problems.append(f"{name}: RSS grew {growth:.1%} ({first:.0f} -> {final:.0f} MB)")
    lag_first = minute(samples, w, w + 60, lambda s: s["backlog"])
    lag_final = minute(samples, end - 60, end + 1, lambda s: s["backlog"])
    if lag_first is not None and lag_final is not None and lag_final > lag_first + args.rate * LAG_SLACK_S:
        problems.append(f"backlog grew: {lag_first:.0f} -> {lag_final:.0f} posts")
    passed = not problems
    print(f"\n{'process':<12} {'RSS after warm-up':>18} {'RSS at end':>11} {'growth':>7}")
    for name, r in rss.items():
        print(
            f"{name:<12} {r['after_warmup_mb'] or 0:>15.0f} MB {r['at_end_mb'] or 0:>8.0f} MB "
            f"{(r['growth'] or 0):>7.1%}"
        )
    print(f"backlog (median): {lag_first} after warm-up, {lag_final} at the end")
    print(
        f"counted {counted:,} of {len(on_raw):,} posts on posts.raw; inference duplicates {duplicates:,}; "
        f"API answers {dict(api_answers)}"
    )
    for problem in problems:
        print(f"! {problem}")
    print(f"soak {'passed' if passed else 'FAILED'}")
    doc = {
        "benchmark": "soak: generator -> ingest -> inference -> streams -> Redis <- api, fixed rate",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rate": args.rate,
        "minutes": args.minutes,
        "warmup_s": args.warmup_s,
        "passed": passed,
        "problems": problems,
        "rss": rss,
        "backlog_after_warmup": lag_first,
        "backlog_at_end": lag_final,
        "posts": len(on_raw),
        "counted": counted,
        "inference_duplicates": duplicates,
        "api_answers": dict(api_answers),
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
