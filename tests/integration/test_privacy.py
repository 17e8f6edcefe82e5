"""With PRIVACY__* on, who wrote a post and the personal data in it never leave ingest.

Posts with known author ids, handles, names, permalinks, e-mail addresses and phone numbers go through
the real file source, inference and the streams stage; then every topic and every Redis key and value
the stages wrote are searched for them. Distinct-author counts still work on the pseudonyms.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from pulse import redis_client
from pulse.settings import Settings
from schemas import Author, DeadLetter, EnrichedPost, decode, encode
from streams.keys import Keys
from streams.read import TrendReader
from tests.factories import post_factory
from tests.harness import stage_env
from tests.kafka_io import read_topic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PULSE = [sys.executable, "-m", "pulse.cli"]
WATCHLIST = Path(__file__).resolve().parents[2] / "infra" / "sample" / "watchlist.yaml"
PRIVATE = ["did:plc:writer", "writer-handle", "Writer Name", "writer@example.org", "415-555-0132", "perma"]


def test_no_author_identity_or_redacted_data_reaches_any_topic_or_redis(
    fresh_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fresh_settings()
    now = datetime.now(UTC).replace(microsecond=0)
    posts = [
        post_factory(
            id=f"bluesky:at://did:plc:writer{i % 3}/app.bsky.feed.post/perma{i}",
            platform="bluesky",
            author=Author(
                id=f"did:plc:writer{i % 3}", handle=f"writer-handle{i % 3}", display_name="Writer Name"
            ),
            text=f"Acme support fixed it, thanks! Write me at writer@example.org or call 415-555-0132 ({i})",
            url=f"https://bsky.app/profile/writer-handle{i % 3}/post/perma{i}",
            created_at=now,
            ingested_at=now,
            hashtags=("acme",),
        )
        for i in range(30)
    ]
    # Records ingest cannot read, holding who wrote them: they go to the dead-letter topic, and must
    # not carry the author there either (sealed), yet still open with the key.
    bad = [
        b'{"id": "bluesky:at://did:plc:writer9/app.bsky.feed.post/perma99", "platform": "bluesky", '
        b'"author": {"id": "did:plc:writer9", "handle": "writer-handle9"}, "text": ["not", "text"]}',
        b'{"id": "x", "author": {"handle": "writer-handle8"}, "text": "mail writer@example.org',  # cut short
    ]
    source = tmp_path / "posts.jsonl"
    source.write_bytes(b"".join(encode(p) + b"\n" for p in posts) + b"\n".join(bad) + b"\n")
    env = stage_env(
        settings,
        PRIVACY__PSEUDONYMIZE_AUTHORS="true",
        PRIVACY__HMAC_KEY="a-long-random-test-key",
        PRIVACY__REDACT="email,phone",
        INFERENCE__WATCHLIST=str(WATCHLIST),
        INFERENCE__HTTP_PORT="0",
        INFERENCE__INTRA_OP_THREADS="1",
        STREAMS__HTTP_PORT="0",
        STREAMS__GROUP_ID=f"privacy-{settings.redis.key_prefix}",
        INFERENCE__GROUP_ID=f"privacy-infer-{settings.redis.key_prefix}",  # not a group another test left
    )
    ingest = subprocess.run(
        [*PULSE, "ingest", "file", str(source), "--no-warm", "--metrics-port", "-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ingest.returncode == 0, ingest.stderr
    assert "dead_letters=2" in ingest.stderr or '"dead_letters": 2' in ingest.stderr, ingest.stderr
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("infer", "streams")}
    stages = [
        subprocess.Popen([*PULSE, name], env=env, stdout=out, stderr=subprocess.STDOUT)
        for name, out in logs.items()
    ]
    reader = TrendReader(redis_client.client(settings), Keys(settings.redis.key_prefix))
    try:
        found = read_topic(settings, settings.topics.enriched, expect=30, timeout=120)
        enriched = [decode(v, EnrichedPost) for _, v in found]
        assert len(enriched) == 30
        deadline = time.monotonic() + 120
        while (reader.latest_event_ms() or 0) < int(now.timestamp() * 1000) or not _samples(settings):
            assert time.monotonic() < deadline, "the streams stage did not count the posts"
            for name, proc in zip(logs, stages, strict=True):
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # the batch after the first one, if any
    finally:
        for proc in stages:
            proc.send_signal(signal.SIGTERM)
        for proc in stages:
            proc.wait(60)
        for out in logs.values():
            out.close()
    assert len({e.post.author.id for e in enriched}) == 3  # stable pseudonyms: three distinct authors
    assert all("[email]" in e.post.text and "[phone]" in e.post.text for e in enriched)
    seen = []
    for topic in settings.topics.by_role().values():
        for key, value in read_topic(settings, topic, expect=0, timeout=5, to_end=True):
            seen += [key or b"", value]
            if topic == settings.topics.dlq:  # the original is base64 on the wire: search it as bytes
                seen.append(decode(value, DeadLetter).original)
    with redis_client.client(settings) as client:
        for key in client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000):
            seen.append(key)
            kind = client.type(key).decode()
            if kind == "hash":
                seen += [b"%s=%s" % kv for kv in client.hgetall(key).items()]
            elif kind == "zset":
                seen += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "list":
                seen += client.lrange(key, 0, -1)
            elif kind == "string":
                seen.append(client.get(key) or b"")
    blob = b"\n".join(seen).decode(errors="replace")
    assert "Acme support fixed it" in blob  # the search does see the stored texts
    for private in PRIVATE:
        assert private not in blob, f"{private!r} reached a topic or Redis"
    # The dead letters are not lost: the key opens them.
    opened = subprocess.run(
        [*PULSE, "dead-letters", "--unseal"], env=env, capture_output=True, text=True, timeout=60
    )
    assert opened.returncode == 0, opened.stderr
    every = [orjson.loads(line) for line in opened.stdout.splitlines()]
    assert sorted(d["original"].encode() for d in every) == sorted(bad)
    newest = subprocess.run(
        [*PULSE, "dead-letters", "--unseal", "--last", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [orjson.loads(line) for line in newest.stdout.splitlines()] == [
        max(every, key=lambda d: d["failed_at"])
    ]
    sealed = subprocess.run([*PULSE, "dead-letters"], env=env, capture_output=True, text=True, timeout=60)
    assert sealed.returncode == 0 and "writer" not in sealed.stdout and "original_sealed" in sealed.stdout


def _samples(settings: Settings) -> bool:
    with redis_client.client(settings) as client:
        return any(True for _ in client.scan_iter(match=f"{settings.redis.key_prefix}:*:sd:*", count=1000))
