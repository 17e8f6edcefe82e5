"""The synthetic stream: deterministic with a seed; spikes raise a brand's negative share on schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas import RawPost, validate
from workers.ingest.scenario import Scenario, parse_spike, parse_weights
from workers.ingest.sources.generator import TEMPLATES, Generator

START = datetime(2026, 11, 28, tzinfo=UTC)
NEGATIVE = {t for lang in TEMPLATES.values() for t in lang["negative"]}


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = list(Generator(Scenario(), 1, START).records(200))
    assert a == list(Generator(Scenario(), 1, START).records(200))
    assert a != list(Generator(Scenario(), 2, START).records(200))
    assert len({r["id"] for r in a}) == 200


def test_spike_parsing_and_validation() -> None:
    assert parse_spike("Acme@600+300:0.7") == parse_spike(" Acme@600.0+300:.7 ")
    for bad in ("Acme@600:0.7", "Acme@600+300:1.5", "@1+2:0.5"):
        with pytest.raises(ValueError):
            parse_spike(bad)
    assert parse_weights("en:3,es") == (("en", 3.0), ("es", 1.0))


def test_sentiment_shares_sum_to_one_and_follow_the_schedule() -> None:
    sc = Scenario(spikes=(parse_spike("Acme@100+50:0.8"),))
    for brand, t in (("Acme", 10), ("Acme", 120), ("Globex", 120), (None, 120)):
        assert sum(sc.sentiment_shares(brand, t)) == pytest.approx(1.0)
    assert sc.sentiment_shares("acme", 120)[0] == 0.8
    assert sc.sentiment_shares("Acme", 150)[0] == sc.negative  # the end is exclusive
    assert sc.sentiment_shares("Globex", 120)[0] == sc.negative


def _negative_share(records: list[dict], brand: str) -> float:
    about = [r for r in records if brand in r["text"]]
    return sum(1 for r in about if any(_matches(t, r["text"], brand) for t in NEGATIVE)) / len(about)


def _matches(template: str, text: str, brand: str) -> bool:
    head = template.split("{")[0] if not template.startswith("{") else template.split("}")[1].split("{")[0]
    return head.replace("{b}", brand) in text


def test_generated_stream_shows_the_spike_in_its_window_only() -> None:
    sc = Scenario(
        brands=("Acme", "Globex"), langs=(("en", 1.0),), rate=20.0, spikes=(parse_spike("Acme@300+300:0.8"),)
    )
    records = list(Generator(sc, 3, START).records(18_000))  # 15 minutes of event time

    def window(lo: int, hi: int) -> list[dict]:
        return [
            r for r in records if lo <= (datetime.fromisoformat(r["created_at"]) - START).total_seconds() < hi
        ]

    before, during = window(0, 300), window(300, 600)
    assert _negative_share(before, "Acme") < 0.35
    assert _negative_share(during, "Acme") > 0.65
    assert _negative_share(during, "Globex") < 0.35


def test_records_are_valid_posts_and_can_leave_the_language_out() -> None:
    gen = Generator(Scenario(), 5, START, no_lang=0.5)
    records = list(gen.records(400))
    without = [r for r in records if "lang" not in r]
    assert 100 < len(without) < 300
    for r in records[:50]:
        validate({**r, "ingested_at": START.isoformat()}, RawPost)
