"""A post deleted or edited at its source: Jetstream and Mastodon deletions and a Mastodon edit, end to end.

Local servers speak Jetstream's WebSocket and Mastodon's streaming API; the real `pulse ingest`,
`pulse infer` and `pulse streams` processes run against the real broker and Redis; the API answers
from the store. Posts about a watched brand show up in the API's recent posts; then each server
sends the deletion in its platform's own shape (a delete commit with the DID and rkey, no record; a
`delete` event whose payload is the status id alone), and the posts' texts must leave every answer;
then a `status.update` edits a status: its new text replaces the old, the count stays and the
sentiment counts follow the new version.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from pulse.settings import Settings
from tests.harness import ThreadedServer, serve_app, serve_websocket, stage_env
from tests.integration.test_api import make_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PULSE = [sys.executable, "-m", "pulse.cli"]
WATCHLIST = Path(__file__).resolve().parents[2] / "infra" / "sample" / "watchlist.yaml"
DID = "did:plc:deletiontestauthor"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Platform(ThreadedServer):
    """Sends its posts at once and, when ``delete`` is set, the deletions; then heartbeats."""

    def __init__(self) -> None:
        super().__init__()
        self.delete = threading.Event()


class Jetstream(Platform):
    TEXTS = tuple(f"Acme support answered in minutes, thank you (jet {i})" for i in range(3))

    async def handler(self, ws: Any) -> None:
        for i, text in enumerate(self.TEXTS):
            record = {"$type": "app.bsky.feed.post", "createdAt": _now(), "text": text, "langs": ["en"]}
            commit = {"rev": f"r{i}", "operation": "create", "collection": "app.bsky.feed.post",
                      "rkey": f"3kdel{i}", "record": record, "cid": f"c{i}"}  # fmt: skip
            await ws.send(
                orjson.dumps({"did": DID, "time_us": i + 1, "kind": "commit", "commit": commit}).decode()
            )
        while not self.delete.is_set():
            await asyncio.sleep(0.1)
        commit = {"rev": "rd", "operation": "delete", "collection": "app.bsky.feed.post", "rkey": "3kdel0"}
        await ws.send(orjson.dumps({"did": DID, "time_us": 10, "kind": "commit", "commit": commit}).decode())
        await ws.wait_closed()

    async def listen(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        return await serve_websocket(self.handler)


class Mastodon(Platform):
    TEXTS = tuple(f"Acme fixed my order today, great service (masto {i})" for i in range(3))
    EDITED = "Acme lost my order again and never refunded it, terrible service, avoid (masto 1, edited)"

    def __init__(self) -> None:
        super().__init__()
        self.edit = threading.Event()
        self.created = _now()

    def status(self, i: int) -> dict[str, Any]:
        return {
            "id": f"1130000000000000{i}", "created_at": self.created, "language": "en",
            "content": f"<p>{self.TEXTS[i]}</p>",
            "uri": f"https://masto.example/users/bo/statuses/1130000000000000{i}", "reblog": None,
            "url": f"https://masto.example/@bo/1130000000000000{i}", "spoiler_text": "",
            "account": {"acct": "bo", "display_name": "Bo", "url": "https://masto.example/@bo"},
        }  # fmt: skip

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(len(self.TEXTS)):
            await resp.write(f"event: update\ndata: {orjson.dumps(self.status(i)).decode()}\n\n".encode())
        while not self.delete.is_set():
            await resp.write(b":thump\n\n")
            await asyncio.sleep(0.2)
        await resp.write(b"event: delete\ndata: 11300000000000000\n\n")
        while not self.edit.is_set():
            await resp.write(b":thump\n\n")
            await asyncio.sleep(0.2)
        status = {**self.status(1), "content": f"<p>{self.EDITED}</p>", "edited_at": _now()}
        await resp.write(f"event: status.update\ndata: {orjson.dumps(status).decode()}\n\n".encode())
        while not self.stopping:
            await resp.write(b":thump\n\n")
            await asyncio.sleep(0.5)
        return resp

    async def listen(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        app = web.Application()
        app.router.add_get("/api/v1/streaming/public", self.stream)
        return await serve_app(app)


def test_deletions_take_posts_out_of_every_api_answer_and_an_edit_replaces_the_text(
    fresh_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fresh_settings()
    jet, masto = Jetstream(), Mastodon()
    jet.start()
    masto.start()
    env = stage_env(
        settings,
        INFERENCE__WATCHLIST=str(WATCHLIST),
        INFERENCE__HTTP_PORT="0",
        INFERENCE__INTRA_OP_THREADS="1",
        INFERENCE__GROUP_ID=f"deletions-infer-{settings.redis.key_prefix}",
        STREAMS__HTTP_PORT="0",
        STREAMS__GROUP_ID=f"deletions-streams-{settings.redis.key_prefix}",
        INGEST__METRICS_PORT="-1",
    )
    commands = {
        "bluesky": ["ingest", "bluesky", "--url", f"ws://127.0.0.1:{jet.port}/subscribe"],
        "mastodon": ["ingest", "mastodon", "--instance", f"http://127.0.0.1:{masto.port}"],
        "infer": ["infer"],
        "streams": ["streams"],
    }
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in commands}
    procs = {
        name: subprocess.Popen([*PULSE, *argv], env=env, stdout=logs[name], stderr=subprocess.STDOUT)
        for name, argv in commands.items()
    }
    deleted = [Jetstream.TEXTS[0], Mastodon.TEXTS[0]]
    kept = [*Jetstream.TEXTS[1:], *Mastodon.TEXTS[1:]]

    def answers(api: Any) -> str:
        return "\n".join(
            api.get(path).text for path in ("/v1/brands/Acme?window=1h", "/v1/brands?window=1h", "/v1/alerts")
        )

    def until(what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 150
        while not done():
            for name, proc in procs.items():
                assert proc.poll() is None, (
                    f"{name} exited:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
                )
            assert time.monotonic() < deadline, f"{what}: not within 150 s"
            time.sleep(0.5)

    try:
        with make_app(settings) as api:
            until("every post shown", lambda: all(t in answers(api) for t in deleted + kept))
            jet.delete.set()
            masto.delete.set()
            until("the deleted posts gone", lambda: not any(t in answers(api) for t in deleted))
            assert all(t in answers(api) for t in kept)  # only those two
            before = api.get("/v1/brands/Acme?window=1h").json()
            masto.edit.set()  # an edit: the post shows its new text, and is not counted again
            until("the edit shown", lambda: Mastodon.EDITED in answers(api))
            assert Mastodon.TEXTS[1] not in answers(api)
            after = api.get("/v1/brands/Acme?window=1h").json()
            assert after["mentions"] == before["mentions"] == 6
            # ... and its latest sentiment is the one reported: praise edited into a complaint.
            assert after["sentiment"]["negative"] == before["sentiment"]["negative"] + 1
            assert after["sentiment"]["positive"] == before["sentiment"]["positive"] - 1
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(60)
        for out in logs.values():
            out.close()
        jet.stop()
        masto.stop()
