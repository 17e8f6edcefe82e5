"""The HTTP source: ``POST /v1/posts`` (one post or an array), bearer auth, 202 once the broker acked.

Replies: 401 without the right bearer token; 413 for a body over ``INGEST__MAX_BODY_BYTES`` or more
than ``INGEST__MAX_POSTS_PER_REQUEST`` posts; 400 for a body that is empty, not JSON, nested deeper
than 32 levels or ``[]`` (dead-lettered, reason ``decode``); 400 naming the offending field when any
post is invalid (``invalid post at index 1: field 'created_at': …``) — then nothing of that request
is published, and the invalid posts are dead-lettered (the first ten one by one, the rest as one dead
letter of the whole body); 503 when the broker did not acknowledge in time (nothing of the request is
counted as seen, so a retry is not a duplicate); 202 ``{"accepted": n, "duplicates": d}`` once every
new post is acknowledged. ``DELETE /v1/posts/{id}`` publishes a deletion (a tombstone keyed by the id):
202 ``{"deleted": id}`` once acknowledged. Slow clients: no whole request head within
``INGEST__HTTP_HEADER_TIMEOUT_S`` closes the connection, a body not read within
``INGEST__HTTP_BODY_TIMEOUT_S`` gets 408, and past ``INGEST__HTTP_MAX_CONNECTIONS`` open connections
the next one gets 503 and is closed.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import signal
import threading
import unicodedata
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import orjson
from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pulse import kafka
from pulse.settings import Settings
from schemas import MAX_ID_LENGTH, DeadLetter, DecodeError
from workers.ingest.mapping import FieldMapping
from workers.ingest.pipeline import STAGE, Batch, Item, Pipeline
from workers.ingest.publisher import Publisher, PublishError, count

log = logging.getLogger(__name__)
MAX_DEPTH = 32  # JSON nesting a request may have; a post needs four levels
MAX_DEAD_LETTERS_PER_REQUEST = 10  # then one dead letter of the whole body for the rest
MAX_ERRORS_LISTED = 20  # in a 400's "errors"; "invalid" says how many there were


class _Tombstone(NamedTuple):
    """A deletion as ``_publish`` takes it: a key and no value."""

    key: bytes
    value: None = None


def _json(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class HttpSource:
    name = "http"

    def __init__(
        self,
        pipeline: Pipeline,
        publisher: Publisher,
        token: str | None,
        max_body: int,
        ack_timeout: float,
        max_posts: int = 1_000,
        body_timeout: float = 30.0,
    ) -> None:
        self.pipeline = pipeline
        self.publisher = publisher
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.ack_timeout = ack_timeout
        self.max_posts = max_posts
        self.body_timeout = body_timeout
        self.failure: str | None = None  # why the source cannot publish any more (it is stopping)
        self.on_failure: Callable[[], None] = lambda: None
        self.failed = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/v1/posts", self.posts)
        app.router.add_delete("/v1/posts/{id:.+}", self.delete)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.publisher.error is None and self.failure is None
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "unhealthy\n")

    async def metrics(self, request: web.Request) -> web.Response:
        self.publisher.flush_metrics()
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _authorised(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)

    async def posts(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            count("unauthorised")
            return _json(401, {"error": "missing or wrong bearer token"}, **{"WWW-Authenticate": "Bearer"})
        if request.content_length is not None and request.content_length > self.max_body:
            count("too_large")
            return _json(413, {"error": f"body over {self.max_body} bytes"})
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            count("too_large")
            return _json(413, {"error": f"body over {self.max_body} bytes"})
        except TimeoutError:
            count("slow_client")
            why = f"request body not received within {self.body_timeout:g} s"
            return _json(408, {"error": why}, Connection="close")
        # Whatever a sender gets a 400 for, operators find in the DLQ (as the file source does).
        if not body.strip():
            return self._unreadable(body, "empty body: expected a post or a non-empty array of posts")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._unreadable(body, f"not valid JSON: {exc}")
        if too_deep(doc, MAX_DEPTH):
            return self._unreadable(body, f"JSON nested deeper than {MAX_DEPTH} levels")
        many = isinstance(doc, list)
        values = doc if many else [doc]
        if not values:
            return self._unreadable(body, "expected a post or a non-empty array of posts, got []")
        if len(values) > self.max_posts:
            count("too_large")
            return _json(413, {"error": f"{len(values)} posts in one request: at most {self.max_posts}"})
        # a dead letter keeps the client's own bytes for a single post, the element's JSON in an array
        items = [Item(orjson.dumps(v) if many else body, v, origin="http") for v in values]
        outcome = self.pipeline.process(Batch(items, "http"), dedup=False)
        if outcome.rejected:
            return self._invalid(body, outcome.dead, outcome.rejected, many)

        seen = self.pipeline.dedup
        fresh = []
        for post in outcome.posts:
            key = outcome.dedup_key(post)  # an edit (edited_at) is a new version, not a duplicate
            if key in seen or not seen.add(key):
                continue
            fresh.append(post)
        duplicates = len(outcome.posts) - len(fresh)
        count("duplicate", duplicates)
        try:
            await self._publish(fresh)
        except (TimeoutError, PublishError, kafka.QueueFullTimeout, KafkaException) as exc:
            for post in fresh:
                seen.discard(outcome.dedup_key(post))
            if isinstance(exc, KafkaException) or self.publisher.error is not None:
                self.fail(f"the producer failed: {exc}")  # unusable: stop, exit 1, a supervisor restarts
            return _json(503, {"error": f"the broker did not acknowledge: {exc}"}, **{"Retry-After": "5"})
        return _json(202, {"accepted": len(fresh), "duplicates": duplicates})

    async def delete(self, request: web.Request) -> web.Response:
        """``DELETE /v1/posts/{id}``: the post was deleted at its source; a tombstone keyed by its id
        (pseudonymised as the post's was), 202 once the broker acknowledged it."""
        if not self._authorised(request):
            count("unauthorised")
            return _json(401, {"error": "missing or wrong bearer token"}, **{"WWW-Authenticate": "Bearer"})
        post_id = request.match_info["id"]
        if not 0 < len(post_id) <= MAX_ID_LENGTH or any(unicodedata.category(c) == "Cc" for c in post_id):
            why = f"post id must be 1 to {MAX_ID_LENGTH} printable characters"
            return _json(400, {"error": why, "parameter": "id"})
        privacy = self.pipeline.privacy
        key = privacy.deleted_id(post_id) if privacy is not None else post_id
        try:
            await self._publish([_Tombstone(key.encode())])
        except (TimeoutError, PublishError, kafka.QueueFullTimeout, KafkaException) as exc:
            if isinstance(exc, KafkaException) or self.publisher.error is not None:
                self.fail(f"the producer failed: {exc}")
            return _json(503, {"error": f"the broker did not acknowledge: {exc}"}, **{"Retry-After": "5"})
        self.pipeline.dedup.discard(key)  # the id may be posted again: that is a new post
        count("deleted")
        return _json(202, {"deleted": post_id})

    def fail(self, why: str) -> None:
        """The source cannot publish any more: /healthz says so and the process ends with exit code 1."""
        if self.failure is None:
            self.failure = why
            log.error("stopping: cannot publish", extra={"stage": STAGE, "error": why})
            self.on_failure()

    def _unreadable(self, body: bytes, problem: str) -> web.Response:
        self.publisher.dead_letter(kafka.dead_letter(STAGE, "decode", problem, body, source="http"))
        count("dead_letter")
        return _json(400, {"error": problem})

    def _invalid(
        self, body: bytes, dead: list[DeadLetter], rejected: list[tuple[int, DecodeError]], many: bool
    ) -> web.Response:
        """400 naming the first bad field. The first few invalid posts are dead-lettered one by one and the
        rest as one dead letter of the whole body; the answer lists the first few errors and the total:
        a request of 50,000 bad elements costs what a request of a dozen does."""
        letters = dead[:MAX_DEAD_LETTERS_PER_REQUEST]
        if len(dead) > len(letters):
            rest = [i for i, _ in rejected[len(letters) :]]
            error = f"{len(rest)} more invalid posts in this request (posts[{rest[0]}] and on)"
            letters.append(kafka.dead_letter(STAGE, "validation", error, body, source="http"))
        for letter in letters:
            self.publisher.dead_letter(letter)
        count("dead_letter", len(letters))
        errors = [
            {"index": i, "field": e.field, "problem": e.problem} for i, e in rejected[:MAX_ERRORS_LISTED]
        ]
        first = errors[0]
        where = f" at index {first['index']}" if many else ""
        return _json(
            400,
            {
                "error": f"invalid post{where}: field '{first['field']}': {first['problem']}",
                "errors": errors,
                "invalid": len(rejected),
            },
        )

    async def _publish(self, posts: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        futures: list[asyncio.Future[None]] = [loop.create_future() for _ in posts]
        callbacks = [self.publisher.delivery(functools.partial(_settle_soon, loop, f)) for f in futures]
        # Off the event loop: while the producer queue is full, producing waits (serving delivery
        # reports) for up to the ack timeout, and the loop keeps serving other requests meanwhile.
        await asyncio.to_thread(self._produce, posts, callbacks)
        async with asyncio.timeout(max(0.0, deadline - loop.time())):
            await asyncio.gather(*futures)

    def _produce(self, posts: list[Any], callbacks: list[kafka.DeliveryCallback]) -> None:
        publisher = self.publisher
        for post, callback in zip(posts, callbacks, strict=True):
            kafka.produce(
                publisher.producer,
                publisher.topic,
                post.value,
                post.key,
                on_delivery=callback,
                timeout_s=self.ack_timeout,
                while_full=publisher.check,
            )


_BUSY = b'{"error": "too many connections: retry later"}\n'
TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


class _Refused(asyncio.Protocol):
    """A connection over the limit: one 503 and closed, before any of its bytes are read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        count("too_many_connections")
        cast(asyncio.Transport, transport).write(TOO_MANY)
        transport.close()


class CappedSite(web.TCPSite):
    """A TCP site that serves at most ``max_connections`` connections at once (aiohttp has no cap):
    each one beyond gets a 503 and is closed, so slow or idle clients cannot pile up sockets and
    memory. With the head and body timeouts, a slot held by a slow client frees itself."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, max_connections: int) -> None:
        super().__init__(runner, host, port)
        self.max_connections = max_connections

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        limit = self.max_connections

        def protocol() -> asyncio.BaseProtocol:
            return _Refused() if len(server.connections) >= limit else server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


def too_deep(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests arrays/objects more than ``limit`` deep (orjson reads 1,024 levels but
    writes only 254; a post needs four)."""
    level: list[tuple[Any, int]] = [(doc, 1)]
    while level:
        value, depth = level.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                level.append((child, depth + 1))
    return False


def _settle_soon(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], err: KafkaError | None, msg: Message
) -> None:
    # A delivery report, on whichever thread polled the producer: settle the future on the loop.
    loop.call_soon_threadsafe(_settle, future, err)


def _settle(future: asyncio.Future[None], err: KafkaError | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(PublishError(err.str()))


def serve(
    settings: Settings,
    *,
    host: str | None,
    port: int | None,
    platform: str | None,
    mapping: FieldMapping | None,
    warm: bool,
    no_auth: bool = False,
) -> int:
    import sys

    from workers.ingest import app as wiring

    token = settings.ingest.http_token.get_secret_value() if settings.ingest.http_token else None
    if token is None and not no_auth:
        print(
            "pulse ingest: error: set INGEST__HTTP_TOKEN (or pass --no-auth for a local demo)",
            file=sys.stderr,
        )
        return 2
    try:
        pipeline, publisher = wiring.pipeline(settings, platform, mapping, warm=warm)
    except (PublishError, ValueError) as exc:
        print(f"pulse ingest: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(
        _serve(
            settings,
            pipeline,
            publisher,
            token,
            host or settings.ingest.http_host,
            settings.ingest.http_port if port is None else port,
        )
    )


async def _serve(
    settings: Settings, pipeline: Pipeline, publisher: Publisher, token: str | None, host: str, port: int
) -> int:
    source = HttpSource(
        pipeline,
        publisher,
        token,
        settings.ingest.max_body_bytes,
        settings.ingest.http_ack_timeout_s,
        settings.ingest.max_posts_per_request,
        settings.ingest.http_body_timeout_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    polling = threading.Event()

    source.on_failure = stop.set

    def poll() -> None:  # delivery reports fire here and hand results to the loop
        try:
            while not polling.is_set():
                publisher.poll(0.1)
                if publisher.error is not None:
                    loop.call_soon_threadsafe(source.fail, f"delivery failed: {publisher.error.str()}")
                    return
        except Exception as exc:  # a dead poll thread would leave /healthz green and every POST failing
            loop.call_soon_threadsafe(source.fail, f"the delivery thread failed: {exc!r}")

    poller = threading.Thread(target=poll, name="ingest-http-poll", daemon=True)
    poller.start()
    # keepalive_timeout: aiohttp closes a connection that has no whole request head this long after
    # it opened or after its last response (a trickling client included: the timer is not reset by
    # bytes that do not complete a head).
    runner = web.AppRunner(
        source.app(), access_log=None, keepalive_timeout=settings.ingest.http_header_timeout_s
    )
    await runner.setup()
    site = CappedSite(runner, host, port, settings.ingest.http_max_connections)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("accepting posts", extra={"stage": STAGE, "url": f"http://{host}:{bound}/v1/posts"})
    await stop.wait()
    log.info("stopping: finishing requests and flushing", extra={"stage": STAGE})
    await runner.cleanup()  # stops accepting, lets in-flight requests finish
    polling.set()
    poller.join()
    remaining = await asyncio.to_thread(publisher.flush, settings.ingest.flush_timeout_s)
    publisher.close()
    if remaining or publisher.error is not None or source.failure is not None:
        log.error(
            "stopped with records not acknowledged",
            extra={
                "stage": STAGE,
                "in_flight": remaining,
                "error": (publisher.error and publisher.error.str()) or source.failure,
            },
        )
        return 1
    log.info("stopped", extra={"stage": STAGE, "published": publisher.published})
    return 0
