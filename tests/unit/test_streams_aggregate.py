"""Pre-aggregation of a batch into per-shard writes: what is counted, once, and what is left out."""

from __future__ import annotations

from datetime import timedelta

from schemas import DecodeError, Entity, Sentiment, WatchMatch, encode
from schemas.views import read_enriched
from streams.aggregate import Applied, Counted, Record, plan_batch
from streams.keys import SEP, Keys, shard_of
from streams.terms import KINDS, post_terms
from streams.watermark import PartitionClock
from tests.factories import T0, enriched_factory, post_factory

KEYS = Keys("p")
T0_MS = int(T0.timestamp() * 1000)


def record(offset: int, partition: int = 0, seconds: float = 0.0, **overrides: object) -> Record:
    post = post_factory(created_at=T0 + timedelta(seconds=seconds), hashtags=("acme", "deals"))
    value = encode(enriched_factory(post, **overrides))
    return Record("posts.enriched", partition, offset, value, view=read_enriched(value))


def plan(records: list[Record], applied: dict | None = None, keys: Keys = KEYS, lateness_ms: int = 30_000):
    return plan_batch(records, applied or {}, keys, lateness_ms, wall_ms=1, sample_size=5, sample_ttl_s=600)


def test_terms_are_hashtags_typed_entities_and_watched_matches_each_once_per_post() -> None:
    view = read_enriched(
        encode(
            enriched_factory(
                post_factory(hashtags=("acme", "acme", "deals")),
                entities=(
                    Entity(type="company", text="Acme", start=18, end=22, normalized="acme", score=0.9),
                    Entity(type="company", text="ACME", start=30, end=34, normalized="acme", score=0.9),
                ),
                matches=(
                    WatchMatch(term="Acme", kind="brand", text="#Acme", start=17, end=22),
                    WatchMatch(term="Acme", kind="brand", text="Acme", start=30, end=34),
                ),
            )
        )
    )
    assert post_terms(view) == [
        ("hashtag", "acme"), ("hashtag", "deals"), ("entity", "company:acme"), ("brand", "Acme"),
    ]  # fmt: skip


def test_a_batch_becomes_one_increment_per_bucket_term_and_field() -> None:
    p = plan([record(0), record(1, seconds=1), record(2, seconds=2)])
    write = p.writes[0]
    bucket = T0_MS // 1000 // 10 * 10
    assert write.zincr[KEYS.top(0, "hashtag", 10, bucket)] == {"acme": 3, "deals": 3}
    assert write.hincr[KEYS.mix(0, "brand", 10, bucket)] == {f"Acme{SEP}positive": 3}
    assert write.hincr[KEYS.totals(60, T0_MS // 1000 // 60 * 60)]["n"] == 3
    assert write.hincr[KEYS.watch(0, "brand", 10, bucket)][f"Acme{SEP}p{SEP}test"] == 3
    minute = T0_MS // 1000 // 60 * 60
    assert write.zincr[KEYS.coterms(0, "brand", 60, minute, "Acme")][f"hashtag{SEP}acme"] == 3
    assert KEYS.coterms(0, "brand", 10, bucket, "Acme") not in write.zincr  # co-terms: minutes and hours
    assert write.caps[KEYS.coterms(0, "brand", 60, minute, "Acme")] == 200  # the most frequent kept
    assert len(write.pfadd[KEYS.authors(0, "brand", 10, bucket, "Acme")]) == 3
    assert write.parts == {"posts.enriched:0": (0, 2, T0_MS + 2000, 1)}
    assert p.counted == 3 and not p.late and not p.dead


def test_records_a_shard_already_applied_are_left_out_of_that_shard_only() -> None:
    keys = Keys("p", shards=4)
    records = [record(i) for i in range(5)]
    tp = ("posts.enriched", 0)
    behind = {s: {tp: Applied(3, PartitionClock(T0_MS, 0))} for s in range(4)}
    behind[2] = {tp: Applied(1, PartitionClock(T0_MS, 0))}  # shard 2 lost the last write before a crash
    p = plan(records, behind, keys)
    for shard, write in p.writes.items():
        first = 2 if shard == 2 else 4
        assert write.parts["posts.enriched:0"][:2] == (first, 4), shard
    acme = shard_of("hashtag", "acme", 4)
    bucket = T0_MS // 1000 // 10 * 10
    assert p.writes[acme].zincr[keys.top(acme, "hashtag", 10, bucket)]["acme"] == (3 if acme == 2 else 1)
    assert p.counted == 1 and p.skipped == 2  # offsets 0 and 1: every shard had them


def test_a_replay_of_what_every_shard_holds_writes_nothing() -> None:
    records = [record(i) for i in range(3)]
    done = {0: {("posts.enriched", 0): Applied(2, PartitionClock(T0_MS, 0))}}
    p = plan(records, done)
    assert p.writes[0].empty and p.counted == 0 and p.skipped == 3


def test_late_and_undecodable_records_are_not_counted_but_their_offsets_advance() -> None:
    bad = Record("posts.enriched", 0, 2, b"{oops", error=DecodeError("EnrichedPost", "", "not valid JSON"))
    records = [record(0, seconds=100), record(1, seconds=75), bad, record(3, seconds=69.999)]
    p = plan(records, lateness_ms=30_000)
    assert [r.offset for r in p.late] == [3]  # 30.001 s behind the partition's latest event
    assert [r.offset for r in p.dead] == [2]
    assert p.counted == 2
    assert p.writes[0].parts["posts.enriched:0"][:3] == (0, 3, T0_MS + 100_000)


def test_sample_posts_of_watched_terms_are_kept_per_minute_newest_first_and_bounded() -> None:
    records = [
        record(i, seconds=50 + i, sentiment=Sentiment(label="negative", scores={"negative": 0.9}))
        for i in range(20)
    ]  # 12:00:50 to 12:01:09: two minutes
    samples = plan(records).writes[0].samples
    minute = T0_MS // 1000 // 60 * 60
    first = samples[
        (KEYS.sample_index(0, "brand", "Acme", minute), KEYS.sample_docs(0, "brand", "Acme", minute))
    ]
    later = samples[
        (
            KEYS.sample_index(0, "brand", "Acme", minute + 60),
            KEYS.sample_docs(0, "brand", "Acme", minute + 60),
        )
    ]
    assert len(first) == 5 and len(later) == 5  # the sample size, per minute: the newest of each
    assert sorted(ms for ms, _ in first.values()) == [T0_MS + s * 1000 for s in range(55, 60)]
    assert max(ms for ms, _ in later.values()) == T0_MS + 69_000


def test_a_seek_back_inside_one_batch_counts_each_offset_once() -> None:
    # After a rebalance (or the stall guard) seeks a partition back, records fetched before the seek
    # and the same offsets fetched again can arrive in one batch: each offset is counted once.
    records = [record(i) for i in (4, 5, 6, 7, 5, 6, 7, 8)]
    done = {0: {("posts.enriched", 0): Applied(3, PartitionClock(T0_MS, 0))}}
    p = plan(records, done)
    bucket = T0_MS // 1000 // 10 * 10
    assert p.writes[0].zincr[KEYS.top(0, "hashtag", 10, bucket)]["acme"] == 5
    assert p.counted == 5 and p.skipped == 3
    assert p.writes[0].parts["posts.enriched:0"][:2] == (4, 8)


def test_an_edit_advances_its_offset_but_is_not_counted_again() -> None:
    post = post_factory(created_at=T0, hashtags=("acme",), edited_at=T0 + timedelta(minutes=5))
    value = encode(enriched_factory(post))
    edit = Record("posts.enriched", 0, 1, value, view=read_enriched(value))
    p = plan([record(0), edit])
    assert p.counted == 1 and not p.late and not p.dead
    assert p.writes[0].parts["posts.enriched:0"][:2] == (0, 1)
    assert read_enriched(value).post.edited_at == T0 + timedelta(minutes=5)


def test_what_a_post_counted_survives_its_compact_form_for_every_kind() -> None:
    counted = Counted(1_700_000_000_123, "positive", "mastodon", "de", tuple((k, f"t {k}") for k in KINDS))
    assert Counted.loads(counted.dumps()) == counted
    assert len({k[0] for k in KINDS}) == len(KINDS)  # a kind is stored by its initial
