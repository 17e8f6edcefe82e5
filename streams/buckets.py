"""Event-time bucket maths: resolutions, which buckets make up a window, retention. Pure functions.

Every term is counted in three bucket widths at once: fine (10 s) for windows up to 15 minutes,
medium (1 min) for the hour, coarse (1 h) for a day and the week baselines. A window is read as the
sum of the buckets of one width that it covers, so a read touches at most ``MAX_BUCKETS_PER_WINDOW``
buckets whatever the window (90 for 15 min at 10 s; 60 for 1 h at 1 min; 24-168 for 24 h-7 d at 1 h).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Bucket widths in seconds and how long a bucket is kept after its last write (Redis TTL): long
# enough for the widest window read from it plus the baseline windows before it.
RESOLUTIONS: tuple[int, ...] = (10, 60, 3600)
RETENTION_S: dict[int, int] = {10: 2 * 3600 + 600, 60: 26 * 3600, 3600: 8 * 86400}
MAX_BUCKETS_PER_WINDOW = 170

# The windows the API and the detectors offer, by name.
WINDOWS: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


def parse_window(text: str) -> int:
    """Window length in seconds from ``'5m'``, ``'1h'``, ``'24h'``, ``'90s'`` or a plain number of seconds."""
    text = text.strip().lower()
    if text in WINDOWS:
        return WINDOWS[text]
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = int(float(number) * units[unit])
    except ValueError:
        raise ValueError(f"window {text!r}: expected e.g. 1m, 5m, 15m, 1h, 24h or seconds") from None
    if seconds <= 0:
        raise ValueError(f"window {text!r} must be positive")
    return seconds


def resolution_for(window_s: int) -> int:
    """The bucket width a window of ``window_s`` is read from: the finest with at most 90 buckets
    that divides the window (so the window is exactly a run of whole buckets)."""
    for res in RESOLUTIONS:
        if window_s % res == 0 and window_s // res <= 90:
            return res
    coarse = RESOLUTIONS[-1]
    if window_s % coarse == 0 and window_s // coarse <= MAX_BUCKETS_PER_WINDOW:
        return coarse
    raise ValueError(
        f"window of {window_s} s is not a whole number of {', '.join(map(str, RESOLUTIONS))}-second "
        f"buckets within {MAX_BUCKETS_PER_WINDOW} buckets"
    )


def bucket_start(t_ms: int, res: int) -> int:
    """Start (epoch seconds) of the ``res``-second bucket that holds the instant ``t_ms`` (epoch ms)."""
    return (t_ms // 1000) // res * res


@dataclass(frozen=True)
class Window:
    """``[end - size, end)`` in epoch seconds, read from ``res``-second buckets."""

    end: int
    size: int
    res: int

    @property
    def start(self) -> int:
        return self.end - self.size

    def buckets(self) -> list[int]:
        """Starts of the buckets that make up the window, oldest first."""
        return list(range(self.start, self.end, self.res))


def window_ending(end_s: int, size_s: int) -> Window:
    """The window of ``size_s`` seconds that ends at ``end_s`` (rounded down to whole buckets)."""
    res = resolution_for(size_s)
    return Window(end=end_s // res * res, size=size_s, res=res)


def step_ends(after_s: int, until_s: int, step_s: int) -> list[int]:
    """Window ends on the ``step_s`` grid in ``(after_s, until_s]``: the steps a detector has to take."""
    first = after_s // step_s * step_s + step_s
    return list(range(first, until_s // step_s * step_s + 1, step_s))


def previous_windows(window: Window, count: int) -> Sequence[Window]:
    """The ``count`` windows of the same size just before ``window``, most recent first."""
    return [
        Window(end=window.end - k * window.size, size=window.size, res=window.res)
        for k in range(1, count + 1)
    ]
