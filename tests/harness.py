"""Plumbing shared by the integration and e2e tests: free ports, child-process settings, and local
fake servers that run on a thread of their own."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from pulse.settings import Settings

# Settings sections a child `pulse` process must take from the test, never from the caller's shell.
_SECTIONS = (
    "KAFKA__",
    "REDIS__",
    "TOPICS__",
    "LOCAL__",
    "INGEST__",
    "INFERENCE__",
    "STREAMS__",
    "TRENDS__",
    "ALERTS__",
    "API__",
    "NOTIFY__",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stage_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `pulse` child process that must see exactly these settings (plus `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SECTIONS)}
    env.update(
        {
            "KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "REDIS__URL": settings.redis.url,
            "REDIS__KEY_PREFIX": settings.redis.key_prefix,
            "LOCAL__DATA_DIR": str(settings.local.data_dir),
            **{f"TOPICS__{role.upper()}": name for role, name in settings.topics.by_role().items()},
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


class ThreadedServer:
    """A local asyncio server on its own thread and event loop, for a test to point a client at.

    Subclasses implement `listen()`: start serving on 127.0.0.1, return the port and a coroutine
    function that closes the server. `start()` returns once the port is known; `stop()` closes it.
    """

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def listen(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        raise NotImplementedError

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.port, close = await self.listen()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await close()

        asyncio.run(main())

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10), f"{type(self).__name__} did not start listening"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


Listening = tuple[int, Callable[[], Awaitable[None]]]  # what ThreadedServer.listen returns


async def serve_app(app: Any) -> Listening:
    """Serve an aiohttp ``web.Application`` on a free port of 127.0.0.1: (port, close)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner.addresses[0][1], runner.cleanup


async def serve_websocket(handler: Callable[[Any], Awaitable[None]]) -> Listening:
    """Serve a ``websockets`` connection handler on a free port of 127.0.0.1: (port, close)."""
    import websockets

    server = await websockets.serve(handler, "127.0.0.1", 0)

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return next(iter(server.sockets)).getsockname()[1], close


class WebhookReceiver(ThreadedServer):
    """A local webhook: records every POST (path, headers, body); answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses or [])
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def listen(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        from aiohttp import web

        async def hook(request: web.Request) -> web.Response:
            self.requests.append((request.path, dict(request.headers), await request.read()))
            return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

        app = web.Application()
        app.router.add_post("/{path:.*}", hook)
        return await serve_app(app)
