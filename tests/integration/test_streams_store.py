"""The trend store against real Redis: exact counts, replays change nothing, a stale writer is refused."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from pulse import redis_client
from pulse.settings import Settings
from schemas import Sentiment, WatchMatch, encode
from schemas.views import read_enriched
from streams.aggregate import Record
from streams.keys import SEP, Keys
from streams.read import TrendReader
from streams.store import RedisTrendStore
from tests.factories import enriched_factory, post_factory

pytestmark = pytest.mark.timeout(120)
TOPIC = "posts.enriched"
LABELS = ("negative", "neutral", "positive")


def batch(n: int, start: datetime, seed: int = 1, partitions: int = 2) -> list[Record]:
    rng = random.Random(seed)
    out, next_offset = [], dict.fromkeys(range(partitions), 0)
    for i in range(n):
        label = rng.choice(LABELS)
        brand = rng.choice(("Acme", "Globex", None))
        post = post_factory(
            id=f"t:{seed}:{i}",
            created_at=start + timedelta(milliseconds=137 * i),
            hashtags=tuple(rng.sample(("deals", "launch", "outage", "tech"), 2)),
            platform=rng.choice(("bluesky", "mastodon")),
        )
        enriched = enriched_factory(
            post,
            sentiment=Sentiment(label=label, scores={label: 0.9}),
            entities=(),
            matches=(WatchMatch(term=brand, kind="brand", text=brand, start=0, end=len(brand)),)
            if brand
            else (),
        )
        partition = i % partitions
        value = encode(enriched)
        out.append(Record(TOPIC, partition, next_offset[partition], value, view=read_enriched(value)))
        next_offset[partition] += 1
    return out


def expected(records: list[Record], kind: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for r in records:
        assert r.view is not None
        if kind == "hashtag":
            counts.update(set(r.view.post.hashtags))
        else:
            counts.update({m.term for m in r.view.matches if m.kind == kind})
    return counts


def stores(settings: Settings, shards: int) -> tuple[RedisTrendStore, TrendReader]:
    client = redis_client.client(settings)
    keys = Keys(settings.redis.key_prefix, shards=shards)
    store = RedisTrendStore(client, keys, lateness_ms=30_000, sample_size=5, sample_ttl_s=600)
    return store, TrendReader(client, keys)


@pytest.mark.parametrize("shards", [1, 4])
def test_counts_are_exact_and_a_replay_changes_nothing(settings: Settings, shards: int) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    records = batch(600, start)
    store, reader = stores(settings, shards)
    assert store.load([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): None, (TOPIC, 1): None}
    result = store.apply(records[:250], wall_ms=1)
    store.apply(records[250:], wall_ms=2)
    assert result.plan.counted == 250
    window = reader.window(3600)
    want = expected(records, "hashtag")
    assert dict(reader.top("hashtag", window, 10)) == dict(want)
    assert reader.counts("brand", ["Acme", "Globex", "Initech"], window) == {
        "Acme": expected(records, "brand")["Acme"],
        "Globex": expected(records, "brand")["Globex"],
        "Initech": 0,
    }
    mix = reader.sentiment("brand", ["Acme"], window)["Acme"]
    assert sum(mix.values()) == expected(records, "brand")["Acme"]
    assert reader.totals(window)["n"] == 600

    # A crash before the consumer committed: the same records come again, to a fresh process.
    again, _ = stores(settings, shards)
    assert again.load([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 300, (TOPIC, 1): 300}
    replay = again.apply(records, wall_ms=3)
    assert replay.plan.counted == 0 and replay.plan.skipped == 600
    assert dict(reader.top("hashtag", window, 10)) == dict(want)
    assert reader.totals(window)["n"] == 600


def test_a_writer_with_a_stale_view_of_the_offsets_is_refused_and_counts_stay_exact(
    settings: Settings,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    records = batch(400, start, partitions=1)
    new_owner, reader = stores(settings, shards=2)
    zombie, _ = stores(settings, shards=2)
    new_owner.load([(TOPIC, 0)])
    zombie.load([(TOPIC, 0)])
    zombie.apply(records[:200], wall_ms=1)  # the old owner, not yet told it lost the partition
    # The new owner's cache says nothing is applied: its write overlaps, is refused, reloaded, redone.
    result = new_owner.apply(records[100:300], wall_ms=2)
    assert result.conflicts == 1 and result.plan.counted == 100  # only 200..299 were new
    zombie.apply(records[200:300], wall_ms=3)  # late: all already applied
    assert dict(reader.top("hashtag", reader.window(3600), 10)) == dict(expected(records[:300], "hashtag"))


def test_watched_terms_keep_platforms_authors_coterms_and_bounded_samples(settings: Settings) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    records = batch(300, start, partitions=1)
    store, reader = stores(settings, shards=1)
    store.load([(TOPIC, 0)])
    store.apply(records, wall_ms=1)
    acme = [r for r in records if r.view and any(m.term == "Acme" for m in r.view.matches)]
    summary = reader.summary("brand", "Acme", reader.window(3600))
    assert summary.count == len(acme)
    assert sum(summary.platforms.values()) == len(acme) and set(summary.platforms) <= {"bluesky", "mastodon"}
    assert summary.languages == {"en": len(acme)}
    assert summary.authors == len({r.view.post.author.id for r in acme if r.view})  # HLL: exact when small
    co = Counter(tag for r in acme if r.view for tag in set(r.view.post.hashtags))
    assert set(summary.co_terms) == {("hashtag", tag, n) for tag, n in co.items()}
    # Samples: the newest 5 of each minute (the sample size), minutes newest first, 10 at most.
    by_minute: dict[int, list[str]] = {}
    for r in sorted(acme, key=lambda r: r.offset, reverse=True):
        assert r.view is not None
        by_minute.setdefault(int(r.view.post.created_at.timestamp()) // 60, []).append(r.view.post.id)
    want = [pid for minute in sorted(by_minute, reverse=True) for pid in by_minute[minute][:5]][:10]
    assert [s["id"] for s in summary.samples] == want


def redelivered(records: list[Record], copies: list[int], partitions: int = 1) -> list[Record]:
    """``records`` followed by a second copy of the posts at ``copies``, at later offsets of the same
    partition: what an inference worker killed before storing its offsets produces (at least once)."""
    out = list(records)
    next_offset = {p: 1 + max(r.offset for r in records if r.partition == p) for p in range(partitions)}
    for i in copies:
        first = records[i]
        out.append(Record(TOPIC, first.partition, next_offset[first.partition], first.value, view=first.view))
        next_offset[first.partition] += 1
    return out


@pytest.mark.parametrize("shards", [1, 3])
def test_a_post_delivered_twice_at_different_offsets_is_counted_once(settings: Settings, shards: int) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    records = batch(300, start, partitions=2)
    stream = redelivered(records, copies=[*range(250, 300), 3, 4], partitions=2)
    store, reader = stores(settings, shards)
    store.load([(TOPIC, 0), (TOPIC, 1)])
    first = store.apply(stream[:280], wall_ms=1)  # the originals of 280..299 come in the next batch
    second = store.apply(stream[280:], wall_ms=2)
    assert first.plan.counted + second.plan.counted == 300
    assert first.plan.duplicates + second.plan.duplicates == 52
    window = reader.window(3600)
    assert reader.totals(window)["n"] == 300
    assert dict(reader.top("hashtag", window, 10)) == dict(expected(records, "hashtag"))
    # A crash after the duplicate check and before the write: the replay counts what it must, once.
    again, _ = stores(settings, shards)
    again.load([(TOPIC, 0), (TOPIC, 1)])
    replay = again.apply(stream, wall_ms=3)
    assert replay.plan.counted == 0 and replay.plan.duplicates == 0
    assert reader.totals(window)["n"] == 300


def test_the_duplicate_check_is_safe_to_repeat_before_a_write(settings: Settings) -> None:
    """Marks are set before the write: a batch whose write never happened (a crash between the two)
    is checked again on its replay and still counts every original once."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    records = batch(100, start, partitions=1)
    stream = redelivered(records, copies=[10, 20, 30])
    store, reader = stores(settings, shards=1)
    store.load([(TOPIC, 0)])
    assert store.mark_duplicates(stream) == 3  # the check ran; the write did not (a crash)
    for record in stream:
        record.duplicate = False
    result = store.apply(stream, wall_ms=1)
    assert result.plan.counted == 100 and result.plan.duplicates == 3
    assert reader.totals(reader.window(3600))["n"] == 100


@pytest.mark.parametrize("shards", [1, 3])
def test_records_missing_between_batches_are_never_skipped(settings: Settings, shards: int) -> None:
    """The drill's takeover step found posts uncounted while the applied offsets had passed them:
    records of a partition that never reached the agent (dropped around a rebalance) and a later
    batch of the same partition applied past them. A batch that does not continue where a
    partition's applied offset ends is not applied for that partition; it asks to be sought back."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    records = batch(300, start, partitions=2)
    p0 = [r for r in records if r.partition == 0]
    p1 = [r for r in records if r.partition == 1]
    store, reader = stores(settings, shards)
    store.load([(TOPIC, 0), (TOPIC, 1)])
    store.apply(p0[:50] + p1[:50], wall_ms=1)
    # Partition 0's records 50..79 never arrive; 80.. do (partition 1 is whole).
    result = store.apply(p0[80:] + p1[50:], wall_ms=2)
    assert result.plan.gaps == {(TOPIC, 0): 50}
    assert result.plan.counted == 100  # partition 1 only
    assert store.resume_from((TOPIC, 0)) == 50
    # Sought back: the whole rest of partition 0 comes, and every post is counted once.
    result = store.apply(p0[50:], wall_ms=3)
    assert result.plan.gaps == {} and result.plan.counted == 100
    assert reader.totals(reader.window(3600))["n"] == 300
    assert dict(reader.top("hashtag", reader.window(3600), 10)) == dict(expected(records, "hashtag"))


def test_a_partition_sought_past_aged_out_records_may_start_there(settings: Settings) -> None:
    """Where retention deleted records before they were counted, the stage seeks to the log's start
    and says so (``sought``): that one jump is accepted; any other is a gap."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    records = batch(100, start, partitions=1)
    store, _ = stores(settings, shards=1)
    store.load([(TOPIC, 0)])
    store.apply(records[:10], wall_ms=1)
    assert store.apply(records[40:], wall_ms=2).plan.gaps == {(TOPIC, 0): 10}
    store.sought({(TOPIC, 0): 40})  # records 10..39 aged out of the topic
    result = store.apply(records[40:], wall_ms=3)
    assert result.plan.gaps == {} and result.plan.counted == 60
    # A partition nothing was counted of, sought to its log's start: it must begin there.
    fresh, _ = stores(settings, shards=1)
    other = [Record(TOPIC, 1, r.offset, r.value, view=r.view) for r in batch(20, start, seed=2, partitions=1)]
    fresh.load([(TOPIC, 1)])
    fresh.sought({(TOPIC, 1): 0})
    assert fresh.apply(other[5:], wall_ms=4).plan.gaps == {(TOPIC, 1): 0}
    assert fresh.apply(other, wall_ms=5).plan.counted == 20


def version(
    post_id: str, label: str, created: datetime, edited: datetime | None, tags: tuple[str, ...]
) -> bytes:
    post = post_factory(id=post_id, created_at=created, edited_at=edited, hashtags=tags, platform="mastodon")
    return encode(
        enriched_factory(
            post,
            sentiment=Sentiment(label=label, scores={label: 0.9}),
            entities=(),
            matches=(WatchMatch(term="Acme", kind="brand", text="Acme", start=0, end=4),),
        )
    )


def revision_stream(start: datetime) -> list[Record]:
    """Post a (negative, #outage) and b; a is edited to positive #fixed, that edit is delivered twice,
    an older edit of a arrives late, and b is deleted."""
    values = [
        (0, version("m:a", "negative", start, None, ("outage",)), b"m:a"),
        (1, version("m:b", "negative", start, None, ("outage",)), b"m:b"),
        (2, version("m:a", "positive", start, start + timedelta(seconds=20), ("fixed",)), b"m:a"),
        (3, version("m:a", "positive", start, start + timedelta(seconds=20), ("fixed",)), b"m:a"),
        (4, version("m:a", "negative", start, start + timedelta(seconds=10), ("outage",)), b"m:a"),
        (5, None, b"m:b"),
    ]
    return [
        Record(TOPIC, 0, o, v, key=k, view=read_enriched(v) if v is not None else None) for o, v, k in values
    ]


@pytest.mark.parametrize("shards", [1, 3])
def test_an_edit_moves_its_posts_counts_to_the_new_version_once(settings: Settings, shards: int) -> None:
    """#17: the latest sentiment is the one reported, the post counted once; the same edit twice, an
    older edit after a newer one, and a replay of it all change nothing. Counts keep the deleted post."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    stream = revision_stream(start)
    store, reader = stores(settings, shards)
    store.load([(TOPIC, 0)])
    store.apply(stream[:2], wall_ms=1)
    window = reader.window(3600)
    assert reader.sentiment("brand", ["Acme"], window)["Acme"] == {"negative": 2, "neutral": 0, "positive": 0}
    result = store.apply(stream[2:], wall_ms=2)
    assert result.plan.revised == 1
    assert reader.sentiment("brand", ["Acme"], window)["Acme"] == {"negative": 1, "neutral": 0, "positive": 1}
    assert dict(reader.top("hashtag", window, 10)) == {"outage": 1, "fixed": 1}  # b's #outage stays
    totals = reader.totals(window)
    assert (totals["n"], totals[f"s{SEP}positive"], totals[f"s{SEP}negative"]) == (2, 1, 1)
    again, _ = stores(settings, shards)  # a crash before the offsets were stored: all of it again
    again.load([(TOPIC, 0)])
    for record in stream:
        record.revision = None
    replay = again.apply(stream, wall_ms=3)
    assert replay.plan.counted == 0 and replay.plan.revised == 0
    assert reader.sentiment("brand", ["Acme"], window)["Acme"] == {"negative": 1, "neutral": 0, "positive": 1}


def test_a_crash_between_finding_a_revision_and_writing_it_revises_once(settings: Settings) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    stream = revision_stream(start)
    store, reader = stores(settings, shards=1)
    store.load([(TOPIC, 0)])
    store.apply(stream[:2], wall_ms=1)
    store.mark_duplicates(stream[2:])
    assert store.find_revisions(stream[2:], wall_ms=2) == 1  # found; the write never happened
    for record in stream:
        record.revision, record.duplicate = None, False
    assert store.apply(stream[2:], wall_ms=3).plan.revised == 1
    assert reader.sentiment("brand", ["Acme"], reader.window(3600))["Acme"]["positive"] == 1


@pytest.mark.parametrize(("revise", "keep_deleted"), [(False, True), (True, False)])
def test_what_edits_and_deletions_do_to_counts_is_a_setting(
    settings: Settings, revise: bool, keep_deleted: bool
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    client = redis_client.client(settings)
    keys = Keys(settings.redis.key_prefix, shards=2)
    store = RedisTrendStore(
        client, keys, lateness_ms=30_000, sample_size=5, sample_ttl_s=600,
        revise_counts=revise, count_deleted=keep_deleted,
    )  # fmt: skip
    reader = TrendReader(client, keys)
    store.load([(TOPIC, 0)])
    store.apply(revision_stream(start), wall_ms=1)
    window = reader.window(3600)
    mix = reader.sentiment("brand", ["Acme"], window)["Acme"]
    if revise:  # a edited to positive; b deleted and taken out of the counts
        assert mix == {"negative": 0, "neutral": 0, "positive": 1}
        assert reader.totals(window)["n"] == 1
        assert dict(reader.top("hashtag", window, 10)) == {"fixed": 1}
    else:  # counts keep a's first version and the deleted b
        assert mix == {"negative": 2, "neutral": 0, "positive": 0}
        assert reader.totals(window)["n"] == 2
        assert dict(reader.top("hashtag", window, 10)) == {"outage": 2}
