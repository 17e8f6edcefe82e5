"""`pulse api`: the query API over the trend store's read side, server-sent events, and the dashboard.

FastAPI, with the ``schemas`` models as response models, so ``/openapi.json`` is the contract. Reads go
through ``streams.read.TrendReader`` only (the API imports nothing else of the stages). Errors are
``ErrorBody`` JSON naming the bad parameter; nothing else (no stack trace) ever reaches a client.
"""

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis
import redis.asyncio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pulse.settings import Settings
from schemas import Alert, NameCount, SamplePost, SentimentCounts, TermCount, Window, decode
from schemas.api import (
    AlertsResponse,
    BrandCard,
    BrandDetail,
    BrandsResponse,
    ErrorBody,
    Health,
    ShareOfVoicePoint,
    ShareOfVoiceResponse,
    TimelinePoint,
    TimelineResponse,
    TrendsResponse,
)
from streams.buckets import RESOLUTIONS, parse_window, resolution_for
from streams.buckets import Window as Span
from streams.read import TrendReader

log = logging.getLogger("pulse.api")
STAGE = "api"
STATIC = Path(__file__).resolve().parent / "static"
KINDS = ("hashtag", "entity", "brand", "keyword")

REQUESTS = Counter("pulse_api_requests_total", "API requests by route and status.", ["route", "status"])
LATENCY = Histogram("pulse_api_latency_seconds", "API request latency by route.", ["route"])


# What a parameter that fails its pattern should have looked like.
PATTERN_HINTS = {
    "window": "window: expected e.g. 1m, 5m, 15m, 1h, 24h, 7d or seconds",
    "step": "step: expected e.g. 10s, 1m, 5m, 1h or seconds",
}


class BadRequest(Exception):
    """A request the API cannot answer as asked: 400 (or ``status``) naming the parameter."""

    def __init__(self, message: str, parameter: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.parameter, self.status = message, parameter, status


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _window(span: Span) -> Window:
    return Window(start=_dt(span.start), end=_dt(span.end), size_s=span.size)


def _counts(labels: dict[str, int]) -> SentimentCounts:
    return SentimentCounts(**{k: labels.get(k, 0) for k in ("negative", "neutral", "positive")})


def parse_since(text: str, now_s: float) -> int:
    """``since``: an RFC 3339 time with an offset, or a duration back from now (``1h``, ``24h``)."""
    try:
        return int(now_s - parse_window(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest("since: expected an RFC 3339 time or a duration such as 1h", "since") from None
    if when.tzinfo is None:
        raise BadRequest("since: give a timezone offset (add 'Z' for UTC)", "since")
    return int(when.timestamp())


_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


class LiveEvents:
    """The events stream (snapshots and alerts as published), read without blocking the event loop.

    An alert is sent as it is now (``alert_key``): one re-published since (without a deleted post in
    its evidence) replaces the version the stream recorded, and an expired one is left out."""

    def __init__(
        self, client: redis.asyncio.Redis, key: str, alert_key: Callable[[str], str] | None = None
    ) -> None:
        self.client, self.key, self.alert_key = client, key, alert_key

    async def last_event_id(self) -> str:
        newest: Any = await self.client.xrevrange(self.key, count=1)
        return newest[0][0].decode() if newest else "0-0"

    async def events_after(self, cursor: str, block_ms: int) -> list[tuple[str, str, str]]:
        answer: Any = await self.client.xread({self.key: cursor}, count=100, block=block_ms)
        out = []
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                kind, data = fields[b"type"].decode(), fields[b"data"]
                if kind == "alert" and self.alert_key is not None:
                    data = await self.client.get(self.alert_key(orjson.loads(data)["id"]))
                    if data is None:
                        continue
                out.append((entry_id.decode(), kind, data.decode()))
        return out


def create_app(settings: Settings, reader: TrendReader, live: LiveEvents) -> FastAPI:
    cfg = settings.api
    token = cfg.token.get_secret_value().encode() if cfg.token else None
    app = FastAPI(
        title="Social Pulse API",
        version="1",
        description="Trending terms, brand volume and sentiment, share of voice, alerts with evidence, "
        "live events. Times are RFC 3339 UTC; windows are 1m, 5m, 15m, 1h, 24h, 7d or seconds.",
        responses={
            400: {"model": ErrorBody, "description": "A parameter is wrong; the body names it."},
            401: {
                "model": ErrorBody,
                "description": "API__TOKEN is set and the bearer token is missing or wrong.",
            },
            500: {"model": ErrorBody, "description": "A fault of the API (logged; no detail is returned)."},
            503: {"model": ErrorBody, "description": "The trend store (Redis) is unavailable."},
        },
    )

    def openapi() -> dict[str, Any]:
        # Validation errors are answered 400 with ErrorBody (below), never FastAPI's 422 shape.
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for path in document.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                document.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # -- errors: one JSON shape, no stack traces -------------------------------------------------------
    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(ErrorBody(error=exc.message, parameter=exc.parameter).model_dump(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body")]
        parameter = ".".join(where) or None
        if first.get("type") == "string_pattern_mismatch" and parameter:
            choices = re.fullmatch(r"\^\(([\w|]+)\)\$", str(first.get("ctx", {}).get("pattern", "")))
            if choices:
                hint = f"{parameter}: must be one of {', '.join(choices.group(1).split('|'))}"
                return JSONResponse(ErrorBody(error=hint, parameter=parameter).model_dump(), 400)
            if parameter in PATTERN_HINTS:
                return JSONResponse(
                    ErrorBody(error=PATTERN_HINTS[parameter], parameter=parameter).model_dump(), 400
                )
        message = (
            f"{parameter}: {str(first.get('msg', 'invalid')).lower()}" if parameter else str(first.get("msg"))
        )
        return JSONResponse(ErrorBody(error=message, parameter=parameter).model_dump(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(ErrorBody(error=message).model_dump(), exc.status_code, headers=exc.headers)

    @app.exception_handler(redis.RedisError)
    async def store_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("trend store unavailable", extra={"stage": STAGE, "error": str(exc)})
        return JSONResponse(
            ErrorBody(error="the trend store is unavailable; retry shortly").model_dump(), 503
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", extra={"stage": STAGE, "path": request.url.path})
        return JSONResponse(ErrorBody(error="internal error").model_dump(), 500)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "other")
        REQUESTS.labels(name, str(response.status_code)).inc()
        LATENCY.labels(name).observe(time.perf_counter() - started)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    # -- auth: optional bearer token -------------------------------------------------------------------
    def authorised(request: Request, access_token: str | None = None) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        supplied = given.strip() if scheme.lower() == "bearer" else (access_token or "")
        if not hmac.compare_digest(supplied.encode(), token):
            raise BadRequest("missing or wrong bearer token (Authorization: Bearer <API__TOKEN>)", status=401)

    Auth = Depends(authorised)

    # -- parameters --------------------------------------------------------------------------------------
    def window_of(text: str, parameter: str = "window", end_s: int | None = None) -> Span:
        try:
            size = parse_window(text)
        except ValueError as exc:
            raise BadRequest(str(exc), parameter) from None
        if size > cfg.max_window_s:
            raise BadRequest(f"window longer than the {cfg.max_window_s} s this API serves", parameter)
        try:
            resolution_for(size)
        except ValueError as exc:
            raise BadRequest(str(exc), parameter) from None
        return reader.window(size, end_s)

    def steps_of(window: Span, text: str | None) -> int:
        if text is None:
            step = max(window.size // 30, window.res)
            step = next((r for r in (10, 60, 300, 900, 3600, 21600, 86400) if r >= step), 86400)
        else:
            try:
                step = parse_window(text)
            except ValueError as exc:
                raise BadRequest(str(exc), "step") from None
        if step % RESOLUTIONS[0] or window.size % step:
            raise BadRequest(f"step must divide the window ({window.size} s) in whole 10 s buckets", "step")
        if window.size // step > cfg.max_points:
            raise BadRequest(f"more than {cfg.max_points} steps: choose a longer step", "step")
        return step

    WindowQ = Annotated[
        str,
        Query(
            description="1m, 5m, 15m, 1h, 24h, 7d, a number with s/m/h/d, or seconds",
            pattern=r"^[0-9]{1,7}[smhdSMHD]?$",
        ),
    ]
    StepQ = Annotated[
        str | None, Query(description="like window; must divide it", pattern=r"^[0-9]{1,7}[smhdSMHD]?$")
    ]
    KQ = Annotated[int, Query(ge=1, le=cfg.max_k, description="How many terms")]
    Kind = Annotated[str, Query(pattern="^(hashtag|entity|brand|keyword)$")]

    # -- routes ------------------------------------------------------------------------------------------
    @app.get("/v1/trends", response_model=TrendsResponse, dependencies=[Auth], tags=["trends"])
    async def trends(window: WindowQ = "5m", kind: Kind | None = None, k: KQ = 20) -> TrendsResponse:
        """Trending terms: count against each term's own baseline (velocity z-score), best first."""
        span = window_of(window)
        t = settings.trends
        kinds = [kind] if kind else list(KINDS)

        def read() -> list[Any]:
            terms = reader.trending_under(kinds, span, t, k=k)
            return sorted(terms, key=lambda term: -term.score)[:k]

        terms = await asyncio.to_thread(read)
        mark = await asyncio.to_thread(reader.watermark_ms)
        return TrendsResponse(
            window=_window(span), watermark=_dt(mark / 1000) if mark else None, terms=tuple(terms)
        )

    @app.get(
        "/v1/terms/{kind}/{term}/timeline",
        response_model=TimelineResponse,
        dependencies=[Auth],
        tags=["terms"],
    )
    async def timeline(
        kind: str,
        term: str,
        window: WindowQ = "1h",
        step: StepQ = None,
    ) -> TimelineResponse:
        """Mentions and sentiment of one term per step of the window."""
        if kind not in KINDS:
            raise BadRequest(f"kind must be one of {', '.join(KINDS)}", "kind")
        if not term or len(term) > 512:
            raise BadRequest("term must be 1 to 512 characters", "term")
        span = window_of(window)
        step_s = steps_of(span, step)
        points = await asyncio.to_thread(reader.timeline, kind, term, span, step_s)
        return TimelineResponse(
            kind=kind,
            term=term,
            window=_window(span),
            step_s=step_s,
            points=tuple(
                TimelinePoint(start=_dt(s), count=n, sentiment=_counts(mix)) for s, n, mix in points
            ),
        )

    def brand_cards(span: Span, limit: int = 50) -> BrandsResponse:
        top = reader.top("brand", span, limit)
        names = [b for b, _ in top]
        mix = reader.sentiment("brand", names, span)
        step = steps_of(span, None)
        buckets_per_step = step // span.res
        spark = reader.bucket_counts("brand", names, span.res, span.buckets())
        total_mentions = sum(n for _, n in top) or 1
        totals = reader.totals(span)
        cards = []
        for brand, n in top:
            series = spark[brand]
            line = tuple(
                sum(series[i : i + buckets_per_step]) for i in range(0, len(series), buckets_per_step)
            )
            cards.append(
                BrandCard(
                    brand=brand,
                    mentions=n,
                    sentiment=_counts(mix[brand]),
                    negative_share=round(mix[brand].get("negative", 0) / n, 4) if n else 0.0,
                    share_of_voice=round(n / total_mentions, 4),
                    sparkline=line,
                )
            )
        return BrandsResponse(window=_window(span), posts=totals.get("n", 0), brands=tuple(cards))

    @app.get("/v1/brands", response_model=BrandsResponse, dependencies=[Auth], tags=["brands"])
    async def brands(window: WindowQ = "1h") -> BrandsResponse:
        """Every watched brand seen in the window: volume, sentiment, share of voice, a sparkline."""
        span = window_of(window)
        return await asyncio.to_thread(brand_cards, span)

    @app.get("/v1/brands/{brand}", response_model=BrandDetail, dependencies=[Auth], tags=["brands"])
    async def brand(brand: str, window: WindowQ = "1h") -> BrandDetail:
        """One brand: volume, sentiment, share of voice, trend, platforms, languages, co-terms, reach,
        recent posts."""
        if not brand or len(brand) > 512:
            raise BadRequest("brand must be 1 to 512 characters", "brand")
        span = window_of(window)
        step = steps_of(span, None)

        def read() -> BrandDetail:
            summary = reader.summary("brand", brand, span, co_terms=10, samples=10)
            all_brands = sum(n for _, n in reader.top("brand", span, 200)) or 1
            points = reader.timeline("brand", brand, span, step)
            return BrandDetail(
                brand=brand,
                window=_window(span),
                mentions=summary.count,
                sentiment=_counts(summary.sentiment),
                share_of_voice=round(summary.count / all_brands, 4) if summary.count else 0.0,
                timeline=tuple(
                    TimelinePoint(start=_dt(s), count=n, sentiment=_counts(m)) for s, n, m in points
                ),
                platforms=tuple(NameCount(name=n, count=c) for n, c in list(summary.platforms.items())[:10]),
                languages=tuple(NameCount(name=n, count=c) for n, c in list(summary.languages.items())[:10]),
                co_terms=tuple(TermCount(term=t, kind=k, count=c) for k, t, c in summary.co_terms),
                authors=summary.authors,
                samples=tuple(SamplePost.model_validate(s) for s in summary.samples),
            )

        return await asyncio.to_thread(read)

    @app.get("/v1/share-of-voice", response_model=ShareOfVoiceResponse, dependencies=[Auth], tags=["brands"])
    async def share_of_voice(
        window: WindowQ = "1h",
        brands: Annotated[
            str | None, Query(max_length=4000, description="Comma-separated; default: the top 10")
        ] = None,
        step: StepQ = None,
    ) -> ShareOfVoiceResponse:
        """The watched brands side by side: mentions and share of voice per step."""
        span = window_of(window)
        step_s = steps_of(span, step)

        def read() -> ShareOfVoiceResponse:
            names = (
                [b.strip() for b in brands.split(",") if b.strip()][:50]
                if brands
                else [b for b, _ in reader.top("brand", span, 10)]
            )
            per_bucket = reader.bucket_counts("brand", names, span.res, span.buckets())
            per_step = step_s // span.res
            points = []
            for i, start in enumerate(range(span.start, span.end, step_s)):
                counts = {b: sum(per_bucket[b][i * per_step : (i + 1) * per_step]) for b in names}
                total = sum(counts.values())
                shares = {b: round(n / total, 4) if total else 0.0 for b, n in counts.items()}
                points.append(ShareOfVoicePoint(start=_dt(start), counts=counts, shares=shares))
            return ShareOfVoiceResponse(
                window=_window(span), step_s=step_s, brands=tuple(names), points=tuple(points)
            )

        return await asyncio.to_thread(read)

    @app.get("/v1/alerts", response_model=AlertsResponse, dependencies=[Auth], tags=["alerts"])
    async def alerts(
        since: Annotated[
            str | None, Query(max_length=40, description="RFC 3339 time or a duration: 1h, 24h")
        ] = None,
        subject: Annotated[str | None, Query(max_length=512)] = None,
        kind: Annotated[str | None, Query(pattern="^(negative_sentiment|positive_sentiment|volume)$")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> AlertsResponse:
        """Alerts with their evidence, newest window first."""
        since_s = parse_since(since, time.time()) if since else None

        def read() -> list[Alert]:
            found = [decode(v, Alert) for v in reader.alerts(reader.alert_ids(since_s, limit=1000))]
            found = [
                a
                for a in found
                if (subject is None or a.subject == subject) and (kind is None or a.kind == kind)
            ]
            return found[:limit]

        return AlertsResponse(alerts=tuple(await asyncio.to_thread(read)))

    @app.get(
        "/v1/alerts/{alert_id}",
        response_model=Alert,
        dependencies=[Auth],
        tags=["alerts"],
        responses={404: {"model": ErrorBody, "description": "No alert with this id is kept."}},
    )
    async def alert(alert_id: str) -> Alert:
        """One alert with its evidence."""
        found = await asyncio.to_thread(reader.alerts, [alert_id])
        if not found:
            raise BadRequest(f"no alert {alert_id!r}", "alert_id", status=404)
        return decode(found[0], Alert)

    @app.get(
        "/v1/stream",
        tags=["live"],
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}, "description": "an event stream"}},
    )
    async def stream(request: Request, _: None = Auth) -> EventSourceResponse:
        """Server-sent events: ``trend`` (TrendSnapshot) and ``alert`` (Alert) as they are published.
        Reconnect with ``Last-Event-ID`` to receive what was missed (the last ~10,000 events are kept).
        Browsers (EventSource cannot set headers) may pass the token as ``?access_token=``."""
        last = request.headers.get("last-event-id")
        if last is not None and not _STREAM_ID.match(last):
            raise BadRequest("Last-Event-ID: not an event id this API gave", "Last-Event-ID")

        async def events() -> AsyncIterator[dict[str, str]]:
            cursor = last or await live.last_event_id()
            while not await request.is_disconnected():
                for entry_id, kind, data in await live.events_after(cursor, block_ms=5_000):
                    cursor = entry_id
                    yield {"id": entry_id, "event": kind, "data": data}

        return EventSourceResponse(events(), ping=15)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> JSONResponse:
        ok = await asyncio.to_thread(reader.ping)
        body = Health(status="ok" if ok else "unhealthy", redis=ok)
        return JSONResponse(body.model_dump(), 200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
