"""Pseudonymised authors and PII redaction at ingest (``workers.ingest.privacy``): one test per kind."""

from __future__ import annotations

import pytest

from pulse.kafka import DEAD_LETTER_ORIGINAL_BYTES, dead_letter
from pulse.settings import load
from workers.ingest.privacy import Privacy, Pseudonymizer, Redactor, Sealer, SealError, luhn_ok


def redact(text: str, *kinds: str) -> str:
    return Redactor(kinds or Redactor.ORDER).redact(text)[0]


def test_email_addresses_are_redacted_and_handles_and_domains_are_not() -> None:
    assert redact("mail jane.doe+x@example.co.uk now", "email") == "mail [email] now"
    assert redact("@jane at example.com and #mail", "email") == "@jane at example.com and #mail"


@pytest.mark.parametrize(
    "text",
    ["call +1 415-555-0132 today", "call (415) 555-0132 today", "call +44 20 7946 0958 today"],
)
def test_phone_numbers_are_redacted_with_or_without_a_country_code(text: str) -> None:
    assert redact(text, "phone") == "call [phone] today"


def test_dates_order_numbers_and_prices_are_not_phone_numbers() -> None:
    text = "order 12345 shipped 2026-11-30 for $1,299.99 at 10:30"
    assert redact(text, "phone") == text


def test_card_numbers_are_redacted_only_when_they_pass_the_luhn_check() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert redact("card 4111 1111 1111 1111 ok", "card") == "card [card] ok"
    assert redact("card 4111-1111-1111-1111 ok", "card") == "card [card] ok"
    assert redact("ref 4111111111111112 ok", "card") == "ref 4111111111111112 ok"


def test_ip_addresses_are_redacted_and_versions_and_times_are_not() -> None:
    assert redact("from 192.168.10.7 and 2001:db8::8a2e:370:7334 again", "ip") == "from [ip] and [ip] again"
    assert redact("v1.2.3.4 at 10:30:45 and 999.1.1.1", "ip") == "v1.2.3.4 at 10:30:45 and 999.1.1.1"


def test_only_the_kinds_asked_for_are_redacted_and_found_ones_are_counted() -> None:
    text, found = Redactor(["email"]).redact("a@b.io or +1 415-555-0132")
    assert text == "[email] or +1 415-555-0132" and found == {"email": 1}


def doc() -> dict:
    return {
        "id": "bluesky:at://did:plc:abc/app.bsky.feed.post/3k",
        "platform": "bluesky",
        "author": {"id": "did:plc:abc", "handle": "Jane.bsky.social", "display_name": "Jane Doe"},
        "text": "write me at jane@example.com",
        "url": "https://bsky.app/profile/jane.bsky.social/post/3k",
        "urls": ["https://example.com/a", "mailto:jane@example.com"],
    }


def test_pseudonymised_authors_are_stable_keyed_and_leave_nothing_that_names_them() -> None:
    privacy = Privacy.from_settings(
        load(privacy={"pseudonymize_authors": True, "hmac_key": "k1", "redact": "email"}).privacy
    )
    first, again = privacy.apply(doc()), privacy.apply(doc())
    assert first == again  # stable: distinct authors still count, a deletion maps to the same id
    flat = str(first)
    for secret in ("did:plc:abc", "jane", "Jane", "3k", "bsky.app"):
        assert secret not in flat, secret
    assert first["author"]["id"].startswith("anon-") and "display_name" not in first["author"]
    assert first["id"].startswith("bluesky:anon-") and "url" not in first
    assert first["text"] == "write me at [email]" and first["urls"] == ["https://example.com/a"]
    other = Privacy(Pseudonymizer(b"k2"), None).apply(doc())
    assert other["author"]["id"] != first["author"]["id"]  # another key, other pseudonyms
    assert privacy.redacted == {"email": 2}


def test_privacy_settings_refuse_an_unknown_kind_and_pseudonyms_without_a_key() -> None:
    with pytest.raises(ValueError, match="cannot redact address"):
        load(privacy={"redact": "email,address"})
    with pytest.raises(ValueError, match="needs PRIVACY__HMAC_KEY"):
        load(privacy={"pseudonymize_authors": True})
    assert not Privacy.from_settings(load().privacy).active


def test_with_pseudonymisation_a_dead_letters_original_is_sealed_and_opens_with_the_key_only() -> None:
    original = b'{"id": "bluesky:at://did:plc:writer/p/1", "author": {"handle": "writer-handle"}, "text": 3}'
    privacy = Privacy(Pseudonymizer(b"k" * 32), None, Sealer(b"k" * 32))
    sealed = privacy.dead_letter(dead_letter("ingest", "validation", "field 'text': bad", original))
    assert sealed.sealed and b"writer" not in sealed.original and sealed.original_sha256 is None
    assert Sealer(b"k" * 32).open(sealed.original) == original
    with pytest.raises(SealError):
        Sealer(b"another key").open(sealed.original)
    assert privacy.dead_letter(sealed) == sealed  # sealed once
    # Too big for a record: cut first, then sealed, so what is kept still opens.
    huge = privacy.dead_letter(dead_letter("ingest", "decode", "too long", b"writer-handle " * 40_000))
    assert huge.truncated and huge.original_bytes == 14 * 40_000
    assert len(huge.original) <= DEAD_LETTER_ORIGINAL_BYTES
    assert Sealer(b"k" * 32).open(huge.original).startswith(b"writer-handle ")


def test_with_redaction_alone_a_dead_letters_original_is_redacted_and_other_bytes_stay() -> None:
    privacy = Privacy(None, Redactor(["email"]))
    original = b'{"text": "mail me at writer@example.org \xff\xfe", "x": 1'
    letter = privacy.dead_letter(dead_letter("ingest", "decode", "not valid JSON", original))
    assert not letter.sealed
    assert letter.original == original.replace(b"writer@example.org", b"[email]")
    off = Privacy(None, None)
    untouched = dead_letter("ingest", "decode", "not valid JSON", original)
    assert off.dead_letter(untouched) is untouched
