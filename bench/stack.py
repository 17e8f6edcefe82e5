"""A private stack for the drill and the soak: a local broker and an embedded Redis on free ports, the
stages as `pulse` child processes, and readers that reconcile what came out with what went in.

Nothing here touches the machine's Redis or a broker the caller runs: the drill flushes and stops
its Redis, and restarts its broker.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pulse import redis_client, services, topics  # noqa: E402
from pulse.addresses import port_open  # noqa: E402
from pulse.settings import Settings, load  # noqa: E402
from streams.keys import Keys  # noqa: E402
from streams.read import TrendReader  # noqa: E402

PULSE = [sys.executable, "-m", "pulse.cli"]
WATCHLIST = REPO_ROOT / "infra" / "sample" / "watchlist.yaml"
TOKEN = "drill-token"
# Settings sections a child must take from the stack, never from the caller's shell (KAFKA__, ...).
_SECTIONS = tuple(
    f"{name.upper()}__"
    for name, f in Settings.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
)


def machine() -> dict[str, Any]:
    """The machine a result was measured on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def free_port(start: int) -> int:
    return next(p for p in range(start, start + 500) if not port_open("127.0.0.1", p))


class Stack:
    """Broker + Redis of its own under ``workdir``, topics provisioned, and the stages it starts."""

    def __init__(self, workdir: Path, prefix: str = "drill", **env: str) -> None:
        self.workdir = workdir
        broker, redis_port = free_port(19600), free_port(19700)
        self.settings = load(
            kafka={"bootstrap_servers": f"127.0.0.1:{broker}"},
            redis={"url": f"redis://127.0.0.1:{redis_port}/0", "key_prefix": prefix},
            local={"data_dir": workdir / "services", "start_timeout_s": 60},
        )
        services.up(self.settings)
        topics.provision(self.settings)
        self.keys = Keys(prefix)
        self.redis = redis_client.client(self.settings, socket_timeout=30, socket_connect_timeout=5)
        self.reader = TrendReader(self.redis, self.keys)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_SECTIONS)}
        self.env.update(
            {
                "KAFKA__BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
                "REDIS__URL": self.settings.redis.url,
                "REDIS__KEY_PREFIX": prefix,
                "LOCAL__DATA_DIR": str(self.settings.local.data_dir),
                "INGEST__HTTP_TOKEN": TOKEN,
                "INGEST__METRICS_PORT": "-1",
                "INFERENCE__WATCHLIST": str(WATCHLIST),
                "INFERENCE__HTTP_PORT": "0",
                "STREAMS__HTTP_PORT": "0",
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        self.admin = AdminClient(self.settings.kafka.config(**{"log_level": 2}))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.starts: Counter[str] = Counter()
        self.http_port = 0

    # -- stages ---------------------------------------------------------------------------------------
    def start(self, name: str, argv: Sequence[str], ready: str | None = None, **env: str) -> None:
        """Start ``pulse <argv>`` as ``name``; wait until its log shows ``ready`` (if given)."""
        self.starts[name] += 1
        log = self.workdir / f"{name}.{self.starts[name]}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [*PULSE, *argv], env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT
            )
        if ready is not None:
            self.wait_log(name, ready)

    def wait_log(self, name: str, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs[name].read_text(errors="replace"):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.logs[name]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not log {text!r} within {timeout:.0f} s; see {self.logs[name]}"
                )
            time.sleep(0.2)

    def start_http(self) -> None:
        self.http_port = self.http_port or free_port(19800)
        self.start("ingest-http", ["ingest", "http", "--port", str(self.http_port), "--no-warm"])
        deadline = time.monotonic() + 60
        while HttpClient(self.http_port).request("GET", "/healthz")[0] != 200:
            if self.procs["ingest-http"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP source did not start; see {self.logs['ingest-http']}")
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop(self, name: str, timeout: float = 90) -> int | None:
        """SIGTERM, then wait: the exit code (None if it had to be killed)."""
        proc = self.procs[name]
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            return None

    def exited(self) -> dict[str, int]:
        """Stages that exited on their own (a crash): name -> exit code."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def usage(self) -> dict[str, dict[str, float]]:
        """CPU seconds and RSS (MB) of each running stage, its children included."""
        out = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                family = [parent, *parent.children(recursive=True)]
                out[name] = {
                    "rss_mb": round(sum(p.memory_info().rss for p in family) / 2**20, 1),
                    "cpu_s": round(sum(sum(p.cpu_times()[:2]) for p in family), 1),
                }
        return out

    def slow_commands(self, over_ms: float = 250) -> list[str]:
        """Commands Redis's slow log holds that took over ``over_ms`` (it keeps the last 128)."""
        with contextlib.suppress(Exception):
            entries = self.redis.slowlog_get(128)
            return [
                f"{e['duration'] / 1000:.0f} ms: {e['command'][:120]!r}"
                for e in entries
                if e["duration"] > over_ms * 1000
            ]
        return []

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=30)
        with contextlib.suppress(Exception):
            self.redis.close()
        services.down(self.settings)


class HttpClient:
    """One keep-alive connection to the HTTP source; reconnects after any failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body); status 0 when the request did not get an answer."""
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            return resp.status, data
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Sender:
    """Posts to the HTTP source at a fixed rate, in requests of ``per_request``, on a thread. A request
    that gets no answer or a 503 is sent again until it gets a 202 (the source counts a resent post as a
    duplicate, so a retry is safe); anything else is a failure of the drill's own posts."""

    port: int
    acked: set[str] = field(default_factory=set)
    refused: list[tuple[int, bytes]] = field(default_factory=list)
    retries: int = 0
    sent: int = 0
    _thread: threading.Thread | None = None

    def send(self, posts: Sequence[dict[str, Any]], rate: float, per_request: int = 20) -> None:
        client = HttpClient(self.port)
        began = time.monotonic()
        for i in range(0, len(posts), per_request):
            chunk = posts[i : i + per_request]
            due = began + i / rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            stamp = datetime.now(UTC).isoformat()
            for post in chunk:  # written when sent, as a platform stamps a post (a retry keeps it)
                post["created_at"] = stamp
            body = orjson.dumps(chunk)
            deadline = time.monotonic() + 180
            while True:
                status, answer = client.request("POST", "/v1/posts", body)
                if status == 202:
                    self.acked.update(p["id"] for p in chunk)
                    break
                if status not in (0, 503) or time.monotonic() > deadline:
                    self.refused.append((status, answer[:300]))
                    break
                self.retries += 1
                time.sleep(0.5)
            self.sent = i + len(chunk)
        client.close()

    def start(self, posts: Sequence[dict[str, Any]], rate: float) -> None:
        self._thread = threading.Thread(target=self.send, args=(posts, rate), daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def wait_sent(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < n and time.monotonic() < deadline:
            time.sleep(0.05)


class Tail:
    """Everything on a topic, read from its start and kept up to date with ``catch_up``."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            settings.kafka.config(
                **{"group.id": f"drill-tail-{topic}", "enable.auto.commit": False, "log_level": 2}
            )
        )
        meta = self.consumer.list_topics(topic, timeout=15).topics[topic]
        self.partitions = sorted(meta.partitions)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions])
        self.records: list[tuple[int, int, bytes | None, bytes | None]] = []  # partition, offset, key, value
        self.next: dict[int, int] = dict.fromkeys(self.partitions, 0)

    def ends(self) -> dict[int, int]:
        out = {}
        for p in self.partitions:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=15)
            out[p] = high
        return out

    def catch_up(self, timeout: float = 60) -> list[tuple[int, int, bytes | None, bytes | None]]:
        """Read up to the ends the topic has now; the records new since the last call."""
        ends = self.ends()
        before = len(self.records)
        deadline = time.monotonic() + timeout
        while any(self.next[p] < ends[p] for p in self.partitions) and time.monotonic() < deadline:
            for msg in self.consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error() is not None:
                    continue
                p, offset = msg.partition() or 0, msg.offset() or 0
                self.records.append((p, offset, msg.key(), msg.value()))
                self.next[p] = offset + 1
        return self.records[before:]

    def close(self) -> None:
        self.consumer.close()


def applied_offsets(stack: Stack, topic: str) -> dict[int, int]:
    """The streams stage's applied offset + 1 per partition of ``topic``, as Redis records it."""
    raw = stack.redis.hgetall(stack.keys.offsets(0))
    out = {}
    for k, v in raw.items():
        name, _, part = k.decode().rpartition(":")
        if name == topic and part.isdigit():
            out[int(part)] = int(v) + 1
    return out


def wait_for(check: Callable[[], bool], timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def counts_by_tag(posts: Iterable[dict[str, Any]]) -> Counter[str]:
    """Expected mentions per hashtag (each post counts once per distinct hashtag, lower-cased)."""
    out: Counter[str] = Counter()
    for post in posts:
        out.update({t.lower() for t in post.get("hashtags", ())})
    return out
