"""Text normalisation and extraction, and source language tags."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.ingest import normalise
from workers.ingest.normalise import (
    extract_hashtags,
    extract_mentions,
    extract_urls,
    normalise_lang,
    normalise_text,
    text_for_language,
)


def test_nfc_composes_decomposed_accents() -> None:
    decomposed = unicodedata.normalize("NFD", "Café déjà vu")
    assert decomposed != "Café déjà vu"
    assert normalise_text(decomposed) == "Café déjà vu"


def test_whitespace_collapses_to_single_spaces() -> None:
    assert normalise_text("  so\tmuch \n\n space\u00a0here  ") == "so much space here"


def test_urls_lose_sentence_punctuation_but_keep_paths() -> None:
    text = "see https://example.com/a/b?x=1. and (http://t.co/xyz) or https://example.com/a/b?x=1"
    assert extract_urls(text) == ("https://example.com/a/b?x=1", "http://t.co/xyz")


def test_mentions_include_bluesky_and_fediverse_handles_but_not_emails() -> None:
    text = "hi @alice.bsky.social and @bob@mastodon.social, mail me at carol@example.com. @dave_99!"
    assert extract_mentions(text) == ("alice.bsky.social", "bob@mastodon.social", "dave_99")


def test_hashtags_are_lower_cased_unique_and_need_a_letter() -> None:
    text = "#Launch day! #launch #2024 #AI4Good https://x.com/#frag &#39; #Café"
    assert extract_hashtags(text) == ("launch", "ai4good", "café")


def test_language_text_drops_urls_mentions_and_tags() -> None:
    assert text_for_language("@acme #fail see https://x.y/z now").split() == ["see", "now"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("en", "en"),
        ("EN-us", "en-us"),
        ("pt-BR", "pt-BR"),
        (["de", "en"], "de"),
        ([], None),
        (None, None),
        ("english please", None),
        ("x", None),
        (3, None),
        ("und", "und"),
    ],
)
def test_source_language_tags(value: object, expected: str | None) -> None:
    assert normalise_lang(value) == expected


# The extraction patterns put their literal first (faster); these are the plain forms they must equal.
_MENTION_REFERENCE = re.compile(r"(?<![\w@/])@(\w[\w.-]*(?:@\w[\w.-]*\.\w+)?)")
_HASHTAG_REFERENCE = re.compile(r"(?<![\w#&/])#(\w*[^\W\d_]\w*)")


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("#@&/_.-: aZé9\u00e9\u0301x\n")), max_size=40))
def test_the_fast_patterns_find_what_the_plain_ones_find(text: str) -> None:
    assert normalise._MENTION.findall(text) == _MENTION_REFERENCE.findall(text)
    assert normalise._HASHTAG.findall(text) == _HASHTAG_REFERENCE.findall(text)
    assert normalise._MENTION.sub(" ", text) == _MENTION_REFERENCE.sub(" ", text)
    assert normalise._HASHTAG.sub(" ", text) == _HASHTAG_REFERENCE.sub(" ", text)
