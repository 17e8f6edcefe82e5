"""Service addresses: host and port out of a bootstrap list or a URL, and a plain TCP reachability probe."""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def host_port(address: str, default_port: int) -> tuple[str, int]:
    """(host, port) of the first entry of a comma-separated bootstrap list, or of a URL."""
    first = address.split(",")[0].strip()
    parts = urlsplit(first if "//" in first else f"//{first}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections there."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False
