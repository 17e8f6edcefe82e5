"""`pulse ingest file|stdin` against the real local broker: read the records back from the topics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pulse.cli import build_parser
from pulse.settings import Settings
from schemas import DeadLetter, RawPost, decode
from tests.harness import free_port, stage_env
from tests.kafka_io import read_topic

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ingest(settings: Settings) -> Iterator[Callable[..., int]]:
    """Run ``pulse ingest ...`` in this process with the test's settings (signal handlers restored after)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def run(*argv: str, with_settings: Settings = settings) -> int:
        args = build_parser().parse_args(["ingest", *argv, "--metrics-port", "0"])
        return int(args.handler(args, with_settings))

    yield run
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def jsonl(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records))
    return path


def post(i: int, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"test:{i}",
        "platform": "test",
        "author": {"id": f"u{i % 7}", "handle": "ann"},
        "text": f"Post number {i} about #Acme  by @bob https://acme.example/{i}",
        "lang": "en",
        "created_at": f"2026-11-28T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


def test_file_posts_arrive_keyed_by_id_with_normalised_content(
    settings: Settings, ingest: Callable[..., int], tmp_path: Path
) -> None:
    records = [post(i) for i in range(500)]
    records.append(
        post(500, lang=None, text="Der Kundendienst von Acme ist eine Katastrophe, niemand antwortet")
    )
    assert ingest("file", str(jsonl(tmp_path / "posts.jsonl", records))) == 0
    got = read_topic(settings, settings.topics.raw, expect=501)
    assert len(got) == 501
    posts = {key: decode(value, RawPost) for key, value in got}
    assert set(posts) == {f"test:{i}".encode() for i in range(501)}
    p7 = posts[b"test:7"]
    assert p7.text == "Post number 7 about #Acme by @bob https://acme.example/7"
    assert (p7.hashtags, p7.mentions, p7.urls) == (("acme",), ("bob",), ("https://acme.example/7",))
    assert (
        p7.author.id == "u0" and p7.lang == "en" and p7.created_at.isoformat() == "2026-11-28T10:00:07+00:00"
    )
    assert posts[b"test:500"].lang == "de"  # detected: the source did not say


def test_a_replayed_file_publishes_no_duplicates(
    settings: Settings, ingest: Callable[..., int], tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "posts.jsonl", [post(i) for i in range(300)] + [post(5), post(6)])
    assert ingest("file", str(path)) == 0
    assert ingest("file", str(path)) == 0  # a second run: the dedup window is warmed from the topic
    got = read_topic(settings, settings.topics.raw, expect=300, settle=2.0)
    keys = [k for k, _ in got]
    assert len(keys) == 300 and len(set(keys)) == 300


def test_bad_records_go_to_the_dead_letter_topic_with_reasons(
    settings: Settings, ingest: Callable[..., int], tmp_path: Path
) -> None:
    bad_json = b'{"id": "test:x", "text": "unterminated'
    naive_time = orjson.dumps(post(2, created_at="2026-11-28T10:00:00"))
    no_author = orjson.dumps(post(3, author=None))
    path = jsonl(tmp_path / "mixed.jsonl", [post(1), bad_json, naive_time, no_author, post(4)])
    assert ingest("file", str(path)) == 0
    assert sorted(k for k, _ in read_topic(settings, settings.topics.raw, expect=2)) == [b"test:1", b"test:4"]
    letters = [decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=3)]
    assert [(d.reason, d.original, d.source, d.stage) for d in letters] == [
        ("decode", bad_json, "mixed.jsonl:2", "ingest"),
        ("validation", naive_time, "mixed.jsonl:3", "ingest"),
        ("validation", no_author, "mixed.jsonl:4", "ingest"),
    ]
    assert "field 'created_at'" in letters[1].error and "field 'author'" in letters[2].error


def test_one_huge_invalid_line_is_dead_lettered_and_the_file_goes_on(
    settings: Settings, ingest: Callable[..., int], tmp_path: Path
) -> None:
    # Its dead letter did not fit a record: the run gave up (rc 1) with none of the valid lines published.
    huge = orjson.dumps(post(2, created_at="2026-11-28T10:00:00", filler="f" * 900_000))
    path = jsonl(tmp_path / "huge.jsonl", [post(1), huge, post(3)])
    assert ingest("file", str(path)) == 0
    assert sorted(k for k, _ in read_topic(settings, settings.topics.raw, expect=2)) == [b"test:1", b"test:3"]
    [letter] = [decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=1)]
    assert (letter.reason, letter.source, letter.truncated, letter.original_bytes) == (
        "validation",
        "huge.jsonl:2",
        True,
        len(huge),
    )


def test_csv_in_a_foreign_layout_with_a_field_mapping(
    settings: Settings, ingest: Callable[..., int], tmp_path: Path
) -> None:
    path = tmp_path / "tweets.csv"
    path.write_text(
        "tweet_id,user,body,posted\n"
        '11,jack,"Acme support, you rock! #happy",2026-11-28T10:00:00Z\n'
        "12,jill,Globex is down again,1795867140\n"
    )
    rc = ingest(
        "file",
        str(path),
        "--platform",
        "twitter",
        "--map",
        "id=tweet_id,author.id=user,author.handle=user,text=body,created_at=posted",
    )
    assert rc == 0
    posts = sorted(
        (decode(v, RawPost) for _, v in read_topic(settings, settings.topics.raw, expect=2)),
        key=lambda p: p.id,
    )
    assert [(p.id, p.platform, p.author.handle, p.text) for p in posts] == [
        ("11", "twitter", "jack", "Acme support, you rock! #happy"),
        ("12", "twitter", "jill", "Globex is down again"),
    ]
    assert posts[0].hashtags == ("happy",) and posts[1].created_at.isoformat() == "2026-11-28T11:59:00+00:00"


def test_backpressure_a_tiny_producer_queue_slows_the_source_and_drops_nothing(
    fresh_settings: Callable[..., Settings], ingest: Callable[..., int], tmp_path: Path
) -> None:
    settings = fresh_settings(ingest={"queue_max_messages": 5}, kafka={"producer": {"linger_ms": 5}})
    path = jsonl(tmp_path / "posts.jsonl", [post(i) for i in range(3000)])
    assert ingest("file", str(path), with_settings=settings) == 0
    keys = {k for k, _ in read_topic(settings, settings.topics.raw, expect=3000)}
    assert len(keys) == 3000


def test_a_looped_replay_continues_with_new_ids_and_later_times(
    settings: Settings, ingest: Callable[..., int], tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "posts.jsonl", [post(i) for i in range(20)])
    env = stage_env(settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pulse.cli",
            "ingest",
            "file",
            str(path),
            "--loop",
            "--rate",
            "200",
            "--metrics-port",
            "-1",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        got = read_topic(settings, settings.topics.raw, expect=50, settle=0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    posts = {k: decode(v, RawPost) for k, v in got}
    assert b"test:3" in posts and b"test:3#1" in posts
    assert posts[b"test:3#1"].created_at > posts[b"test:19"].created_at


PULSE_INGEST_FILE = [sys.executable, "-m", "pulse.cli", "ingest", "file"]


@pytest.mark.parametrize("gap_s", [0.02, 0.1])
def test_a_sigterm_right_after_ctrl_c_does_not_kill_a_stage_that_is_exiting(
    settings: Settings, tmp_path: Path, gap_s: float
) -> None:
    # Ctrl-C reaches every process of the group and `pulse run` then sends SIGTERM: the second
    # signal lands while the stage shuts down, after it drained and flushed.
    path = jsonl(tmp_path / "posts.jsonl", [post(i) for i in range(20)])
    proc = subprocess.Popen(
        [*PULSE_INGEST_FILE, str(path), "--loop", "--rate", "200", "--metrics-port", "-1"],
        env=stage_env(settings),
        stderr=subprocess.PIPE,
    )
    try:
        read_topic(settings, settings.topics.raw, expect=20, settle=0)
    finally:
        proc.send_signal(signal.SIGINT)
        time.sleep(gap_s)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"stopped" in err


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def test_sigterm_flushes_what_is_in_flight_and_exits_zero(settings: Settings) -> None:
    # A 20 s linger holds records in the producer: only the flush on SIGTERM can deliver them in time.
    env = stage_env(settings, INGEST__LINGER_MS="20000")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli", "ingest", "stdin", "--metrics-port", str(port)],
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"".join(orjson.dumps(post(i)) + b"\n" for i in range(200)))
    proc.stdin.flush()  # stdin stays open: the source is waiting for more
    in_flight = 'pulse_queue_depth{queue="producer",stage="ingest"} 200.0'
    deadline = time.monotonic() + 30
    while in_flight not in _scrape(port):
        assert time.monotonic() < deadline and proc.poll() is None, "the 200 posts never reached the producer"
        time.sleep(0.2)
    assert not read_topic(settings, settings.topics.raw, expect=1, timeout=1), "linger should hold them back"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"published=200" in err
    keys = {k for k, _ in read_topic(settings, settings.topics.raw, expect=200, timeout=10)}
    assert len(keys) == 200


def _runner(settings: Settings, path: Path) -> Any:
    import threading

    from workers.ingest.dedup import RecentIds
    from workers.ingest.pipeline import Pipeline
    from workers.ingest.publisher import Publisher
    from workers.ingest.records import RecordBuilder
    from workers.ingest.runner import Runner
    from workers.ingest.sources.file import FileSource

    class NoDetector:
        def detect(self, texts: Any) -> list[str]:
            return ["und"] * len(texts)

    publisher = Publisher(settings, success_reports=False)  # as `pulse ingest file` runs it
    pipeline = Pipeline(RecordBuilder(), NoDetector(), RecentIds(1000))
    return Runner(
        FileSource(str(path), "jsonl", 16), pipeline, publisher, stop=threading.Event(), flush_timeout=30
    )


def test_without_success_reports_the_published_count_is_exact_once_flushed(
    settings: Settings, tmp_path: Path
) -> None:
    records: list[Any] = [post(i) for i in range(60)]
    records[7:7] = [b"{not json", post(99, author=None)]
    runner = _runner(settings, jsonl(tmp_path / "posts.jsonl", records))
    assert runner.run() == 0
    assert runner.publisher.published == 60 and runner.publisher.failed == 0
    assert runner.stats.dead_letters == 2
    assert len(read_topic(settings, settings.topics.raw, expect=60)) == 60


def test_without_success_reports_a_failed_delivery_still_fails_the_run(
    settings: Settings, tmp_path: Path
) -> None:
    # Nothing listens on this port: every record times out in the producer after 1 s.
    gone = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={
                    "bootstrap_servers": f"127.0.0.1:{free_port()}",
                    "producer": settings.kafka.producer.model_copy(update={"delivery_timeout_ms": 1000}),
                }
            ),
        }
    )
    runner = _runner(gone, jsonl(tmp_path / "posts.jsonl", [post(i) for i in range(40)]))
    assert runner.run() == 1
    assert runner.publisher.published == 0 and runner.publisher.failed == 40
    assert runner.publisher.error is not None
