"""The ingest core over batches: dead letters with reasons and original bytes, dedup, language detection."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas import RawPost, decode
from workers.ingest.dedup import RecentIds
from workers.ingest.language import Py3LangidDetector
from workers.ingest.mapping import parse_mapping
from workers.ingest.pipeline import Batch, Item, Pipeline
from workers.ingest.records import RecordBuilder

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


class FakeDetector:
    """Says 'xx' for everything, and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def detect(self, texts: Sequence[str]) -> list[str]:
        self.asked.extend(texts)
        return ["xx"] * len(texts)


def line(**overrides: Any) -> bytes:
    record: dict[str, Any] = {
        "id": "p1",
        "platform": "test",
        "author": {"id": "u"},
        "text": "hello world",
        "lang": "en",
        "created_at": "2026-11-28T11:00:00Z",
    }
    record.update(overrides)
    return orjson.dumps({k: v for k, v in record.items() if v is not None})


def pipeline(detector: Any = None, window: int = 100, mapping: Any = None) -> Pipeline:
    return Pipeline(
        RecordBuilder(), detector or FakeDetector(), RecentIds(window), mapping, clock=lambda: NOW
    )


def test_bad_records_become_dead_letters_with_reason_original_bytes_and_line() -> None:
    bad_json, no_author = b'{"id": "p2", "text": ', line(id="p3", author=None)
    out = pipeline().process(Batch([line(), bad_json, b"", no_author, b"[1, 2]"], "posts.jsonl", 10))
    assert [p.key for p in out.posts] == [b"p1"]
    assert [(d.reason, d.original, d.source, d.stage) for d in out.dead] == [
        ("decode", bad_json, "posts.jsonl:11", "ingest"),
        ("validation", no_author, "posts.jsonl:13", "ingest"),
        ("decode", b"[1, 2]", "posts.jsonl:14", "ingest"),
    ]
    assert "not valid JSON" in out.dead[0].error
    assert "field 'author'" in out.dead[1].error
    assert [i for i, _ in out.rejected] == [1, 3, 4]


def test_duplicates_are_counted_not_published_even_across_batches() -> None:
    p = pipeline()
    first = p.process(Batch([line(id="a"), line(id="b"), line(id="a")]))
    second = p.process(Batch([line(id="b"), line(id="c")]))
    assert [x.key for x in first.posts] == [b"a", b"b"] and first.duplicates == [2]
    assert [x.key for x in second.posts] == [b"c"] and second.duplicates == [0]


def test_only_posts_without_a_source_language_are_detected_in_one_call() -> None:
    detector = FakeDetector()
    out = pipeline(detector).process(
        Batch([line(id="a"), line(id="b", lang=None, text="bonjour  tout le monde")])
    )
    assert detector.asked == ["bonjour tout le monde"]
    assert [decode(p.value, RawPost).lang for p in out.posts] == ["en", "xx"]


def test_real_detector_finds_languages_and_says_und_when_unsure() -> None:
    out = pipeline(Py3LangidDetector()).process(
        Batch(
            [
                line(id="a", lang=None, text="Der Kundendienst ist eine Katastrophe, niemand antwortet mir"),
                line(
                    id="b", lang=None, text="El servicio es terrible, llevo dos horas esperando una respuesta"
                ),
                line(id="c", lang=None, text="ok 👍 @acme #win"),
            ]
        )
    )
    assert [decode(p.value, RawPost).lang for p in out.posts] == ["de", "es", "und"]


def test_items_from_sources_carry_their_own_origin_and_problems() -> None:
    items = [
        Item(
            b"raw",
            {
                "id": "q",
                "platform": "t",
                "author": {"id": "u"},
                "text": "x",
                "created_at": "2026-11-28T11:00:00Z",
            },
        ),
        Item(b"a,b", origin="rows.csv:7", problem="CSV row has 2 fields, the header has 3"),
    ]
    out = pipeline().process(Batch(items, "rows.csv"))
    assert [p.key for p in out.posts] == [b"q"]
    assert [(d.reason, d.source, d.original) for d in out.dead] == [("decode", "rows.csv:7", b"a,b")]


def test_mapping_reads_foreign_layouts() -> None:
    foreign = orjson.dumps(
        {
            "tweet_id": 9,
            "body": "hi there",
            "ts": "2026-11-28T11:00:00Z",
            "user": {"name": "zed"},
            "platform": "twitter",
            "lang": "en",
        }
    )
    out = pipeline(
        mapping=parse_mapping(["id=tweet_id,text=body,created_at=ts,author.id=user.name"])
    ).process(Batch([foreign]))
    post = decode(out.posts[0].value, RawPost)
    assert (post.id, post.text, post.author.id, post.platform) == ("9", "hi there", "zed", "twitter")


def test_a_warm_batch_mixing_bulk_and_careful_records_keeps_batch_order() -> None:
    detector = FakeDetector()
    p = pipeline(detector)
    p.process(Batch([line(id="warm")]))
    records = [
        line(id="a"),
        orjson.dumps(
            {
                "id": 5,
                "platform": "test",
                "author": {"id": "u"},
                "text": "numeric id",
                "lang": "en",
                "created_at": "2026-11-28T11:00:00Z",
            }
        ),
        b"{broken",
        line(id="b", lang=None, text="needs a language"),
        line(id="a"),  # a duplicate of the first
        line(id="c", created_at="2026-11-28T12:00:00+01:00"),
        line(id="d"),
    ]
    out = p.process(Batch(records, "mixed.jsonl", 1))
    assert [p.key for p in out.posts] == [b"a", b"5", b"b", b"c", b"d"]
    assert out.keys == ["a", "5", "b", "c", "d"] and out.positions == [0, 1, 3, 5, 6]
    assert [p.position for p in out.posts] == out.positions
    assert out.duplicates == [4] and [i for i, _ in out.rejected] == [2]
    assert [d.source for d in out.dead] == ["mixed.jsonl:3"]
    assert detector.asked == ["needs a language"]
    langs = [decode(v, RawPost).lang for v in out.values]
    assert langs == ["en", "en", "xx", "en", "en"]
    assert decode(out.values[3], RawPost).created_at == datetime(2026, 11, 28, 11, tzinfo=UTC)


def test_blank_lines_are_counted_so_read_equals_published_dead_and_blank() -> None:
    records = [line(id="a"), b"", b"   ", b"\t", line(id="b"), b"{bad"]
    out = pipeline().process(Batch(records, "f.jsonl", 1))
    assert (len(out.keys), len(out.dead), out.blank) == (2, 1, 3)
    assert len(out.keys) + len(out.dead) + out.blank + len(out.duplicates) == len(records)


def test_errors_name_json_types_not_python_ones() -> None:
    records = [
        orjson.dumps([1]),
        line(author="bob"),
        line(text=5),
        line(text=[1]),
        orjson.dumps(None),
    ]
    errors = [d.error for d in pipeline().process(Batch(records, "f.jsonl", 1)).dead]
    assert errors == [
        "invalid RawPost: record: expected a JSON object, got an array",
        "invalid RawPost: field 'author': expected an object with an id, got a string",
        "invalid RawPost: field 'text': expected a string, got a number",
        "invalid RawPost: field 'text': expected a string, got an array",
        "invalid RawPost: record: expected a JSON object, got null",
    ]


def _warm() -> Pipeline:
    """A pipeline that has seen a post: its bulk path for canonical lines is on (the first batch is not)."""
    p = pipeline()
    assert p.process(Batch([line(id="warm")], "f.jsonl", 1)).keys == ["warm"]
    return p


def test_field_checks_reject_what_must_not_reach_a_key_or_a_link_the_same_on_every_path() -> None:
    cases = {
        "javascript": (
            line(id="j", url="javascript:alert(1)"),
            "field 'url': expected an absolute http(s) URL",
        ),
        "markup": (line(id="m", url="<script>alert(1)</script>"), "field 'url': expected an absolute"),
        "no host": (line(id="h", url="https://"), "field 'url': expected an absolute"),
        "numeric url": (line(id="n", url=5), "field 'url': expected a string, got a number"),
        "numeric handle": (
            line(id="nh", author={"id": "u", "handle": 5}),
            "'author.handle': expected a string",
        ),
        "NUL in id": (line(id="a\x00b"), "field 'id': must not contain control characters"),
        "ESC in author": (
            line(id="e", author={"id": "u\x1b"}),
            "field 'author.id': must not contain control",
        ),
        "newline in handle": (
            line(id="nl", author={"id": "u", "handle": "a\nb"}),
            "'author.handle': must not",
        ),
    }
    for name, (record, says) in cases.items():
        for p in (pipeline(), _warm()):  # the careful path, then the bulk path of a warm pipeline
            out = p.process(Batch([record], "f.jsonl", 2))
            assert out.keys == [] and len(out.dead) == 1, name
            assert says in out.dead[0].error, (name, out.dead[0].error)


def test_text_and_names_lose_control_characters_and_ids_may_be_numbers() -> None:
    records = [
        line(
            id="c",
            text="hi\x00 there \x1b[31mred\x7f\ttab\nline",
            author={"id": "u", "display_name": "Ann\x00 B"},
        ),
        orjson.dumps({**orjson.loads(line()), "id": 123456789, "url": "http://example.org/p/1"}),
    ]
    for p in (pipeline(), _warm()):
        out = p.process(Batch(records, "f.jsonl", 2))
        assert out.dead == [] and out.keys == ["c", "123456789"]
        first, second = (decode(v, RawPost) for v in out.values)
        assert first.text == "hi there [31mred tab line" and first.author.display_name == "Ann B"
        assert second.url == "http://example.org/p/1"


def test_private_posts_are_pseudonymised_and_redacted_on_both_paths_and_dedup_sees_published_ids() -> None:
    from workers.ingest.privacy import Privacy, Pseudonymizer, Redactor

    detector = FakeDetector()
    privacy = Privacy(Pseudonymizer(b"key"), Redactor(["email"]))
    p = Pipeline(RecordBuilder(), detector, RecentIds(100), clock=lambda: NOW, privacy=privacy)
    author = {"id": "u1", "handle": "jane"}
    warm = [line(id=f"w{i}", author=author, text=f"mail jane@example.com {i}") for i in range(3)]
    p.process(Batch(warm[:1]))  # the next batch takes the bulk path
    out = p.process(
        Batch([*warm[1:], line(id="x", lang=None, author=author, text="écris à jane@example.com")])
    )
    posts = [decode(post.value, RawPost) for post in out.posts]
    assert [post.key.decode() for post in out.posts] == [x.id for x in posts]
    assert all(x.id.startswith("anon-") and x.author.id.startswith("anon-") for x in posts)
    assert len({x.author.id for x in posts}) == 1 and {x.author.handle for x in posts} != {"jane"}
    assert [x.text for x in posts] == ["mail [email] 1", "mail [email] 2", "écris à [email]"]
    assert detector.asked == ["écris à [email]"]  # language detection reads the redacted text
    again = p.process(Batch([warm[2]]))
    assert again.duplicates == [0] and not again.posts  # dedup keys are the published ids
