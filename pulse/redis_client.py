"""The Redis client every stage uses (production code): one factory from settings, and a readiness probe.

Local embedded services (``pulse.services``) use it too; nothing here knows whether the server is
the machine's Redis, an embedded Valkey or a managed one.
"""

from __future__ import annotations

from typing import Any

import redis

from pulse.settings import Settings

# Errors that say "the server is not there right now", not "the command was wrong".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    OSError,
)
_PROBE_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    redis.ResponseError,
)  # a password it wants, or the wrong one


def client(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A client for ``REDIS__URL`` with ``REDIS__PASSWORD``; ``kwargs`` go to ``redis.Redis``."""
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    return redis.Redis.from_url(settings.redis.url, password=password, **kwargs)


def ready(settings: Settings, timeout: float = 1.0) -> bool:
    """True when Redis answers PING."""
    probe = client(settings, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(probe.ping())
    except _PROBE_ERRORS:
        return False
    finally:
        probe.close()
