"""Signal handling shared by the long-running stages."""

from __future__ import annotations

import atexit
import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> None:
    """Call `handler` on SIGTERM and SIGINT (it should make the stage drain and exit 0).

    Once the process starts to exit, both signals are ignored. CPython puts the default
    handlers back while it shuts down, so a second signal that lands then (Ctrl-C reaches every
    process of the group, and `pulse run` sends SIGTERM right after) would kill a stage that had
    already drained and flushed, and turn its exit code 0 into -15.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    atexit.unregister(_ignore_stop_signals)  # once, however many times this is called
    atexit.register(_ignore_stop_signals)


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
