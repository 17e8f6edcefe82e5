"""`pulse api`: argparse wiring; FastAPI, uvicorn and the Redis clients load inside the handler."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pulse.settings import Settings

log = logging.getLogger("pulse.api")


def register(subparsers: argparse._SubParsersAction) -> None:
    api = subparsers.add_parser(
        "api",
        help="serve the query API, live events and the dashboard over the trend store",
        description="Reads the trend store in Redis (REDIS__URL). Any number of api processes can run; "
        "SIGTERM finishes the requests in flight and exits 0.",
    )
    api.add_argument("--host", default=None, help="default API__HOST")
    api.add_argument("--port", type=int, default=None, help="default API__PORT (0: any)")
    api.set_defaults(handler=_api)


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import redis.asyncio
    import uvicorn

    from pulse import redis_client
    from pulse.shutdown import on_stop_signals
    from streams.keys import Keys
    from streams.read import TrendReader
    from workers.api.app import LiveEvents, create_app

    cfg = settings.api.model_copy(
        update={k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    )
    settings = settings.model_copy(update={"api": cfg})
    if not redis_client.ready(settings):
        print(f"pulse api: error: Redis at {settings.redis.shown_url} is not reachable", file=sys.stderr)
        return 2
    keys = Keys(settings.redis.key_prefix, shards=settings.streams.shards)
    reader = TrendReader(
        redis_client.client(settings, socket_timeout=10, socket_connect_timeout=5),
        keys,
        lateness_ms=settings.streams.lateness_s * 1000,
        idle_after_ms=settings.streams.idle_after_s * 1000,
    )
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    client = redis.asyncio.Redis.from_url(settings.redis.url, password=password)
    live = LiveEvents(client, keys.events(), keys.alert)
    app = create_app(settings, reader, live)
    server = uvicorn.Server(
        uvicorn.Config(app, host=cfg.host, port=cfg.port, log_config=None, access_log=False, lifespan="off")
    )

    log.info("dashboard and API", extra={"stage": "api", "url": f"http://{cfg.host}:{cfg.port}/"})
    # uvicorn handles SIGTERM/SIGINT while serving, then raises the signal again for the handler that was
    # there before it: this one, so a graceful stop ends in exit code 0 rather than death by the signal.
    on_stop_signals(lambda signum, frame: None)
    server.run()
    log.info("api stopped", extra={"stage": "api"})
    return 0
