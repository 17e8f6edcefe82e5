"""Mastodon's streaming API (Server-Sent Events): the public or a hashtag timeline.

``update`` events are posts, ``status.update`` events new versions of them (edits, with ``edited_at``),
``delete`` events deletions. Statuses arrive as HTML; the text is the HTML's visible text (links in
full, ``#tag`` and ``@user`` as written). The post id is ``mastodon:<instance host>:<status id>``, the
id a ``delete`` event names. Mastodon's stream has no cursor: a reconnect resumes live (the gap is
logged with its length).
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import orjson

from pulse import metrics
from workers.ingest.pipeline import STAGE, Item

log = logging.getLogger(__name__)


class _Text(HTMLParser):
    _BREAKS: ClassVar[frozenset[str]] = frozenset({"br", "p", "li", "blockquote", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(content: str) -> str:
    """Visible text of a status's HTML. Ingest collapses whitespace afterwards."""
    if "<" not in content:
        return html.unescape(content)
    parser = _Text()
    parser.feed(content)
    parser.close()
    return "".join(parser.parts).strip()


def post_id(instance_host: str, status_id: object) -> str:
    """``mastodon:<instance host>:<status id>``: the id of a status as the instance streaming it names
    it, which is all a ``delete`` event carries (no URI, no account)."""
    return f"mastodon:{instance_host}:{status_id}"


def post_record(status: dict[str, Any], instance_host: str, edited: bool = False) -> dict[str, Any] | None:
    """The canonical record for a status, or None for a boost (the boosted post is not new). ``edited``:
    from a ``status.update`` event, a new version of a status already published (its ``edited_at``)."""
    if status.get("reblog"):
        return None
    account = status.get("account") or {}
    acct = account.get("acct")
    if isinstance(acct, str) and "@" not in acct:
        acct = f"{acct}@{instance_host}"  # local accounts are named without their instance
    text = status.get("content")
    spoiler = status.get("spoiler_text")
    if isinstance(text, str):
        text = html_to_text(text)
        if isinstance(spoiler, str) and spoiler:
            text = f"{spoiler}\n{text}"  # the content warning is part of what the author said
    out: dict[str, Any] = {
        "id": post_id(instance_host, status.get("id")),
        "platform": "mastodon",
        "author": {
            "id": account.get("url") or acct,
            "handle": acct,
            "display_name": account.get("display_name") or None,
        },
        "text": text,
        "created_at": status.get("created_at"),
        "url": status.get("url"),
    }
    if status.get("language"):
        out["lang"] = status["language"]
    if edited:
        out["edited_at"] = status.get("edited_at") or datetime.now(UTC).isoformat()
    return out


class SseParser:
    """Incremental text/event-stream parser: feed bytes, get (event, data) pairs; comments are heartbeats."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        self._buffer += chunk
        events: list[tuple[str, str]] = []
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return events
            line = self._buffer[:cut].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[cut + 1 :]
            if not line:
                if self._data or self._event:
                    events.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
            elif line.startswith(":"):
                continue  # heartbeat
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    self._event = value
                elif name == "data":
                    self._data.append(value)


class MastodonSource:
    """A ``firehose.Stream`` over a Mastodon instance's streaming endpoint."""

    name = "mastodon"

    def __init__(
        self, instance: str, hashtag: str | None = None, local: bool = False, token: str | None = None
    ) -> None:
        self.instance = instance.rstrip("/")
        self.host = urlsplit(self.instance).hostname or self.instance
        self.hashtag = hashtag.lstrip("#") if hashtag else None
        self.local = local
        self.token = token
        self.lost_at: float | None = None
        self._skipped = metrics.MESSAGES.labels(STAGE, "mastodon_skipped")

    def stream_url(self) -> str:
        if self.hashtag:
            path = "/api/v1/streaming/hashtag" + ("/local" if self.local else "")
            return f"{self.instance}{path}?{urlencode({'tag': self.hashtag})}"
        return f"{self.instance}/api/v1/streaming/public" + ("/local" if self.local else "")

    async def connect(self) -> AsyncIterator[Item | None]:
        import aiohttp

        url = self.stream_url()
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_read=90)  # heartbeats come every ~15 s
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers) as resp,
        ):
            if resp.status != 200:
                raise ConnectionError(f"{url} answered {resp.status}: {(await resp.text())[:200]}")
            if self.lost_at is not None:
                log.warning(
                    "stream resumed live; posts in the gap were not received",
                    extra={
                        "stage": STAGE,
                        "source": self.name,
                        "gap_s": round(time.monotonic() - self.lost_at, 1),
                    },
                )
            log.info("connected", extra={"stage": STAGE, "source": self.name, "url": url})
            parser = SseParser()
            try:
                async for chunk in resp.content.iter_any():
                    for event, data in parser.feed(chunk):
                        if event == "delete":  # the payload is the status id alone
                            status_id = data.strip()
                            if status_id and status_id.isascii() and status_id.isalnum():
                                yield Item(data.encode(), origin=url, deleted=post_id(self.host, status_id))
                            else:
                                yield Item(
                                    data.encode(), origin=url, problem="Mastodon delete without a status id"
                                )
                            continue
                        if event not in ("update", "status.update"):
                            self._skipped.inc()  # notification, announcement, ...
                            yield None
                            continue
                        raw = data.encode()
                        try:
                            status = orjson.loads(raw)
                        except orjson.JSONDecodeError as exc:
                            yield Item(raw, origin=url, problem=f"not valid JSON from Mastodon ({exc})")
                            continue
                        if not isinstance(status, dict):
                            yield Item(raw, origin=url, problem="Mastodon status is not an object")
                            continue
                        record = post_record(status, self.host, edited=event == "status.update")
                        if record is None:
                            self._skipped.inc()
                            yield None
                            continue
                        yield Item(raw, record, origin=url)
            finally:
                self.lost_at = time.monotonic()
