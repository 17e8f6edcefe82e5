"""Fault drill: the whole pipeline on a private stack, one fault per step, reconciled after each.

    python bench/drill.py [--short] [--posts 3000] [--rate 100] [--redis-outage-s 30]
                          [--hostile 10000] [--out bench/results/drill.json]

Stages, as a user runs them: `pulse ingest http` → posts.raw → `pulse infer` (real models, CPU) →
posts.enriched → `pulse streams` → Redis (plus a second streams process in the takeover step). The
drill posts its own posts over HTTP at ``--rate`` (retrying only what got no answer or a 503, as a
client must), and each step brings a fault in while they flow:

  baseline        no fault
  kill-inference  SIGKILL the inference worker mid-stream, start it again
  kill-streams    SIGKILL the streams worker mid-stream, start it again
  takeover        a second streams worker joins, is SIGKILLed mid-stream; the first takes its partitions
  broker-restart  stop the broker cleanly mid-stream and start it again
  redis-flush     Redis loses everything (FLUSHDB) mid-stream; stop streams, `pulse streams rebuild
                  --wipe`, start streams again
  redis-outage    Redis stops for --redis-outage-s (saving) and starts again; streams waits, resumes
  hostile         --hostile malformed and hostile records, half over HTTP (one per request), half
                  in a file through `pulse ingest file`

After each step, once the pipeline has drained, it reconciles everything so far against the input:
every acknowledged post is on posts.raw and posts.enriched (inference duplicates are counted and
printed), Redis counts every post exactly once (all posts, and each hashtag the drill used), no
dead letter except for the hostile records (each one there with a reason, or refused with a 4xx and
counted), no alert raised twice (an id twice on the alerts topic, or the same kind for the same
subject within the cool-down), and no stage exited on its own. A post every 0.5 s flows all through
(paused while a step reconciles), so every window has a covered baseline; Initech's posts turn angry
in two steps, before and after the flush, so alerts are raised and the cool-down must survive Redis's
loss. At the end the drill waits for the detectors to judge the last window and stops every stage
with SIGTERM. Each step prints a row; the exit code is 0 only when every step passed. ``--short`` is
the version `make test` runs.

The local broker (noida-db) never expires a SIGKILLed group member (docs/streams.md): in the takeover
step the drill waits for the broker to move the partitions and, when it does not, removes the dead
member from the group as an operator would (LeaveGroup on its behalf, what Kafka's admin API
``removeMembersFromConsumerGroup`` does); on Apache Kafka its session timeout does that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import PULSE, REPO_ROOT, HttpClient, Sender, Stack, Tail, applied_offsets, machine, wait_for

from pulse import services
from schemas import Alert, DeadLetter, decode
from streams.store import post_digest

BRANDS = ("Acme", "Globex", "Initech", "Soylent")
WORDS = ("love", "hate", "the new update", "support", "shipping", "prices", "the app", "customer service")
TOPICS = ("launch", "deals", "outage", "support", "travel")
INFERENCE_ID, STREAMS_ID = "drill-infer-0", "drill-streams-0"
# Initech's posts turn angry in these steps: the first raises a negative-sentiment alert (before Redis
# is flushed), the second comes within the cool-down, after the flush and rebuild: no second alert.
ANGRY_STEPS = ("broker-restart", "redis-outage")


@dataclass
class Row:
    step: str
    ok: bool
    seconds: float
    acked: int  # posts acknowledged so far (all steps)
    on_raw: int  # distinct drill posts on posts.raw
    enriched_duplicates: int  # records on posts.enriched beyond one per post (inference: at least once)
    counted: int  # posts in Redis (all-time totals)
    tags_wrong: int  # hashtags whose Redis count differs from the input's
    dead_letters: int  # new in this step
    alerts: int  # alert records on the topic
    problems: list[str] = field(default_factory=list)
    note: str = ""


class Drill:
    def __init__(self, stack: Stack, posts: int, rate: float) -> None:
        self.stack, self.n, self.rate = stack, posts, rate
        s = stack.settings
        self.raw, self.enriched = Tail(s, s.topics.raw), Tail(s, s.topics.enriched)
        self.dlq, self.alerts = Tail(s, s.topics.dlq), Tail(s, s.topics.alerts)
        self.tags: dict[str, set[str]] = {}  # every post the drill made: id -> its hashtags
        self.acked: set[str] = set()
        self.seq = 0
        self.last_post_s = 0.0
        self.killed: set[str] = set()  # stages stopped by the drill (not a crash)
        self.fault_problems: list[str] = []  # what a step's fault could not do
        self._lock = threading.Lock()
        self._pause, self._idle, self._stop = threading.Event(), threading.Event(), threading.Event()
        self._trickle: threading.Thread | None = None
        self.cooldown_s = int(stack.env.get("ALERTS__COOLDOWN_S", "1800"))

    # -- posts ----------------------------------------------------------------------------------------
    def posts(self, step: str, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            with self._lock:
                i = self.seq
                self.seq += 1
            tags = {f"drill{step.replace('-', '')}", TOPICS[i % len(TOPICS)]}
            brand, word = BRANDS[i % len(BRANDS)], WORDS[(i // 3) % len(WORDS)]
            if brand == "Initech" and step in ANGRY_STEPS:  # people turn on a brand: a negative spike
                text = f"Initech is down again, terrible service, I hate it ({i}) "
            else:
                text = f"{brand} {word} number {i} "
            text += " ".join(f"#{t}" for t in sorted(tags))
            pid = f"drill:{i}"
            self.tags[pid] = tags
            self.last_post_s = time.time()
            out.append(
                {
                    "id": pid,
                    "platform": "drill",
                    "author": {"id": f"a{i % 97}", "handle": f"user{i % 97}"},
                    "text": text,
                    "lang": "en",
                    "created_at": datetime.now(UTC).isoformat(),
                }
            )
        return out

    # -- background traffic -----------------------------------------------------------------------------
    def start_trickle(self, every_s: float = 0.5) -> None:
        """A post every ``every_s`` all through the drill, as a live stream never stops: every bucket has
        posts, so the detectors judge each window against a covered baseline. Paused while a step
        reconciles (``paused``), so the counts are compared against a fixed input."""

        def run() -> None:
            client = HttpClient(self.stack.http_port)
            while not self._stop.is_set():
                if self._pause.is_set():
                    self._idle.set()
                    time.sleep(0.05)
                    continue
                self._idle.clear()
                post = self.posts("background", 1)[0]
                body = orjson.dumps(post)
                while not self._stop.is_set():  # until acknowledged (a retry is a duplicate, safely)
                    status, _ = client.request("POST", "/v1/posts", body)
                    if status == 202:
                        self.acked.add(post["id"])
                        break
                    if 400 <= status < 500:  # refused: the reconciliation reports it (not acked)
                        self.fault_problems.append(f"a background post refused: HTTP {status}")
                        break
                    time.sleep(0.5)
                time.sleep(every_s)
            client.close()
            self._idle.set()

        self._trickle = threading.Thread(target=run, daemon=True)
        self._trickle.start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._pause.set()
        self._idle.wait(120)
        try:
            yield
        finally:
            self._idle.clear()
            self._pause.clear()

    def stop_trickle(self) -> None:
        self._stop.set()
        if self._trickle is not None:
            self._trickle.join(60)

    def flow(self, step: str, fault: Callable[[], str]) -> Row:
        """Posts at the drill's rate with ``fault`` brought in a third of the way through."""
        began = time.monotonic()
        sender = Sender(self.stack.http_port)
        posts = self.posts(step, self.n)
        sender.start(posts, self.rate)
        sender.wait_sent(self.n // 3)
        self.fault_problems = []
        note = fault()
        sender.join()
        problems = self.fault_problems + [
            f"a drill post refused: HTTP {s} {b!r}" for s, b in sender.refused[:3]
        ]
        self.acked |= sender.acked
        if sender.retries:
            note += f"; {sender.retries} requests resent (no answer or 503)"
        return self.reconcile(step, began, note.strip("; "), problems, expect_dead=0)

    # -- reconciliation ------------------------------------------------------------------------------
    def reconcile(
        self, step: str, began: float, note: str, problems: list[str], expect_dead: int | None
    ) -> Row:
        with self.paused():
            return self._reconcile(step, began, note, problems, expect_dead)

    def _reconcile(
        self, step: str, began: float, note: str, problems: list[str], expect_dead: int | None
    ) -> Row:
        stack, topic = self.stack, self.stack.settings.topics.enriched
        enriched_ids: Counter[str] = Counter()

        def enriched_has_all() -> bool:
            self.enriched.catch_up()
            enriched_ids.clear()
            enriched_ids.update(k.decode() for _p, _o, k, v in self.enriched.records if k and v is not None)
            return self.acked <= set(enriched_ids)

        if not wait_for(enriched_has_all, 240, every=1.0):
            problems.append(
                f"{len(self.acked - set(enriched_ids))} acknowledged posts never reached posts.enriched"
            )

        def drained() -> bool:
            ends, applied = self.enriched.ends(), applied_offsets(stack, topic)
            return all(applied.get(p, 0) >= end for p, end in ends.items() if end)

        if not wait_for(drained, 240, every=1.0):
            problems.append(f"Redis did not catch up with posts.enriched: {applied_offsets(stack, topic)}")
        self.raw.catch_up()
        on_raw = {k.decode() for _p, _o, k, v in self.raw.records if k and v is not None}
        if lost := self.acked - on_raw:
            problems.append(f"{len(lost)} acknowledged posts not on posts.raw, e.g. {sorted(lost)[:3]}")
        if foreign := on_raw - set(self.tags):
            problems.append(f"{len(foreign)} posts on posts.raw the drill did not make")
        duplicates = sum(enriched_ids.values()) - len(enriched_ids)
        window = stack.reader.window(4 * 3600, end_s=int(time.time()) + 3600)
        counted = stack.reader.totals(window).get("n", 0)
        if counted != len(on_raw):
            problems.append(f"Redis counts {counted} posts, posts.raw has {len(on_raw)}: {self.diagnose()}")
        want: Counter[str] = Counter()
        for pid in on_raw:
            want.update(self.tags.get(pid, ()))
        got = stack.reader.counts("hashtag", sorted(want), window)
        wrong = {t: (got[t], n) for t, n in want.items() if got[t] != n}
        if wrong:
            problems.append(f"hashtag counts (Redis, input) differ: {dict(sorted(wrong.items())[:4])}")
        letters = [decode(v, DeadLetter) for _p, _o, _k, v in self.dlq.catch_up() if v is not None]
        if expect_dead is not None and len(letters) != expect_dead:
            reasons = Counter(f"{d.stage}/{d.reason}" for d in letters)
            problems.append(f"{len(letters)} dead letters, expected {expect_dead}: {dict(reasons)}")
        if blank := [d for d in letters if not d.reason or not d.error]:
            problems.append(f"{len(blank)} dead letters without a reason")
        self.alerts.catch_up()
        alerts = [decode(v, Alert) for _p, _o, _k, v in self.alerts.records if v is not None]
        if twice := alerts_twice(alerts, self.cooldown_s):
            problems.append(f"alerts raised twice: {twice[:3]}")
        if crashed := {n: rc for n, rc in stack.exited().items() if n not in self.killed}:
            problems.append(f"stages exited on their own: {crashed}")
        row = Row(
            step=step,
            ok=not problems,
            seconds=round(time.monotonic() - began, 1),
            acked=len(self.acked),
            on_raw=len(on_raw),
            enriched_duplicates=duplicates,
            counted=counted,
            tags_wrong=len(wrong),
            dead_letters=len(letters),
            alerts=len(alerts),
            problems=problems,
            note=note,
        )
        print(format_row(row), flush=True)
        return row

    def diagnose(self) -> str:
        """Why counts differ, from the duplicate marks: per partition, the posts whose first copy's mark
        names another offset (counted as duplicates though they were not) and those with no mark."""
        first: dict[tuple[int, str], int] = {}
        for p, o, k, v in self.enriched.records:
            if k is not None and v is not None:
                first.setdefault((p, k.decode()), o)
        pipe = self.stack.redis.pipeline(transaction=False)
        items = sorted(first.items())
        for (p, pid), _o in items:
            pipe.get(self.stack.keys.post_marks(p) + post_digest(pid))
        wrong: Counter[int] = Counter()
        unmarked: Counter[int] = Counter()
        for ((p, _pid), o), mark in zip(items, pipe.execute(), strict=True):
            if mark is None:
                unmarked[p] += 1
            elif int(mark.split()[0]) != o:
                wrong[p] += 1
        return f"marks naming another offset {dict(wrong)}, posts without a mark {dict(unmarked)}"

    # -- stages ---------------------------------------------------------------------------------------
    def start_inference(self) -> None:
        self.stack.start(
            "inference", ["infer"], ready="partitions assigned", INFERENCE__INSTANCE_ID=INFERENCE_ID
        )

    def start_streams(self, name: str = "streams", **env: str) -> None:
        env = {"STREAMS__INSTANCE_ID": STREAMS_ID, **env} if name == "streams" else env
        self.stack.start(name, ["streams"], ready="partitions assigned", **env)

    # -- steps ----------------------------------------------------------------------------------------
    def baseline(self) -> Row:
        return self.flow("baseline", lambda: "")

    def kill_inference(self) -> Row:
        def fault() -> str:
            self.stack.kill("inference")
            self.start_inference()
            return "inference SIGKILLed and started again"

        return self.flow("kill-inference", fault)

    def kill_streams(self) -> Row:
        def fault() -> str:
            self.stack.kill("streams")
            self.start_streams()
            return "streams SIGKILLed and started again"

        return self.flow("kill-streams", fault)

    def takeover(self) -> Row:
        group = self.stack.env["STREAMS__GROUP_ID"]
        self.start_streams("streams-b")
        joined = wait_for(lambda: len(owners(self.stack, group)) == 2, 60)
        shared = owners(self.stack, group)

        def fault() -> str:
            self.stack.kill("streams-b")
            self.killed.add("streams-b")
            moved = wait_for(lambda: len(owners(self.stack, group)) == 1, 15)
            how = "the broker moved its partitions"
            if not moved:
                removed = remove_members(self.stack, group, keep=STREAMS_ID)
                how = f"the local broker kept the dead member: removed it from the group ({removed})"
                moved = wait_for(lambda: len(owners(self.stack, group)) == 1, 60)
            held = owners(self.stack, group)
            if not joined or not moved:
                self.fault_problems.append("the second worker did not join, or its partitions did not move")
            return (
                f"2 workers {'joined' if joined else 'did not both join'} ({shared}); streams-b SIGKILLed; "
                f"{how}; {'taken over' if moved else 'NOT taken over'}: {held}"
            )

        return self.flow("takeover", fault)

    def broker_restart(self) -> Row:
        def fault() -> str:
            services.down(self.stack.settings, only=["kafka"])
            time.sleep(2)
            services.up(self.stack.settings)
            return "broker stopped cleanly and started again"

        return self.flow("broker-restart", fault)

    def alert_count(self) -> int:
        self.alerts.catch_up()
        return sum(1 for _p, _o, _k, v in self.alerts.records if v is not None)

    def settle(self) -> list[str]:
        """Wait until the detectors have judged every window that holds a drill post; what is wrong with
        the alerts then (raised twice)."""
        field_ = "alerts"
        last = self.last_post_s + int(self.stack.env.get("ALERTS__WINDOW_S", "300")) + 10

        def judged() -> bool:
            done = self.stack.redis.hget(self.stack.keys.detector_state(), field_)
            return done is not None and int(done) >= last

        problems = [] if wait_for(judged, 150, every=1.0) else ["the detectors did not reach the last window"]
        self.alerts.catch_up()
        alerts = [decode(v, Alert) for _p, _o, _k, v in self.alerts.records if v is not None]
        for a in alerts:
            print(
                f"  alert {a.kind} {a.subject_kind} {a.subject}: window {a.window.start:%H:%M:%S}-"
                f"{a.window.end:%H:%M:%S}, raised {a.created_at:%H:%M:%S}",
                flush=True,
            )
        return problems + [f"alerts raised twice: {a}" for a in alerts_twice(alerts, self.cooldown_s)]

    def redis_flush(self) -> Row:
        def fault() -> str:
            raised = wait_for(lambda: self.alert_count() > 0, 120, every=1.0)
            if not raised:
                self.fault_problems.append("the provoked spike raised no alert before the flush")
                return "no alert to carry over"
            self.stack.redis.flushdb()
            time.sleep(3)  # streams goes on writing into the empty store
            rc = self.stack.stop("streams")
            done = subprocess.run(
                [*PULSE, "streams", "rebuild", "--wipe", "--no-progress"],
                env=self.stack.env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            self.start_streams()
            if rc != 0 or done.returncode != 0:
                self.fault_problems.append(f"streams stop exit {rc}, rebuild exit {done.returncode}")
            said = " ".join(done.stdout.strip().splitlines()[-2:]) or done.stderr.strip()[-300:]
            return f"FLUSHDB; streams stopped (exit {rc}); rebuild exit {done.returncode}: {said}"

        return self.flow("redis-flush", fault)

    def redis_outage(self, seconds: float) -> Row:
        def fault() -> str:
            self.stack.redis.shutdown(save=True)
            time.sleep(seconds)
            services.up(self.stack.settings)  # the same --dir: it loads what it saved
            return f"Redis stopped for {seconds:g} s (saved) and started again"

        return self.flow("redis-outage", fault)

    def hostile(self, n: int) -> Row:
        began = time.monotonic()
        step = "hostile"
        client = HttpClient(self.stack.http_port)
        statuses: Counter[int] = Counter()
        # Built a chunk at a time, as they are sent: a valid post is stamped fresh (one built long
        # before it is sent would be late behind the trickle's posts, which is not what this tests).
        for sent in range(0, n // 2, 90):  # 90: a multiple of the nine kinds
            size = min(90, n // 2 - sent)
            for body, _pid in hostile_records(size, self.posts(step, size)):
                status, _ = client.request("POST", "/v1/posts", body)
                statuses[status] += 1
                if status == 202:
                    self.acked.update(post_ids(body))
        client.close()
        problems = []
        if bad := {s: c for s, c in statuses.items() if s not in (202, 400, 413)}:
            problems.append(f"HTTP answers other than 202/400/413: {bad}")
        path = self.stack.workdir / "hostile.jsonl"
        records = hostile_records(n - n // 2, self.posts(step, n - n // 2))  # (bytes, valid id or None)
        lines = [body for body, _ in records]
        path.write_bytes(b"\n".join(lines) + b"\n")
        done = subprocess.run(
            [*PULSE, "ingest", "file", str(path), "--no-progress", "--no-warm", "--metrics-port", "-1"],
            env=self.stack.env,
            capture_output=True,
            timeout=600,
        )
        out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        if done.returncode != 0:
            problems.append(f"pulse ingest file exited {done.returncode}: {out[-300:]}")
        summary = {
            k: int(v)
            for k, v in re.findall(r'"?(published|dead_letters|duplicates|blank)"?[=:]\s*(\d+)', out)
        }
        # The file's valid lines were published: they count like any post.
        self.acked.update(pid for _body, pid in records if pid is not None)
        expect_dead = statuses[400] + summary.get("dead_letters", 0)
        note = (
            f"HTTP: {dict(sorted(statuses.items()))}; file: published {summary.get('published')}, "
            f"dead letters {summary.get('dead_letters')}, blank {summary.get('blank')}"
        )
        if summary.get("published", 0) + summary.get("dead_letters", 0) + summary.get(
            "duplicates", 0
        ) + summary.get("blank", 0) != len(lines):
            problems.append(f"the file source's summary does not add up to {len(lines)} lines: {summary}")
        return self.reconcile(step, began, note, problems, expect_dead=expect_dead)


def alerts_twice(alerts: list[Alert], cooldown_s: int) -> list[str]:
    """Alerts raised again: an id published twice, or two alerts of one kind for one subject whose
    windows end less than the cool-down apart."""
    out = [f"{a} (id twice)" for a, n in Counter(a.id for a in alerts).items() if n > 1]
    by_subject: dict[tuple[str, str, str], list[Alert]] = {}
    for alert in {a.id: a for a in alerts}.values():
        by_subject.setdefault((alert.kind, alert.subject_kind, alert.subject), []).append(alert)
    for (kind, _sk, subject), held in by_subject.items():
        ends = sorted(a.window.end for a in held)
        for before, after in itertools.pairwise(ends):
            if (after - before).total_seconds() < cooldown_s:
                out.append(f"{kind} {subject}: windows ending {before:%H:%M:%S} and {after:%H:%M:%S}")
    return out


def post_ids(body: bytes) -> list[str]:
    """The ids of the posts in a valid body (a post or a list of posts); [] if it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    docs = doc if isinstance(doc, list) else [doc]
    return [d["id"] for d in docs if isinstance(d, dict) and isinstance(d.get("id"), str)]


def hostile_records(n: int, valid: list[dict[str, Any]]) -> list[tuple[bytes, str | None]]:
    """``n`` records, cycling through the kinds: bad JSON, invalid UTF-8, wrong types, huge texts,
    control characters and NUL bytes, ``<script>`` payloads, deep nesting. The valid-but-nasty kinds use
    the posts of ``valid`` (same index), so an accepted one is known and counted."""
    out: list[tuple[bytes, str | None]] = []
    for i in range(n):
        post = dict(valid[i])
        kind = i % 9
        if kind == 0:  # truncated JSON
            body = orjson.dumps(post)[: 20 + i % 40]
        elif kind == 1:  # invalid UTF-8 inside a string
            body = orjson.dumps(post).replace(b'"text":"', b'"text":"\xff\xfe\xc3(', 1)
        elif kind == 2:  # wrong types
            body = orjson.dumps({**post, "text": ["not", "a", "string"], "created_at": 12, "author": "x"})
        elif kind == 3:  # a text over the limit
            body = orjson.dumps({**post, "text": "A" * 100_001})
        elif kind == 4:  # control characters and NUL bytes, escaped: a valid post
            body = orjson.dumps({**post, "text": post["text"] + " \u0000 nul \u0007 bell \u001b[31m red"})
        elif kind == 5:  # raw control bytes and a NUL in the body: not JSON
            body = orjson.dumps(post).replace(b'"text":"', b'"text":"\x00\x01\x1b', 1)
        elif kind == 6:  # a script payload: a valid post, stored and served as text
            body = orjson.dumps(
                {**post, "text": post["text"] + ' <script>alert("x")</script><img src=x onerror=1>'}
            )
        elif kind == 7:  # nested far deeper than any post
            body = b'{"id": "deep", "x": ' + b"[" * 200 + b"]" * 200 + b"}"
        else:  # a valid post whose id is hostile: too long
            body = orjson.dumps({**post, "id": "x" * 5000})
        out.append((body, post["id"] if kind in (4, 6) else None))
    return out


def owners(stack: Stack, group: str) -> dict[str, list[int]]:
    """Members of ``group`` that hold partitions: member id -> partitions."""
    try:
        desc = stack.admin.describe_consumer_groups([group])[group].result(timeout=15)
    except Exception:
        return {}
    return {
        (m.group_instance_id or m.member_id): sorted(tp.partition for tp in m.assignment.topic_partitions)
        for m in desc.members
        if m.assignment.topic_partitions
    }


def remove_members(stack: Stack, group: str, keep: str) -> str:
    """LeaveGroup on behalf of every member of ``group`` but the one with instance id ``keep``."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.group import LeaveGroupRequest

    desc = stack.admin.describe_consumer_groups([group])[group].result(timeout=15)
    victims = [m.member_id for m in desc.members if m.group_instance_id != keep]

    async def leave() -> list[int]:
        client = AIOKafkaClient(bootstrap_servers=stack.settings.kafka.bootstrap_servers)
        await client.bootstrap()
        try:
            codes = []
            for member in victims:
                node = client.get_random_node()
                answer = await client.send(node, LeaveGroupRequest(group, member))
                codes.append(answer.error_code)
            return codes
        finally:
            await client.close()

    codes = asyncio.run(leave())
    return f"LeaveGroup for {len(victims)} member(s), error codes {codes}"


def format_row(row: Row) -> str:
    verdict = "pass" if row.ok else "FAIL"
    line = (
        f"{row.step:<15} {verdict:<5} {row.seconds:>6.1f}s  acked {row.acked:>6}  raw {row.on_raw:>6}  "
        f"counted {row.counted:>6}  enriched dups {row.enriched_duplicates:>4}  "
        f"tags wrong {row.tags_wrong:>2}  dead letters {row.dead_letters:>5}  alerts {row.alerts:>3}"
    )
    if row.note:
        line += f"\n{'':<16}{row.note}"
    for problem in row.problems:
        line += f"\n{'':<16}! {problem}"
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--short", action="store_true", help="the version make test runs: fewer posts, shorter outage"
    )
    parser.add_argument("--posts", type=int, help="posts per step (default 3000; --short 240)")
    parser.add_argument("--rate", type=float, help="posts/s (default 100; --short 60)")
    parser.add_argument("--redis-outage-s", type=float, help="seconds Redis is away (default 30; --short 8)")
    parser.add_argument("--hostile", type=int, help="hostile records (default 10000; --short 900)")
    parser.add_argument("--steps", help="comma-separated steps to run (default: all, in order)")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default bench/results/drill.json; --short: none)"
    )
    args = parser.parse_args()
    posts = args.posts or (240 if args.short else 3000)
    rate = args.rate or (60.0 if args.short else 100.0)
    outage = args.redis_outage_s if args.redis_outage_s is not None else (8.0 if args.short else 30.0)
    hostile = args.hostile or (900 if args.short else 10_000)
    out = args.out or (None if args.short else REPO_ROOT / "bench" / "results" / "drill.json")

    workdir = Path(tempfile.mkdtemp(prefix="pulse-drill-"))
    print(f"drill: {posts} posts per step at {rate:g}/s; logs in {workdir}", flush=True)
    started = time.monotonic()
    stack = Stack(
        workdir,
        prefix=f"drill-{uuid.uuid4().hex[:6]}",
        STREAMS__GROUP_ID="drill-streams",
        INFERENCE__GROUP_ID="drill-inference",
        # Alerts within minutes (the defaults want 30 minutes of history): a spike the drill provokes,
        # so that "no alert twice" is tested, not vacuous.
        ALERTS__WINDOW_S="30",
        ALERTS__BASELINE_S="60",
        ALERTS__MIN_VOLUME="15",
        ALERTS__MIN_BASELINE_VOLUME="15",
    )
    rows: list[Row] = []
    try:
        drill = Drill(stack, posts, rate)
        stack.start_http()
        drill.start_inference()
        drill.start_streams()
        drill.start_trickle()
        steps = [
            ("baseline", drill.baseline),
            ("kill-inference", drill.kill_inference),
            ("kill-streams", drill.kill_streams),
            ("takeover", drill.takeover),
            ("broker-restart", drill.broker_restart),
            ("redis-flush", drill.redis_flush),
            ("redis-outage", lambda: drill.redis_outage(outage)),
            ("hostile", lambda: drill.hostile(hostile)),
        ]
        if args.steps:
            wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
            if unknown := set(wanted) - {name for name, _ in steps}:
                parser.error(f"unknown steps {sorted(unknown)}; the steps are {[name for name, _ in steps]}")
            steps = [(name, run) for name, run in steps if name in wanted]
        for name, run in steps:
            try:
                rows.append(run())
            except Exception as exc:
                traceback.print_exc()
                rows.append(
                    Row(name, False, 0, len(drill.acked), 0, 0, 0, 0, 0, 0, [f"{type(exc).__name__}: {exc}"])
                )
                print(format_row(rows[-1]), flush=True)
                break
        began = time.monotonic()
        drill.stop_trickle()
        problems = drill.settle()
        for slow in stack.slow_commands():
            print(f"  slow Redis command: {slow}", flush=True)
        codes = {name: stack.stop(name) for name in list(stack.procs) if name not in drill.killed}
        if bad := {n: c for n, c in codes.items() if c != 0}:
            problems.append(f"exit codes on SIGTERM: {bad}")
        rows.append(
            Row(
                "settle+stop",
                not problems,
                round(time.monotonic() - began, 1),
                len(drill.acked),
                0,
                0,
                0,
                0,
                0,
                drill.alert_count(),
                problems,
                note=f"detectors caught up; exit codes {codes}",
            )
        )
        print(format_row(rows[-1]), flush=True)
    finally:
        stack.close()
    passed = all(r.ok for r in rows) and len(rows) == len(steps) + 1
    print(
        f"\ndrill {'passed' if passed else 'FAILED'}: {sum(r.ok for r in rows)}/{len(rows)} steps in "
        f"{time.monotonic() - started:.0f} s"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "benchmark": "fault drill: ingest http -> inference -> streams -> Redis, one fault per step",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "posts_per_step": posts,
            "rate": rate,
            "redis_outage_s": outage,
            "hostile_records": hostile,
            "passed": passed,
            "steps": [asdict(r) for r in rows],
        }
        out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
