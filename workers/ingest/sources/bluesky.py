"""Bluesky through Jetstream: JSON over a WebSocket, ``app.bsky.feed.post`` create and delete commits.

A delete commit becomes a deletion of the post's id (a tombstone on ``posts.raw``, see docs/privacy.md).

Every message carries ``time_us``, Jetstream's cursor. After a reconnect the source asks for the
stream from the last cursor it saw minus a small rewind (Jetstream's advice for gapless playback);
the posts seen twice are dropped by the dedup window.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from pulse import metrics
from workers.ingest.pipeline import STAGE, Item

log = logging.getLogger(__name__)

COLLECTION = "app.bsky.feed.post"
REWIND_US = 3_000_000  # on reconnect, ask for the last 3 s again: nothing in the gap is lost


class HandleCache:
    """DID → handle from the stream's identity events; bounded (handles are nice to have, not needed)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._handles: OrderedDict[str, str] = OrderedDict()

    def get(self, did: str) -> str | None:
        return self._handles.get(did)

    def put(self, did: str, handle: str) -> None:
        self._handles[did] = handle
        self._handles.move_to_end(did)
        if len(self._handles) > self.capacity:
            self._handles.popitem(last=False)


def post_record(message: dict[str, Any], handles: HandleCache | None = None) -> dict[str, Any] | None:
    """The canonical record for a Jetstream message, or None when it is not a post creation."""
    if message.get("kind") != "commit":
        if message.get("kind") == "identity" and handles is not None:
            identity = message.get("identity") or {}
            if isinstance(identity.get("handle"), str) and isinstance(message.get("did"), str):
                handles.put(message["did"], identity["handle"])
        return None
    commit = message.get("commit") or {}
    if commit.get("collection") != COLLECTION or commit.get("operation") != "create":
        return None
    did, rkey = message.get("did"), commit.get("rkey")
    record = commit.get("record")
    if not isinstance(record, dict):
        record = {}
    out: dict[str, Any] = {
        "id": post_id(did, rkey),
        "platform": "bluesky",
        "author": {
            "id": did,
            "handle": handles.get(did) if handles is not None and isinstance(did, str) else None,
        },
        "text": record.get("text"),
        "created_at": record.get("createdAt"),
        "url": f"https://bsky.app/profile/{did}/post/{rkey}",
    }
    langs = record.get("langs")
    if langs:
        out["lang"] = langs
    links = facet_links(record)
    if links:
        out["links"] = links  # the text shows links shortened ('acme.example/blog/20...'); facets in full
    return out


def post_id(did: object, rkey: object) -> str:
    """The id a Bluesky post is published under: its AT URI, which a delete commit also names."""
    return f"bluesky:at://{did}/{COLLECTION}/{rkey}"


def deleted_post(message: dict[str, Any]) -> str | None:
    """The id of the post a Jetstream delete commit removes (it carries the DID and rkey, no record)."""
    commit = message.get("commit")
    if message.get("kind") != "commit" or not isinstance(commit, dict):
        return None
    if commit.get("collection") != COLLECTION or commit.get("operation") != "delete":
        return None
    did, rkey = message.get("did"), commit.get("rkey")
    if not isinstance(did, str) or not did or not isinstance(rkey, str) or not rkey:
        return None
    return post_id(did, rkey)


def facet_links(record: dict[str, Any]) -> list[str]:
    """Full link targets from a post's rich-text facets (``app.bsky.richtext.facet#link``)."""
    links = []
    facets = record.get("facets")
    for facet in facets if isinstance(facets, list) else ():
        features = facet.get("features") if isinstance(facet, dict) else None
        for feature in features if isinstance(features, list) else ():
            if isinstance(feature, dict) and feature.get("$type") == "app.bsky.richtext.facet#link":
                uri = feature.get("uri")
                if isinstance(uri, str):
                    links.append(uri)
    return links


def subscribe_url(base: str, cursor: int | None) -> str:
    parts = urlsplit(base)
    query = [("wantedCollections", COLLECTION)]
    if cursor is not None:
        query.append(("cursor", str(cursor)))
    extra = f"{parts.query}&" if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, extra + urlencode(query), ""))


class JetstreamSource:
    """A ``firehose.Stream`` over Jetstream's WebSocket."""

    name = "bluesky"

    def __init__(self, url: str, cursor: int | None = None, rewind_us: int = REWIND_US) -> None:
        self.url = url
        self.cursor = cursor  # the newest time_us seen; the next connection resumes from it
        self.rewind_us = rewind_us
        self.handles = HandleCache()
        self._skipped = metrics.MESSAGES.labels(STAGE, "bluesky_skipped")

    def connect_url(self) -> str:
        return subscribe_url(self.url, None if self.cursor is None else max(0, self.cursor - self.rewind_us))

    async def connect(self) -> AsyncIterator[Item | None]:
        import websockets

        url = self.connect_url()
        log.info("connecting", extra={"stage": STAGE, "source": self.name, "url": url})
        async with websockets.connect(url, max_size=2**22, open_timeout=15, ping_interval=20) as ws:
            async for frame in ws:
                raw = frame.encode() if isinstance(frame, str) else frame
                try:
                    message = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    yield Item(raw, origin=self.url, problem=f"not valid JSON from Jetstream ({exc})")
                    continue
                if not isinstance(message, dict):
                    yield Item(raw, origin=self.url, problem="Jetstream message is not an object")
                    continue
                time_us = message.get("time_us")
                if isinstance(time_us, int) and (self.cursor is None or time_us > self.cursor):
                    self.cursor = time_us
                deleted = deleted_post(message)
                if deleted is not None:
                    yield Item(raw, origin=f"{self.url}#time_us={time_us}", deleted=deleted)
                    continue
                record = post_record(message, self.handles)
                if record is None:
                    self._skipped.inc()
                    yield None
                    continue
                yield Item(raw, record, origin=f"{self.url}#time_us={time_us}")
