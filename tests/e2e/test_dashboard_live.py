"""The dashboard page in Chromium against a scripted /v1: the orderings a live server hits only by chance.

The page lists alerts from ``GET /v1/alerts`` and adds each one that arrives on ``/v1/stream`` as it
comes. A listing answered without an alert that already arrived live (the request was in flight
before the alert was stored: seen in `make test` under load, when the whole-product test's click
found the Globex alert gone a moment after it showed) must not take that alert off the page.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
import pytest

from tests.browser import texts

STATIC = Path(__file__).resolve().parents[2] / "workers" / "api" / "static"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


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


class ScriptedApi:
    """Serves the real static files and the few /v1 reads the page makes, with the alert listing and the
    event stream under the test's control."""

    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []  # what GET /v1/alerts answers
        self.listings = 0  # listing answers sent
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = urlparse(self.path).path
                if path == "/v1/stream":
                    return api.stream(self)
                body = api.answer(path)
                if body is None:
                    self.send_error(404)
                    return
                data, kind = body
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if path == "/v1/alerts":
                    with api.lock:
                        api.listings += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def answer(self, path: str) -> tuple[bytes, str] | None:
        json = "application/json"
        if path == "/":
            return (STATIC / "index.html").read_bytes(), "text/html"
        if path.startswith("/static/"):
            file = STATIC / path.removeprefix("/static/")
            return (
                (file.read_bytes(), TYPES.get(file.suffix, "application/octet-stream"))
                if file.is_file()
                else None
            )
        if path == "/v1/alerts":
            with self.lock:
                return orjson.dumps({"alerts": list(self.listed)}), json
        reads = {
            "/v1/brands": {"brands": []},
            "/v1/share-of-voice": {"points": [], "brands": []},
            "/v1/trends": {"terms": [], "watermark": None},
        }
        return (orjson.dumps(reads[path]), json) if path in reads else None

    def stream(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        while True:
            try:
                kind, data = self.events.get(timeout=0.5)
                handler.wfile.write(f"event: {kind}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
            except queue.Empty:
                handler.wfile.write(b": keep-alive\n\n")
            except OSError:
                return
            handler.wfile.flush()

    def listings_after(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.listings > n:
                    return
            time.sleep(0.05)
        raise AssertionError(f"no alert listing after the {n}th within {timeout:.0f} s")


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    scripted = ScriptedApi()
    thread = threading.Thread(target=scripted.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        scripted.server.shutdown()
        scripted.server.server_close()


def shown(browser: Any) -> list[str]:
    return [t.split("\n")[1] for t in texts(browser, "#alerts li")]


def test_a_listing_that_lacks_a_live_alert_does_not_take_it_off_the_page(
    api: ScriptedApi, browser: Any
) -> None:
    browser.get(api.url)
    api.listings_after(0, 30)  # the first refresh listed no alerts
    deadline = time.monotonic() + 10
    while not browser.execute_script("return document.getElementById('live').textContent === 'live'"):
        assert time.monotonic() < deadline, "the page did not open the event stream"
        time.sleep(0.1)

    api.events.put(("alert", alert("a1", "Globex")))
    deadline = time.monotonic() + 10
    while shown(browser) != ["Negative spike: Globex"]:
        assert time.monotonic() < deadline, f"the live alert did not show: {shown(browser)}"
        time.sleep(0.05)

    # The refresh the alert schedules lists from a store that does not hold it yet.
    before = api.listings
    api.listings_after(before, 10)
    for _ in range(20):  # the page has the stale answer; over the next second the alert stays
        assert shown(browser) == ["Negative spike: Globex"], (
            "a stale listing took the live alert off the page"
        )
        time.sleep(0.05)

    # Once the store lists it, it is shown once (not twice: live and listed), with the listing's others.
    with api.lock:
        api.listed = [alert("a1", "Globex"), alert("a0", "Initech")]
    api.events.put(("trend", {}))
    deadline = time.monotonic() + 10
    while shown(browser) != ["Negative spike: Globex", "Negative spike: Initech"]:
        assert time.monotonic() < deadline, f"the listing did not show: {shown(browser)}"
        time.sleep(0.05)
    assert browser.execute_script("return document.getElementById('alerts-empty').hidden")
