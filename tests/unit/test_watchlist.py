"""Watchlist matching: aliases, case, @handles, #hashtags, word boundaries, longest form first."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.inference.watchlist import Watchlist, WatchlistError

pytestmark = pytest.mark.timeout(30)

DOC = {
    "brands": [
        {
            "term": "Acme",
            "aliases": ["Acme Cloud", "ACME Corp."],
            "handles": ["@acme", "acme.bsky.social"],
            "hashtags": ["acmefail"],
        },
        {"term": "Apple", "case_sensitive": True, "handles": ["apple"]},
    ],
    "keywords": ["outage", {"term": "data breach", "aliases": ["breach"]}],
}


def found(text: str, doc: dict | None = None) -> list[tuple[str, str, str]]:
    wl = Watchlist.from_dict(doc or DOC)
    return [(m.term, m.kind, m.text) for m in wl.find(text)]


def test_alias_case_insensitive_by_default_and_offsets_point_at_the_text() -> None:
    text = "why is acme cloud down again, ACME CORP. pls"
    matches = Watchlist.from_dict(DOC).find(text)
    assert [(m.term, m.text) for m in matches] == [("Acme", "acme cloud"), ("Acme", "ACME CORP.")]
    assert all(text[m.start : m.end] == m.text for m in matches)


def test_longest_form_wins_where_forms_overlap() -> None:
    assert found("Acme Cloud rocks") == [("Acme", "brand", "Acme Cloud")]


def test_handles_and_hashtags_including_derived_hashtags() -> None:
    text = "@acme help #AcmeCloud #acmefail #Acme #outage @acme.bsky.social"
    assert found(text) == [
        ("Acme", "brand", "@acme"),
        ("Acme", "brand", "#AcmeCloud"),
        ("Acme", "brand", "#acmefail"),
        ("Acme", "brand", "#Acme"),
        ("outage", "keyword", "#outage"),
        ("Acme", "brand", "@acme.bsky.social"),
    ]


def test_word_boundaries() -> None:
    assert found("acmecorp acme2 xacme #acme1 @acmeco @acme.bsky.social.evil foo@acme.com") == []
    # Sentence punctuation after a handle or name still ends it.
    assert found("ask @acme. or acme!") == [("Acme", "brand", "@acme"), ("Acme", "brand", "acme")]


def test_case_sensitive_brand_only_matches_its_case_but_handles_ignore_case() -> None:
    assert found("apple pie, APPLE shouting, Apple earnings, @APPLE") == [
        ("Apple", "brand", "Apple"),
        ("Apple", "brand", "@APPLE"),
    ]


def test_multiword_alias_tolerates_any_whitespace() -> None:
    assert found("a data\n  breach at the bank") == [("data breach", "keyword", "data\n  breach")]


def test_unicode_text_and_case_folding_do_not_crash() -> None:
    assert found("İstanbul ẞ Straße ACME™ outage…") == [
        ("Acme", "brand", "ACME"),
        ("outage", "keyword", "outage"),
    ]


def test_the_same_form_for_two_terms_is_refused() -> None:
    with pytest.raises(WatchlistError, match="'breach' is a form of both"):
        Watchlist.from_dict({"brands": [{"term": "Breach"}], "keywords": ["breach"]})


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"brand": []}, "unknown top-level key"),
        ({"brands": {"term": "x"}}, "'brands' must be a list"),
        ({"brands": [{"name": "x"}]}, r"brands\[0\] has unknown key"),
        ({"brands": [{"term": ""}]}, r"brands\[0\].term must be a non-empty string"),
        ({"keywords": [{"term": "x", "aliases": [""]}]}, r"keywords\[0\].aliases must be"),
        ({"brands": [{"term": "x", "hashtags": ["two words"]}]}, "contains whitespace"),
    ],
)
def test_invalid_documents_name_the_entry(doc: dict, problem: str) -> None:
    with pytest.raises(WatchlistError, match=problem):
        Watchlist.from_dict(doc)


def test_load_reads_yaml_and_reports_the_path(tmp_path: Path) -> None:
    good = tmp_path / "w.yaml"
    good.write_text("brands:\n  - term: Acme\n    aliases: [Acme Cloud]\nkeywords: [outage]\n")
    assert [m.term for m in Watchlist.load(good).find("acme cloud outage")] == ["Acme", "outage"]
    with pytest.raises(WatchlistError, match="cannot read watchlist"):
        Watchlist.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("brands: [term: x\n")
    with pytest.raises(WatchlistError, match=r"bad.yaml is not valid YAML"):
        Watchlist.load(bad)


def test_shipped_default_watchlist_loads_and_matches() -> None:
    wl = Watchlist.load(Path(__file__).resolve().parents[2] / "infra" / "watchlist.yaml")
    assert len(wl) >= 5
    kinds = {m.kind for m in wl.find("@Tesla recall? the #iPhone battery scandal... OpenAI outage")}
    assert kinds == {"brand", "keyword"}


@given(st.text(max_size=200))
def test_any_text_gives_matches_whose_offsets_point_at_their_text(text: str) -> None:
    wl = Watchlist.from_dict(DOC)
    matches = wl.find(text)
    assert all(text[m.start : m.end] == m.text for m in matches)
    assert all(a.end <= b.start for a, b in itertools.pairwise(matches))


def test_every_form_of_the_shipped_watchlist_finds_its_own_term() -> None:
    wl = Watchlist.load(Path(__file__).resolve().parents[2] / "infra" / "watchlist.yaml")
    for entry in wl.entries:
        forms = (
            [entry.term, *entry.aliases]
            + [f"@{h}" for h in entry.handles]
            + [f"#{t}" for t in entry.hashtags]
        )
        for form in forms:
            matches = wl.find(f"so, {form}!")
            assert [(m.term, m.text) for m in matches] == [(entry.term, form)], form
