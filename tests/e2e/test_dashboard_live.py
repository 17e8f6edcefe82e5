"""The dashboard page in Chromium against a scripted /v1: the orderings a live server hits only by chance.

The page lists alerts from ``GET /v1/alerts`` and adds each one that arrives on ``/v1/stream`` as it
comes. A listing answered without an alert that already arrived live (the request was in flight
before the alert was stored: seen in `make test` under load, when the whole-product test's click
found the Globex alert gone a moment after it showed) must not take that alert off the page.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.browser import texts
from tests.harness import ThreadedServer, serve_app
from workers.api.app import STATIC


def alert(alert_id: str, subject: str) -> dict[str, Any]:
    window = {"start": "2026-12-03T08:00:00Z", "end": "2026-12-03T08:05:00Z"}
    return {
        "id": alert_id,
        "kind": "negative_sentiment",
        "subject": subject,
        "metric": "negative_share",
        "observed": 0.8,
        "baseline": 0.2,
        "score": 6.0,
        "window": window,
    }


def until(what: str, condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)


class ScriptedApi(ThreadedServer):
    """Serves the real static files and the few /v1 reads the page makes, with the alert listing and the
    event stream under the test's control."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[dict[str, Any]] = []  # what GET /v1/alerts answers
        self.listings = 0  # listing answers sent
        self.lock = threading.Lock()
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None

    def send(self, kind: str, data: dict[str, Any]) -> None:
        """Publish one server-sent event (from the test's thread)."""
        assert self._loop is not None and self.events is not None
        self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))

    async def alerts(self, request: web.Request) -> web.Response:
        with self.lock:
            self.listings += 1
            return web.json_response({"alerts": list(self.listed)})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        assert self.events is not None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        while not self.stopping:
            try:
                kind, data = await asyncio.wait_for(self.events.get(), 0.5)
                await resp.write(f"event: {kind}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
        return resp

    async def listen(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        self.events = asyncio.Queue()
        reads = {
            "/v1/brands": {"brands": []},
            "/v1/share-of-voice": {"points": [], "brands": []},
            "/v1/trends": {"terms": [], "watermark": None},
        }

        async def page(request: web.Request) -> web.StreamResponse:
            if request.path == "/":
                return web.FileResponse(STATIC / "index.html")
            return web.json_response(reads[request.path])

        app = web.Application()
        app.router.add_static("/static", STATIC)
        app.router.add_get("/v1/alerts", self.alerts)
        app.router.add_get("/v1/stream", self.stream)
        for path in ("/", *reads):
            app.router.add_get(path, page)
        return await serve_app(app)


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    server = ScriptedApi()
    server.start()
    yield server
    server.stop()


def shown(browser: Any) -> list[str]:
    return [t.split("\n")[1] for t in texts(browser, "#alerts li")]


def test_a_listing_that_lacks_a_live_alert_does_not_take_it_off_the_page(
    api: ScriptedApi, browser: Any
) -> None:
    browser.get(f"http://127.0.0.1:{api.port}/")
    until("the first listing", lambda: api.listings > 0, 30)  # it listed no alerts
    until("the event stream", lambda: browser.execute_script("return $('live').textContent === 'live'"))

    api.send("alert", alert("a1", "Globex"))
    until("the live alert", lambda: shown(browser) == ["Negative spike: Globex"])

    # The refresh the alert schedules lists from a store that does not hold it yet.
    before = api.listings
    until("the listing after the alert", lambda: api.listings > before)
    for _ in range(20):  # the page has the stale answer; over the next second the alert stays
        assert shown(browser) == ["Negative spike: Globex"], (
            "a stale listing took the live alert off the page"
        )
        time.sleep(0.05)

    # Once the store lists it, it is shown once (not twice: live and listed), with the listing's others.
    with api.lock:
        api.listed = [alert("a1", "Globex"), alert("a0", "Initech")]
    api.send("trend", {})
    until("the listing", lambda: shown(browser) == ["Negative spike: Globex", "Negative spike: Initech"])
    assert browser.execute_script("return document.getElementById('alerts-empty').hidden")
