"""`pulse ingest mastodon` against a local server speaking Mastodon's streaming API (SSE), into the broker."""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from pulse.settings import Settings
from schemas import DeadLetter, RawPost, decode
from tests import kafka_io
from tests.harness import ThreadedServer, serve_app, stage_env

pytestmark = pytest.mark.timeout(120)
TOKEN = "masto-token"


def status(n: int, content: str, language: str | None = "en", **overrides: Any) -> dict[str, Any]:
    doc = {
        "id": f"11356544293839{n:04d}",
        "created_at": f"2026-11-28T12:00:{n:02d}.000Z",
        "in_reply_to_id": None,
        "in_reply_to_account_id": None,
        "sensitive": False,
        "spoiler_text": "",
        "visibility": "public",
        "language": language,
        "uri": f"https://chaos.social/users/ann/statuses/11356544293839{n:04d}",
        "url": f"https://chaos.social/@ann/11356544293839{n:04d}",
        "replies_count": 0,
        "reblogs_count": 0,
        "favourites_count": 0,
        "edited_at": None,
        "content": content,
        "reblog": None,
        "account": {
            "id": "109",
            "username": "ann",
            "acct": "ann",
            "display_name": "Ann Example",
            "url": "https://chaos.social/@ann",
            "bot": False,
        },
        "media_attachments": [],
        "mentions": [],
        "tags": [{"name": "acme", "url": "https://chaos.social/tags/acme"}],
        "emojis": [],
        "card": None,
        "poll": None,
    }
    doc.update(overrides)
    return doc


def sse(event: str, data: Any) -> bytes:
    body = data if isinstance(data, str) else orjson.dumps(data).decode()
    return f"event: {event}\ndata: {body}\n\n".encode()


HASHTAG = '<a href="https://chaos.social/tags/acme" class="mention hashtag" rel="tag">#<span>acme</span></a>'
FIRST = [  # the first connection sends these, then drops
    b":)\n\n",
    sse("update", status(1, f"<p>Acme support fixed it in minutes {HASHTAG}</p>")),
    sse("delete", "113565442938390099"),
    sse("update", status(2, f"<p>Acme outage again?<br>{HASHTAG}</p>", language=None)),
]
SECOND = [
    sse(
        "update", status(2, f"<p>Acme outage again?<br>{HASHTAG}</p>", language=None)
    ),  # seen before the drop
    sse("update", status(3, "<p>bad</p>", created_at=None)),  # a dead letter: no event time
    sse("update", status(4, "<p>Boost</p>", reblog=status(1, "<p>x</p>"))),  # a boost is not a new post
    b":thump\n\n",
    sse("update", status(5, f"<p>Le nouveau téléphone Acme est génial {HASHTAG}</p>", language="fr")),
    sse("delete", "113565442938390005"),  # its author deleted it: a tombstone for its id
]


class FakeMastodon(ThreadedServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, str]] = []  # (path, tag, authorization)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            (request.path, request.query.get("tag", ""), request.headers.get("Authorization", ""))
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "The access token is invalid"}, status=401)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        first = len(self.requests) == 1
        for chunk in FIRST if first else SECOND:
            await resp.write(chunk)
            await asyncio.sleep(0.05)
        if first:
            assert request.transport is not None
            request.transport.abort()  # the connection is lost mid-stream
            return resp
        while not self.stopping:
            await resp.write(b":thump\n\n")
            await asyncio.sleep(0.5)
        return resp

    async def listen(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        app = web.Application()
        app.router.add_get("/api/v1/streaming/hashtag", self.stream)
        return await serve_app(app)


@pytest.fixture
def mastodon() -> Iterator[FakeMastodon]:
    server = FakeMastodon()
    server.start()
    yield server
    server.stop()


# Reconnects can repeat a record a little later: wait longer for extras before counting.
read_topic = functools.partial(kafka_io.read_topic, settle=2.0)


def test_mastodon_updates_arrive_once_across_a_reconnect(settings: Settings, mastodon: FakeMastodon) -> None:
    env = stage_env(settings, INGEST__RECONNECT_MAX_S="1", MASTODON_TOKEN=TOKEN)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pulse.cli",
            "ingest",
            "mastodon",
            "--instance",
            f"http://127.0.0.1:{mastodon.port}",
            "--hashtag",
            "#acme",
            "--metrics-port",
            "-1",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        got = read_topic(settings, settings.topics.raw, expect=5)
        letters = [
            decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=1, settle=0)
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()

    posts = {k: decode(v, RawPost) for k, v in got if v is not None}
    base = "mastodon:127.0.0.1:11356544293839"  # <instance host>:<status id>, as a delete event names it
    assert len(posts) == 3
    assert sorted(posts) == [f"{base}0001".encode(), f"{base}0002".encode(), f"{base}0005".encode()]
    # Deletions are tombstones keyed by the id, after the post when the post was seen (0099 was not).
    tombstones = [k for k, v in got if v is None]
    assert sorted(set(tombstones)) == [f"{base}0005".encode(), f"{base}0099".encode()]
    five = [v is None for k, v in got if k == f"{base}0005".encode()]
    assert five == [False, True]  # one partition per key: the post, then its tombstone
    p1, p2, p5 = (posts[f"{base}000{n}".encode()] for n in (1, 2, 5))
    assert p1.text == "Acme support fixed it in minutes #acme" and p1.hashtags == ("acme",)
    assert (p1.author.handle, p1.lang, p5.lang) == ("ann@127.0.0.1", "en", "fr")
    assert p2.text == "Acme outage again? #acme" and p2.lang == "en"  # detected: the status had none
    assert [(d.reason, d.stage) for d in letters] == [("validation", "ingest")]
    assert "created_at" in letters[0].error and orjson.loads(letters[0].original)["id"].endswith("0003")
    assert [r[:2] for r in mastodon.requests[:2]] == [("/api/v1/streaming/hashtag", "acme")] * 2
    assert all(r[2] == f"Bearer {TOKEN}" for r in mastodon.requests)
