"""Webhook payloads, signatures and what an HTTP answer means (pure; no sockets)."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from tests.factories import alert_factory
from workers.notify.delivery import Answer, answer, parse_webhook, signature, slack_message, verify

SECRET = b"whsec-unit"


def test_the_signature_is_an_hmac_of_timestamp_dot_body_that_a_receiver_can_check() -> None:
    body = b'{"id":"a"}'
    header = signature(SECRET, 1_700_000_000, body)
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header, body, now=1_700_000_100)


@pytest.mark.parametrize(
    ("secret", "body", "now", "why"),
    [
        (b"other", b'{"id":"a"}', 1_700_000_000, "another key"),
        (SECRET, b'{"id":"b"}', 1_700_000_000, "another body"),
        (SECRET, b'{"id":"a"}', 1_700_000_301, "older than the tolerance: a replay"),
    ],
)
def test_a_receiver_refuses_a_forged_altered_or_replayed_delivery(
    secret: bytes, body: bytes, now: int, why: str
) -> None:
    assert not verify(secret, signature(SECRET, 1_700_000_000, b'{"id":"a"}'), body, now=now), why


@pytest.mark.parametrize("header", ["", "v1=abc", "t=soon,v1=abc", "t=1700000000"])
def test_a_malformed_signature_header_is_refused_not_raised(header: str) -> None:
    assert not verify(SECRET, header, b"{}", now=1_700_000_000)


def test_webhook_specs_name_their_format_and_logs_never_show_the_secret_path() -> None:
    slack = parse_webhook(" slack+https://hooks.slack.com/services/T0/B0/secret ")
    assert (slack.format, slack.url) == ("slack", "https://hooks.slack.com/services/T0/B0/secret")
    assert "secret" not in slack.redacted and slack.redacted.startswith("https://hooks.slack.com/")
    assert parse_webhook("https://example.org/hook").format == "json"
    with pytest.raises(ValueError, match="expected an http"):
        parse_webhook("ftp://example.org/hook")


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (200, Answer.DELIVERED),
        (204, Answer.DELIVERED),
        (None, Answer.RETRY),
        (500, Answer.RETRY),
        (503, Answer.RETRY),
        (408, Answer.RETRY),
        (429, Answer.RETRY),
        (400, Answer.REJECTED),
        (404, Answer.REJECTED),
        (410, Answer.REJECTED),
        (301, Answer.REJECTED),
    ],
)
def test_what_an_answer_means(status: int | None, meaning: Answer) -> None:
    assert answer(status) is meaning


def test_a_slack_message_says_what_and_why_in_plain_text_only() -> None:
    alert = alert_factory()
    message = slack_message(alert)
    assert message["text"].startswith("Negative spike: Acme — negative share 50% against 12% usual")
    wire = orjson.dumps(message).decode()
    assert "Acme support is useless" in wire and "outage (31)" in wire and alert.id in wire
    # Post text is untrusted: only plain_text blocks, never mrkdwn (no links or mentions from a post).
    kinds = {b["text"]["type"] for b in message["blocks"] if "text" in b}
    kinds |= {f["type"] for b in message["blocks"] for f in b.get("fields", ())}
    assert kinds == {"plain_text"}


def test_a_volume_alert_reads_in_mentions() -> None:
    alert = alert_factory(kind="volume", metric="mentions", observed=240.0, baseline=80.0)
    assert "240 mentions against 80.0 usual" in slack_message(alert)["text"]
