"""`pulse ingest bluesky` against a local server speaking Jetstream's wire format, into the real broker.

The server honours ``wantedCollections`` and ``cursor`` like Jetstream, drops the first connection
half-way, and records what each connection asked for, so the test sees the resume from the cursor.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from pulse.settings import Settings
from schemas import DeadLetter, RawPost, decode
from tests import kafka_io
from tests.harness import ThreadedServer, free_port, serve_websocket, stage_env

pytestmark = pytest.mark.timeout(120)
DID = "did:plc:eygmaihciaxprqvxpfvl6flk"
T0 = 1795867200_000_000  # 2026-11-28T12:00:00Z in microseconds


def post(
    n: int, text: str, created: str = "2026-11-28T12:00:00.000Z", langs: list[str] | None = None
) -> dict:
    record: dict[str, Any] = {"$type": "app.bsky.feed.post", "createdAt": created, "text": text}
    if langs is not None:
        record["langs"] = langs
    return {
        "did": DID,
        "time_us": T0 + n * 1_000_000,
        "kind": "commit",
        "commit": {
            "rev": f"3lrev{n}",
            "operation": "create",
            "collection": "app.bsky.feed.post",
            "rkey": f"3kpost{n}",
            "record": record,
            "cid": f"bafyreicid{n}",
        },
    }


MESSAGES = [
    {
        "did": DID,
        "time_us": T0,
        "kind": "identity",
        "identity": {"did": DID, "handle": "ann.bsky.social", "seq": 1, "time": "2026-11-28T12:00:00.000Z"},
    },
    post(1, "Loving the new Acme phone #acme", langs=["en"]),
    post(2, "Acme support is down again, third time this week"),
    {
        "did": "did:plc:other",
        "time_us": T0 + 2_500_000,
        "kind": "commit",
        "commit": {"rev": "3lx", "operation": "delete", "collection": "app.bsky.feed.post", "rkey": "3kold"},
    },
    post(3, "bad clock", created="2026-11-28 12:00:03"),  # no timezone: a dead letter
    post(4, "Globex est vraiment génial aujourd'hui", langs=["fr"]),
    post(5, "Das neue Acme Telefon ist großartig", langs=["de"]),
    {  # ann deletes post 4: the commit carries the DID and rkey, no record
        "did": DID,
        "time_us": T0 + 6_000_000,
        "kind": "commit",
        "commit": {
            "rev": "3lz",
            "operation": "delete",
            "collection": "app.bsky.feed.post",
            "rkey": "3kpost4",
        },
    },
]
DROP_AFTER = 3  # the first connection dies after this many messages


class FakeJetstream(ThreadedServer):
    def __init__(self) -> None:
        super().__init__()
        self.connections: list[dict[str, list[str]]] = []

    async def handler(self, ws: Any) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        self.connections.append(query)
        if query.get("wantedCollections") != ["app.bsky.feed.post"]:
            await ws.close(1008, "wantedCollections missing")
            return
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        todo = [m for m in MESSAGES if cursor is None or m["time_us"] >= cursor]
        first = len(self.connections) == 1
        for i, message in enumerate(todo):
            if first and i == DROP_AFTER:
                ws.transport.abort()  # an abrupt loss, not a clean close
                return
            await ws.send(orjson.dumps(message).decode())
        await ws.wait_closed()

    async def listen(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        return await serve_websocket(self.handler)


@pytest.fixture
def jetstream() -> Iterator[FakeJetstream]:
    server = FakeJetstream()
    server.start()
    yield server
    server.stop()


# Reconnects can repeat a record a little later: wait longer for extras before counting.
read_topic = functools.partial(kafka_io.read_topic, settle=2.0)


def test_jetstream_posts_arrive_once_and_the_stream_resumes_from_its_cursor(
    settings: Settings, jetstream: FakeJetstream
) -> None:
    env = stage_env(settings, INGEST__RECONNECT_MAX_S="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pulse.cli",
            "ingest",
            "bluesky",
            "--url",
            f"ws://127.0.0.1:{jetstream.port}/subscribe",
            "--metrics-port",
            "-1",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        records = read_topic(settings, settings.topics.raw, expect=6)
        letters = [
            decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=1, settle=0)
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()

    got = [(k, v) for k, v in records if v is not None]
    # Deletions are tombstones keyed by the post's id (whether or not the post was seen here).
    tombstones = sorted(k for k, v in records if v is None)
    assert tombstones == [
        f"bluesky:at://{k}".encode()
        for k in (f"{DID}/app.bsky.feed.post/3kpost4", "did:plc:other/app.bsky.feed.post/3kold")
    ]
    keys = [k for k, _ in got]
    assert len(keys) == len(set(keys)) == 4, keys  # the replayed overlap was dropped by dedup
    posts = {decode(v, RawPost).url.rsplit("/", 1)[1]: decode(v, RawPost) for _, v in got}  # type: ignore[union-attr]
    assert sorted(posts) == ["3kpost1", "3kpost2", "3kpost4", "3kpost5"]
    assert posts["3kpost1"].id == f"bluesky:at://{DID}/app.bsky.feed.post/3kpost1"
    assert posts["3kpost1"].author.handle == "ann.bsky.social" and posts["3kpost1"].hashtags == ("acme",)
    assert [posts[k].lang for k in ("3kpost1", "3kpost2", "3kpost4", "3kpost5")] == ["en", "en", "fr", "de"]

    assert [(d.reason, d.stage) for d in letters] == [("validation", "ingest")]
    assert orjson.loads(letters[0].original)["commit"]["rkey"] == "3kpost3"
    assert "created_at" in letters[0].error

    # the first connection asked for the live stream; the reconnect resumed 3 s before the last cursor seen
    assert "cursor" not in jetstream.connections[0]
    last_seen = MESSAGES[DROP_AFTER - 1]["time_us"]
    assert jetstream.connections[1]["cursor"] == [str(last_seen - 3_000_000)]


def test_a_firehose_that_never_answers_exits_non_zero_after_bounded_retries(settings: Settings) -> None:
    port = free_port()  # nothing listens there
    env = stage_env(settings, INGEST__RECONNECT_MAX_S="0.2", INGEST__RECONNECT_ATTEMPTS="2")
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulse.cli",
            "ingest",
            "bluesky",
            "--url",
            f"ws://127.0.0.1:{port}/subscribe",
            "--metrics-port",
            "-1",
        ],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr.decode()
    assert b"2 reconnects in a row failed" in done.stderr
    assert done.stderr.count(b"reconnecting") == 2
    assert time.monotonic() - started < 30
