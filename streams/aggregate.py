"""A batch of enriched posts → one write per shard, pre-aggregated. Pure: no Redis, no Kafka.

Redis sees one increment per (bucket, term, field) per batch, never one per post. Which records a
shard's write includes is decided by offset: a record at or below the shard's applied offset for its
partition is already in that shard (a replay after a crash or a rebalance) and is left out, so
applying the same records twice changes nothing. Late records (see ``watermark``) are left out of
every count and returned for the dead-letter topic; undecodable ones too. Both still advance the
applied offset: a poison record never blocks its partition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from schemas import DecodeError
from schemas.views import EnrichedView
from streams.buckets import RESOLUTIONS, RETENTION_S, bucket_start
from streams.keys import SEP, Keys, shard_of
from streams.terms import WATCHED, post_terms
from streams.watermark import PartitionClock, advance, is_late


@dataclass(slots=True)
class Record:
    """One consumed record: its position, and its post (or why it has none)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    view: EnrichedView | None = None
    error: DecodeError | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What a shard holds for one input partition: the last applied offset and the partition's clock."""

    offset: int
    clock: PartitionClock | None


@dataclass(slots=True)
class ShardWrite:
    """Everything one Lua call applies to one shard for a batch."""

    # "topic:partition" -> (first offset of this write, last offset, latest event ms, wall ms)
    parts: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    zincr: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    hincr: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    pfadd: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # (index key, docs key) -> {post id: (event ms, JSON)}
    samples: dict[tuple[str, str], dict[str, tuple[int, bytes]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    ttl: dict[str, int] = field(default_factory=dict)
    posts: int = 0  # posts counted in this shard (shard 0 counts every post in its totals)

    @property
    def empty(self) -> bool:
        return not self.parts


@dataclass(slots=True)
class Plan:
    writes: dict[int, ShardWrite]
    clocks: dict[tuple[str, int], PartitionClock]  # every partition's clock after the batch
    late: list[Record]
    dead: list[Record]
    counted: int  # posts counted (in shard 0: every post not late, not dead, not already applied)
    skipped: int  # records every shard already had (replayed)


def part_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def plan_batch(
    records: Sequence[Record],
    applied: Mapping[int, Mapping[tuple[str, int], Applied]],
    keys: Keys,
    lateness_ms: int,
    wall_ms: int,
    sample_size: int,
    sample_ttl_s: int,
) -> Plan:
    """The per-shard writes for ``records`` (in consumption order) given what each shard holds."""
    shards = keys.shards
    writes = {s: ShardWrite() for s in range(shards)}
    clocks: dict[tuple[str, int], PartitionClock | None] = {}
    late: list[Record] = []
    dead: list[Record] = []
    counted = skipped = 0
    # Per partition: the lowest offset any shard still needs, and the clock as of that point.
    floor: dict[tuple[str, int], int] = {}
    for record in records:
        tp = (record.topic, record.partition)
        if tp not in floor:
            held = [applied.get(s, {}).get(tp) for s in range(shards)]
            offsets = [h.offset if h is not None else -1 for h in held]
            low = min(range(shards), key=offsets.__getitem__)
            floor[tp] = offsets[low]
            lowest = held[low]
            clocks[tp] = lowest.clock if lowest is not None else None
        if record.offset <= floor[tp]:
            skipped += 1
            continue
        in_shard = [
            s
            for s in range(shards)
            if record.offset > (h.offset if (h := applied.get(s, {}).get(tp)) is not None else -1)
        ]
        for s in in_shard:
            name = part_field(*tp)
            first = writes[s].parts[name][0] if name in writes[s].parts else record.offset
            writes[s].parts[name] = (first, record.offset, 0, wall_ms)  # clock filled in below
        view = record.view
        if view is None:
            dead.append(record)
            continue
        event_ms = int(view.post.created_at.timestamp() * 1000)
        clock = clocks[tp]
        if is_late(event_ms, clock.max_event_ms if clock else None, lateness_ms):
            late.append(record)
            continue
        clocks[tp] = advance(clock, event_ms, wall_ms)
        if 0 in in_shard:
            counted += 1
        _count(view, event_ms, in_shard, writes, keys, sample_size, sample_ttl_s)
    final = {tp: c for tp, c in clocks.items() if c is not None}
    for write in writes.values():
        for name, (first, last, _, seen) in list(write.parts.items()):
            topic, _, partition = name.rpartition(":")
            clock = final.get((topic, int(partition)))
            write.parts[name] = (first, last, clock.max_event_ms if clock else 0, seen)
    return Plan(writes, final, late, dead, counted, skipped)


def _count(
    view: EnrichedView,
    event_ms: int,
    in_shard: list[int],
    writes: dict[int, ShardWrite],
    keys: Keys,
    sample_size: int,
    sample_ttl_s: int,
) -> None:
    post = view.post
    label = view.sentiment.label
    platform, lang, author = post.platform, post.lang, post.author.id
    terms = post_terms(view)
    shards = keys.shards
    owners = [shard_of(kind, term, shards) for kind, term in terms]
    for res in RESOLUTIONS:
        bucket = bucket_start(event_ms, res)
        ttl = RETENTION_S[res]
        if 0 in in_shard:
            totals = keys.totals(res, bucket)
            w0 = writes[0]
            t = w0.hincr[totals]
            t["n"] += 1
            t[f"s{SEP}{label}"] += 1
            t[f"p{SEP}{platform}"] += 1
            t[f"l{SEP}{lang}"] += 1
            w0.ttl[totals] = ttl
        for (kind, term), shard in zip(terms, owners, strict=True):
            if shard not in in_shard:
                continue
            write = writes[shard]
            top = keys.top(shard, kind, res, bucket)
            mix = keys.mix(shard, kind, res, bucket)
            write.zincr[top][term] += 1
            write.hincr[mix][f"{term}{SEP}{label}"] += 1
            write.ttl[top] = write.ttl[mix] = ttl
            if kind not in WATCHED:
                continue
            watch = keys.watch(shard, kind, res, bucket)
            w = write.hincr[watch]
            w[f"{term}{SEP}p{SEP}{platform}"] += 1
            w[f"{term}{SEP}l{SEP}{lang}"] += 1
            authors = keys.authors(shard, kind, res, bucket, term)
            write.pfadd[authors].add(author)
            write.ttl[watch] = write.ttl[authors] = ttl
            co = [f"{k}{SEP}{t}" for k, t in terms if (k, t) != (kind, term)]
            if co:
                coterms = keys.coterms(shard, kind, res, bucket, term)
                z = write.zincr[coterms]
                for member in co:
                    z[member] += 1
                write.ttl[coterms] = ttl
    doc: bytes | None = None
    for (kind, term), shard in zip(terms, owners, strict=True):
        if kind not in WATCHED or shard not in in_shard:
            continue
        if doc is None:
            doc = sample_doc(view)
        write = writes[shard]
        index, docs = keys.sample_index(shard, kind, term), keys.sample_docs(shard, kind, term)
        held = write.samples[(index, docs)]
        held[post.id] = (event_ms, doc)
        if len(held) > 2 * sample_size:  # keep the batch's payload bounded: the newest win in Redis
            for stale in sorted(held, key=lambda pid: held[pid][0])[: len(held) - sample_size]:
                del held[stale]
        write.ttl[index] = write.ttl[docs] = sample_ttl_s
    for s in in_shard:
        writes[s].posts += 1


def sample_doc(view: EnrichedView) -> bytes:
    """A sample post as the store keeps it (and the API and alert evidence show it)."""
    post, sentiment = view.post, view.sentiment
    return orjson.dumps(
        {
            "id": post.id,
            "text": post.text,
            "sentiment": sentiment.label,
            "negative": round(sentiment.scores.get("negative", 0.0), 4),
            "positive": round(sentiment.scores.get("positive", 0.0), 4),
            "platform": post.platform,
            "author": post.author.handle,
            "created_at": post.created_at,
        },
        option=orjson.OPT_UTC_Z,
    )
