"""What a webhook receives and what an answer means: payloads, signatures, retry decisions. Pure.

JSON webhooks get the alert as published (its wire JSON) with::

    X-Pulse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with NOTIFY__SECRET>
    Idempotency-Key: <alert id>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in constant time
and rejects old timestamps (replays). Slack incoming webhooks get a ``text`` + ``blocks`` message.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from schemas import Alert

SIGNATURE_HEADER = "X-Pulse-Signature"
_KIND = {
    "negative_sentiment": "Negative spike",
    "positive_sentiment": "Praise wave",
    "volume": "Volume spike",
}


@dataclass(frozen=True)
class Webhook:
    url: str
    format: Literal["json", "slack"]

    @property
    def redacted(self) -> str:
        """The URL without its path (Slack webhook paths are secrets): for logs."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}/…"


def parse_webhook(spec: str) -> Webhook:
    """``https://…`` (signed JSON) or ``slack+https://…`` (a Slack incoming webhook)."""
    spec = spec.strip()
    if spec.startswith("slack+"):
        url, fmt = spec[len("slack+") :], "slack"
    else:
        url, fmt = spec, "json"
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"webhook {spec!r}: expected an http(s) URL, optionally prefixed 'slack+'")
    return Webhook(url, fmt)  # type: ignore[arg-type]


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Pulse-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, now: int, tolerance_s: int = 300) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return abs(now - timestamp) <= tolerance_s and hmac.compare_digest(expected, parts.get("v1", ""))


def slack_message(alert: Alert) -> dict[str, Any]:
    """A Slack message for an alert: a one-line summary and the evidence as blocks (plain text)."""
    ev = alert.evidence
    if alert.metric == "mentions":
        what = f"{alert.observed:.0f} mentions against {alert.baseline:.1f} usual"
    else:
        what = f"{alert.metric.replace('_', ' ')} {alert.observed:.0%} against {alert.baseline:.0%} usual"
    title = f"{_KIND.get(alert.kind, alert.kind)}: {alert.subject} — {what} (z {alert.score:.1f})"
    window = f"{alert.window.start:%H:%M}–{alert.window.end:%H:%M} UTC"
    samples = "\n".join(f"• {s.text[:200]}" for s in ev.samples[:3]) or "(none)"
    co = ", ".join(f"{c.term} ({c.count})" for c in ev.co_terms[:5]) or "(none)"
    return {
        "text": title,
        "blocks": [
            {"type": "section", "text": {"type": "plain_text", "text": title}},
            {
                "type": "section",
                "fields": [
                    {"type": "plain_text", "text": f"Window: {window}"},
                    {
                        "type": "plain_text",
                        "text": f"Mentions: {ev.mentions} ({ev.baseline_mentions:.1f} usual)",
                    },
                    {"type": "plain_text", "text": f"Authors: {ev.authors}"},
                    {"type": "plain_text", "text": f"With: {co}"},
                ],
            },
            {"type": "section", "text": {"type": "plain_text", "text": f"Posts:\n{samples}"}},
            {"type": "context", "elements": [{"type": "plain_text", "text": f"alert {alert.id}"}]},
        ],
    }


class Answer(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # 5xx, 408, 429, a timeout or a connection failure: try again later
    REJECTED = "rejected"  # any other 4xx: the receiver will not take it; dead-letter it now


def answer(status: int | None) -> Answer:
    """What a webhook's HTTP status means (None: no answer at all)."""
    if status is None or status >= 500 or status in (408, 429):
        return Answer.RETRY
    if 200 <= status < 300:
        return Answer.DELIVERED
    return Answer.REJECTED
