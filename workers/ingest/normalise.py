"""Text normalisation and extraction: NFC, whitespace, URLs, mentions, hashtags. Plain functions."""

from __future__ import annotations

import re
import unicodedata

# Trailing punctuation is sentence punctuation far more often than part of a URL.
_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_URL_TRAIL = ".,;:!?)]}'\"…"
# '@' not preceded by a word char, '@' or '/' (so e-mail addresses and URL paths are not mentions).
# Bluesky handles have dots (alice.bsky.social); fediverse ones have a second '@' (bob@mastodon.social).
# The literal comes first and the look-behind after it (same matches as "(?<![\w@/])@..."): a pattern
# that starts with a literal lets the regex engine jump between '@'s instead of trying every position,
# about 3.5x faster on post-sized texts.
_MENTION = re.compile(r"@(?<![\w@/]@)(\w[\w.-]*(?:@\w[\w.-]*\.\w+)?)")
# A hashtag needs at least one letter, so '#1' or '#2024' are not tags; '&#' skips HTML entities.
# (Literal first for speed, as above: the same matches as "(?<![\w#&/])#...".)
_HASHTAG = re.compile(r"#(?<![\w#&/]#)(\w*[^\W\d_]\w*)")


# Control characters that are not whitespace (NUL, ESC and the rest of C0, DEL, C1): removed from text.
_CONTROLS = {c: None for c in (*range(0x20), *range(0x7F, 0xA0)) if not chr(c).isspace()}


def normalise_text(text: str) -> str:
    """Unicode NFC, control characters other than whitespace removed (NUL, ESC: a terminal escape in a
    post must not reach a log or a shell), whitespace collapsed to single spaces (newlines and tabs
    included), stripped."""
    if not text.isprintable():
        text = text.translate(_CONTROLS)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def _unique(items: list[str]) -> tuple[str, ...]:
    if len(items) < 2:
        return tuple(items)  # the usual case: no dict needed
    return tuple(dict.fromkeys(items))


def extract_urls(text: str) -> tuple[str, ...]:
    if "://" not in text:
        return ()
    return _unique([m.rstrip(_URL_TRAIL) for m in _URL.findall(text)])


def extract_mentions(text: str) -> tuple[str, ...]:
    """Mentioned handles without the '@', in order of appearance, case kept (handles are case-insensitive
    on most platforms, but a DID-less handle is all we have)."""
    if "@" not in text:
        return ()
    return _unique([m.rstrip(".-") for m in _MENTION.findall(text)])


def extract_hashtags(text: str) -> tuple[str, ...]:
    """Hashtags without the '#', lower-cased (the contract's form), in order of appearance."""
    if "#" not in text:
        return ()
    found = _HASHTAG.findall(text)
    if len(found) == 1:
        return (found[0].lower(),)
    return _unique([m.lower() for m in found])


def text_for_language(text: str) -> str:
    """The text a language detector should see: URLs, mentions and hashtags removed (they are not prose)."""
    if "://" in text:
        text = _URL.sub(" ", text)
    if "@" in text:
        text = _MENTION.sub(" ", text)
    if "#" in text:
        text = _HASHTAG.sub(" ", text)
    return text


_LANG_TAG = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")


def normalise_lang(value: object) -> str | None:
    """A source's language tag as BCP 47 (primary subtag lower-case), or None when absent or not a tag."""
    if isinstance(value, list | tuple):
        # Bluesky posts carry a list; the first is the author's primary language.
        value = value[0] if value else None
    if not isinstance(value, str) or len(value) > 16 or not _LANG_TAG.match(value):
        return None
    if value.islower():
        return value
    primary, _, rest = value.partition("-")
    return primary.lower() + ("-" + rest if rest else "")
