"""What ingest removes from a post before it leaves: authors pseudonymised, personal data redacted.

Pure: a built wire document in, the document to publish out. Off by default (``PRIVACY__*``); when on,
nothing downstream (topics, Redis, the API, alerts) ever holds what was removed. What each setting
does, and what stays, is in docs/privacy.md.

- **Pseudonymised authors**: the author's id and handle become a keyed HMAC-SHA256 (stable, so distinct
  authors still count; not reversible without the key). The post id and permalink usually name the
  author (a Bluesky id holds the DID, a Mastodon URL the account), so the id becomes the platform plus
  the HMAC of the original id (a later deletion of that id maps to the same value) and the permalink
  goes; the display name goes.
- **Redaction**: e-mail addresses, phone numbers (``phonenumbers``, Google's libphonenumber metadata:
  a maintained library where a regular expression would match dates and order numbers), payment card
  numbers (13-19 digits passing the Luhn check) and IP addresses are replaced in the text by a
  placeholder such as ``[email]``. NER runs on the redacted text, so entity offsets refer to it; the
  placeholders are lower-case words in brackets, which the entity model does not read as names. Links
  in ``urls`` that held any of these are dropped.
- **Dead letters**: a record ingest cannot read cannot have its author pseudonymised, so with
  pseudonymisation on the original bytes of ingest's dead letters are sealed (AES-256-GCM under a key
  derived from ``PRIVACY__HMAC_KEY``; ``pulse dead-letters --unseal`` opens them); with redaction
  alone the redactor runs over the original's text (bytes that are not UTF-8 kept as they are).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pulse.kafka import DEAD_LETTER_ORIGINAL_BYTES, fitted
from schemas import DeadLetter
from schemas.models import MAX_TEXT_LENGTH, PLATFORM_PATTERN

_PLATFORM = re.compile(PLATFORM_PATTERN)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IP = re.compile(
    r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:])"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number passes (1 in 10 random digit strings do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


Span = tuple[int, int]


def _emails(text: str) -> Iterable[Span]:
    return (m.span() for m in _EMAIL.finditer(text))


def _cards(text: str) -> Iterable[Span]:
    for m in _CARD.finditer(text):
        if luhn_ok(re.sub(r"[ -]", "", m.group())):
            yield m.span()


def _ips(text: str) -> Iterable[Span]:
    for m in _IP.finditer(text):
        try:
            ipaddress.ip_address(m.group())
        except ValueError:
            continue
        yield m.span()


class _Phones:
    def __init__(self, region: str) -> None:
        import phonenumbers  # only when phone redaction is on

        self._matcher = phonenumbers.PhoneNumberMatcher
        self._leniency = phonenumbers.Leniency.VALID
        self.region = region.upper()

    def __call__(self, text: str) -> Iterable[Span]:
        return ((m.start, m.end) for m in self._matcher(text, self.region, leniency=self._leniency))


class Redactor:
    """Replaces each kind of personal data in a text by ``[kind]``, in a fixed order (e-mail first: an
    address may hold digits; cards before phones: a card number can look like one)."""

    ORDER = ("email", "card", "phone", "ip")

    def __init__(self, kinds: Iterable[str], phone_region: str = "US") -> None:
        wanted = set(kinds)
        finders: dict[str, Callable[[str], Iterable[Span]]] = {
            "email": _emails,
            "card": _cards,
            "ip": _ips,
        }
        if "phone" in wanted:
            finders["phone"] = _Phones(phone_region)
        self.finders = [(kind, finders[kind]) for kind in self.ORDER if kind in wanted]

    def __bool__(self) -> bool:
        return bool(self.finders)

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with every match replaced, and how many of each kind were found."""
        found: dict[str, int] = {}
        for kind, find in self.finders:
            spans = list(find(text))
            if not spans:
                continue
            found[kind] = len(spans)
            placeholder = f"[{kind}]"
            parts, last = [], 0
            for start, end in spans:
                parts += [text[last:start], placeholder]
                last = end
            parts.append(text[last:])
            text = "".join(parts)
        return text[:MAX_TEXT_LENGTH], found


class Pseudonymizer:
    """Keyed HMAC-SHA256 of author ids, handles and post ids: stable per key, not reversible without it."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a pseudonymisation key must not be empty")
        self._key = key

    def digest(self, kind: str, value: str) -> str:
        mac = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:32]  # 128 bits: no collisions among any platform's authors

    def author_id(self, platform: str, author_id: str) -> str:
        return f"anon-{self.digest('author:' + platform, author_id)}"

    def handle(self, platform: str, handle: str) -> str:
        return f"anon-{self.digest('handle:' + platform, handle.lower())}"

    def post_id(self, post_id: str) -> str:
        """``<platform>:anon-<HMAC>`` when the id starts with its platform (``bluesky:at://…``), else
        ``anon-<HMAC>``: computed from the id alone, so a deletion that knows only the id maps to it."""
        head, sep, _ = post_id.partition(":")
        prefix = f"{head}:" if sep and _PLATFORM.match(head) else ""
        return f"{prefix}anon-{self.digest('post', post_id)}"


_SEAL_CONTEXT = b"pulse dead-letter seal v1"
_NONCE = 12
SEAL_OVERHEAD = _NONCE + 16  # nonce and GCM tag


class SealError(ValueError):
    """A sealed original could not be opened: another key, or the bytes were changed."""


class Sealer:
    """Seals bytes with AES-256-GCM (``cryptography``, the maintained binding of OpenSSL) under a key
    derived from the HMAC key: only a holder of ``PRIVACY__HMAC_KEY`` can open a sealed dead letter."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a sealing key must not be empty")
        self._aead = AESGCM(hmac.new(key, _SEAL_CONTEXT, hashlib.sha256).digest())

    def seal(self, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, _SEAL_CONTEXT)

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _SEAL_CONTEXT)
        except InvalidTag:
            raise SealError(
                "cannot open a sealed original: another PRIVACY__HMAC_KEY, or changed bytes"
            ) from None


class Privacy:
    """Applies the ``PRIVACY__*`` settings to built wire documents (``apply``); ``active`` is False when
    every setting is off, and then ingest does not touch the documents at all."""

    def __init__(
        self, pseudonymizer: Pseudonymizer | None, redactor: Redactor | None, sealer: Sealer | None = None
    ) -> None:
        self.pseudonymizer = pseudonymizer
        self.redactor = redactor if redactor else None
        self.sealer = sealer
        self.redacted: dict[str, int] = {}  # matches replaced so far, per kind (for the metrics)

    @classmethod
    def from_settings(cls, privacy: Any) -> Privacy:
        key = privacy.hmac_key.get_secret_value().encode() if privacy.hmac_key else b""
        return cls(
            Pseudonymizer(key) if privacy.pseudonymize_authors else None,
            Redactor(privacy.redact, privacy.phone_region) if privacy.redact else None,
            Sealer(key) if privacy.pseudonymize_authors else None,
        )

    @property
    def active(self) -> bool:
        return self.pseudonymizer is not None or self.redactor is not None

    def deleted_id(self, post_id: str) -> str:
        """The id a deletion of ``post_id`` is published under: the id the post itself was given."""
        return self.pseudonymizer.post_id(post_id) if self.pseudonymizer is not None else post_id

    def dead_letter(self, letter: DeadLetter) -> DeadLetter:
        """``letter`` as ingest may publish it: its original sealed (pseudonymisation on) or redacted
        (redaction alone); unchanged when every setting is off. A sealed original is cut to fit first,
        so what is sealed can always be opened; its sha256 is left out (it would confirm a guess)."""
        if self.sealer is not None and not letter.sealed:
            original = letter.original
            update: dict[str, Any] = {"sealed": True, "original_sha256": None}
            room = DEAD_LETTER_ORIGINAL_BYTES - SEAL_OVERHEAD
            if len(original) > room:
                update |= {"truncated": True, "original_bytes": letter.original_bytes or len(original)}
                original = original[:room]
            update["original"] = self.sealer.seal(original)
            return fitted(letter.model_copy(update=update))
        if self.redactor is not None:
            text = letter.original.decode("utf-8", "surrogateescape")
            redacted, found = self.redactor.redact(text)
            if found:
                return letter.model_copy(update={"original": redacted.encode("utf-8", "surrogateescape")})
        return letter

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` (a built RawPost document) with the settings applied, changed in place."""
        if self.pseudonymizer is not None:
            p, platform = self.pseudonymizer, doc["platform"]
            author = doc["author"]
            author["id"] = p.author_id(platform, author["id"])
            if author.get("handle"):
                author["handle"] = p.handle(platform, author["handle"])
            author.pop("display_name", None)
            doc["id"] = p.post_id(doc["id"])
            doc.pop("url", None)
        if self.redactor is not None:
            text, found = self.redactor.redact(doc["text"])
            if found:
                doc["text"] = text
                for kind, n in found.items():
                    self.redacted[kind] = self.redacted.get(kind, 0) + n
            if doc.get("urls"):
                doc["urls"] = [u for u in doc["urls"] if not self.redactor.redact(u)[1]]
        return doc
