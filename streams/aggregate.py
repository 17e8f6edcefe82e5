"""A batch of enriched posts → one write per shard, pre-aggregated. Pure: no Redis, no Kafka.

Redis sees one increment per (bucket, term, field) per batch, never one per post. Which records a
shard's write includes is decided by offset: a record at or below the shard's applied offset for its
partition is already in that shard (a replay after a crash or a rebalance) and is left out, so
applying the same records twice changes nothing. A record flagged ``duplicate`` (a second copy of a
post at a later offset, found by the store before planning) advances its offset and is not counted.
Late records (see ``watermark``) are left out of
every count and returned for the dead-letter topic; undecodable ones too. Both still advance the
applied offset: a poison record never blocks its partition.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from schemas import DecodeError
from schemas.views import EnrichedView
from streams.buckets import RESOLUTIONS, RETENTION_S
from streams.keys import SEP, Keys, shard_of
from streams.terms import KINDS, WATCHED, post_terms
from streams.watermark import PartitionClock, advance, is_late


@dataclass(frozen=True, slots=True)
class Counted:
    """What one version of a post counts towards: kept with its duplicate mark, so an edit can move the
    post's counts to its new version and a deletion can take them out (``STREAMS__REVISE_COUNTS``,
    ``STREAMS__COUNT_DELETED``). Authors are not in it: a distinct-author sketch cannot forget one."""

    event_ms: int
    label: str
    platform: str
    lang: str
    terms: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, view: EnrichedView) -> Counted:
        post = view.post
        event_ms = int(post.created_at.timestamp() * 1000)
        return cls(event_ms, view.sentiment.label, post.platform, post.lang, tuple(post_terms(view)))

    def dumps(self) -> str:
        """Compact JSON (a kind by its initial: h, e, b, k), kept for every post while revisions are on."""
        flat = [x for kind, term in self.terms for x in (kind[0], term)]
        return orjson.dumps([self.event_ms, self.label, self.platform, self.lang, flat]).decode()

    @classmethod
    def loads(cls, text: str | bytes) -> Counted:
        event_ms, label, platform, lang, flat = orjson.loads(text)
        terms = tuple((_KIND_OF[k], t) for k, t in zip(flat[::2], flat[1::2], strict=True))
        return cls(int(event_ms), label, platform, lang, terms)


_KIND_OF = {kind[0]: kind for kind in KINDS}  # distinct initials: test_streams_aggregate checks it


# An edit or a deletion as the counts see it: the version counted so far, and the one to count instead
# (None: deleted). Set by ``RedisTrendStore.find_revisions`` before planning.
Revision = tuple[Counted, Counted | None]


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
    duplicate: bool = False  # a later copy of a post already counted (``RedisTrendStore.mark_duplicates``)
    revision: Revision | None = None  # an edit or a deletion that changes the counts


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
    caps: dict[str, int] = field(
        default_factory=dict
    )  # sorted sets trimmed to their top n after the increments
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
    duplicates: int = 0  # later copies of posts already counted: their offsets advance, nothing else
    # Partitions whose records do not continue where their applied offset ends (records that never
    # reached the stage): from the first missing offset on, nothing of them is planned; seek them
    # back to the offset given.
    gaps: dict[tuple[str, int], int] = field(default_factory=dict)
    revised: int = 0  # edits and deletions whose counts were moved or taken out


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
    starts: Mapping[tuple[str, int], int] | None = None,
) -> Plan:
    """The per-shard writes for ``records`` (in consumption order) given what each shard holds.

    A partition is read as a contiguous log: its next record must be at its applied offset + 1, or
    at ``starts[partition]`` (where the stage sought it: the log's start for a partition nothing was
    counted of, or past records retention deleted). A record further on means records in between
    never reached the stage; the partition is left out from there and named in ``Plan.gaps``.
    """
    starts = starts or {}
    gaps: dict[tuple[str, int], int] = {}
    shards = keys.shards
    all_shards = list(range(shards))
    acc = {s: _Acc() for s in all_shards}
    writes = {s: ShardWrite() for s in all_shards}
    clocks: dict[tuple[str, int], PartitionClock | None] = {}
    late: list[Record] = []
    dead: list[Record] = []
    counted = skipped = duplicates = revised = 0
    # Per partition: each shard's applied offset, the lowest of them, and the clock as of that point.
    held_by: dict[tuple[str, int], list[int]] = {}
    floor: dict[tuple[str, int], int] = {}
    uniform: dict[tuple[str, int], bool] = {}
    for record in records:
        tp = (record.topic, record.partition)
        if tp not in floor:
            held = [applied.get(s, {}).get(tp) for s in all_shards]
            offsets = [h.offset if h is not None else -1 for h in held]
            low = min(all_shards, key=offsets.__getitem__)
            held_by[tp], floor[tp], uniform[tp] = offsets, offsets[low], len(set(offsets)) == 1
            lowest = held[low]
            clocks[tp] = lowest.clock if lowest is not None else None
        if tp in gaps:
            continue
        offset = record.offset
        if offset <= floor[tp]:
            skipped += 1
            continue
        expected = floor[tp] + 1 if floor[tp] >= 0 else starts.get(tp)
        if expected is not None and offset != expected and offset != starts.get(tp):
            gaps[tp] = expected
            continue
        # A seek back (a rebalance, the stall guard) can put an offset in the batch twice: the
        # floor rises with every record planned, so the second copy is a replay like any other.
        floor[tp] = offset
        in_shard = all_shards if uniform[tp] else [s for s in all_shards if offset > held_by[tp][s]]
        name = part_field(*tp)
        for s in in_shard:
            parts = writes[s].parts
            parts[name] = (parts[name][0] if name in parts else offset, offset, 0, wall_ms)  # clock below
        view = record.view
        if view is None:
            if record.value is not None:  # no value: a deletion (removed from samples after the write)
                dead.append(record)
            elif record.revision is not None:
                revised += 1
                _revise(record.revision, in_shard, acc, shards)
            continue
        if view.post.edited_at is not None:
            # An edit: counted when first posted (its samples are revised after the write); its counts
            # move to the new version where the store found the one counted so far.
            if record.revision is not None:
                revised += 1
                _revise(record.revision, in_shard, acc, shards)
            continue
        if record.duplicate:
            duplicates += 1  # inference delivers at least once: the first copy was counted
            continue
        event_ms = int(view.post.created_at.timestamp() * 1000)
        clock = clocks[tp]
        if is_late(event_ms, clock.max_event_ms if clock else None, lateness_ms):
            late.append(record)
            continue
        clocks[tp] = advance(clock, event_ms, wall_ms)
        if in_shard is all_shards or 0 in in_shard:
            counted += 1
        _count(view, event_ms, in_shard, acc, shards, sample_size)
    for shard, write in writes.items():
        _roll_up(acc[shard], write, shard, keys, sample_size, sample_ttl_s)
    final = {tp: c for tp, c in clocks.items() if c is not None}
    for write in writes.values():
        for name, (first, last, _, seen) in list(write.parts.items()):
            topic, _, partition = name.rpartition(":")
            clock = final.get((topic, int(partition)))
            write.parts[name] = (first, last, clock.max_event_ms if clock else 0, seen)
    return Plan(writes, final, late, dead, counted, skipped, duplicates, gaps, revised)


@dataclass(slots=True)
class _Acc:
    """One shard's counts for a batch at the finest bucket width, before they are rolled up.

    Keys are tuples of plain values, one Counter increment per post per structure: the field names and
    every wider bucket are made once per batch, in ``_roll_up``.
    """

    totals: Counter[tuple[int, str, str, str]] = field(
        default_factory=Counter
    )  # bucket, label, platform, lang
    mix: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)  # kind, term, bucket, label
    watch: Counter[tuple[str, str, int, str, str]] = field(default_factory=Counter)  # ..., platform, lang
    co: Counter[tuple[str, str, int, str, str]] = field(default_factory=Counter)  # ..., co-term kind, term
    authors: dict[tuple[str, str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    # (kind, term, minute) -> {post id: (event ms, post)}
    samples: dict[tuple[str, str, int], dict[str, tuple[int, EnrichedView]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    posts: int = 0


_FINE = RESOLUTIONS[0]
# Co-occurring terms of watched terms: per-minute and per-hour buckets only, and at most this many
# co-terms per bucket (the most frequent): enough for evidence and summaries, bounded in memory.
CO_RESOLUTIONS: tuple[int, ...] = (60, 3600)
CO_RETENTION_S: dict[int, int] = {60: 2 * 3600 + 600, 3600: 8 * 86400}
CO_TERMS_KEPT = 200
# Sample posts are kept per watched term and minute (up to STREAMS__SAMPLE_SIZE each, the newest): a
# window's evidence is found whenever it is read, however busy the term was after it.
SAMPLE_BUCKET_S = 60


def _count(
    view: EnrichedView,
    event_ms: int,
    in_shard: list[int],
    acc: dict[int, _Acc],
    shards: int,
    sample_size: int,
) -> None:
    """One post into the fine-bucket accumulators of the shards that need it."""
    post = view.post
    terms = post_terms(view)
    _tally(view.sentiment.label, post.platform, post.lang, event_ms, terms, 1, in_shard, acc, shards)
    minute = (event_ms // 1000) // SAMPLE_BUCKET_S * SAMPLE_BUCKET_S
    bucket = (event_ms // 1000) // _FINE * _FINE
    for kind, term in terms:
        if kind not in WATCHED:
            continue
        shard = shard_of(kind, term, shards) if shards > 1 else 0
        if shard not in in_shard:
            continue
        a = acc[shard]
        a.authors[(kind, term, bucket)].add(post.author.id)
        held = a.samples[(kind, term, minute)]
        held[post.id] = (event_ms, view)
        if len(held) > 4 * sample_size:  # bounded while counting; the newest are chosen in _roll_up
            for stale in heapq.nsmallest(len(held) - sample_size, held, key=lambda pid: held[pid][0]):
                del held[stale]
    for s in in_shard:
        acc[s].posts += 1


def _tally(
    label: str,
    platform: str,
    lang: str,
    event_ms: int,
    terms: Sequence[tuple[str, str]],
    sign: int,
    in_shard: list[int],
    acc: dict[int, _Acc],
    shards: int,
) -> None:
    """A post's counts (totals, sentiment mix, watched platforms and languages, co-terms), added
    (``sign`` 1) or taken out again (-1: an edit's previous version, a deleted post)."""
    bucket = (event_ms // 1000) // _FINE * _FINE
    if in_shard[0] == 0:
        acc[0].totals[(bucket, label, platform, lang)] += sign
    for kind, term in terms:
        shard = shard_of(kind, term, shards) if shards > 1 else 0
        if shard not in in_shard:
            continue
        a = acc[shard]
        a.mix[(kind, term, bucket, label)] += sign
        if kind not in WATCHED:
            continue
        a.watch[(kind, term, bucket, platform, lang)] += sign
        co = a.co
        for k, t in terms:
            if t != term or k != kind:
                co[(kind, term, bucket, k, t)] += sign


def _revise(revision: Revision, in_shard: list[int], acc: dict[int, _Acc], shards: int) -> None:
    """An edit or a deletion into the counts: the version counted so far out, the new one (if any) in."""
    before, after = revision
    _tally(
        before.label, before.platform, before.lang, before.event_ms, before.terms, -1, in_shard, acc, shards
    )
    if after is not None:
        _tally(
            after.label, after.platform, after.lang, before.event_ms, after.terms, 1, in_shard, acc, shards
        )


class _KeyCache:
    """Bucket keys of one shard and width, each formatted once per batch (a handful, used per entry)."""

    def __init__(self, keys: Keys, shard: int, res: int, ttl: dict[str, int], keep: int) -> None:
        self.keys, self.shard, self.res, self.ttl, self.keep = keys, shard, res, ttl, keep
        self.names: dict[tuple[str, str, int], str] = {}

    def get(self, structure: str, kind: str, bucket: int) -> str:
        name = self.names.get((structure, kind, bucket))
        if name is None:
            name = getattr(self.keys, structure)(self.shard, kind, self.res, bucket)
            self.names[(structure, kind, bucket)] = name
            self.ttl[name] = self.keep
        return name


def _roll_up(a: _Acc, write: ShardWrite, shard: int, keys: Keys, sample_size: int, sample_ttl_s: int) -> None:
    """The shard's fine-bucket counts, summed into every bucket width, as the write's increments."""
    write.posts = a.posts
    zincr, hincr, ttl, pfadd = write.zincr, write.hincr, write.ttl, write.pfadd
    for res in RESOLUTIONS:
        keep = RETENTION_S[res]
        key = _KeyCache(keys, shard, res, ttl, keep)
        if shard == 0:
            for (bucket, label, platform, lang), n in a.totals.items():
                name = keys.totals(res, bucket // res * res)
                fields = hincr[name]
                fields["n"] += n
                fields[f"s{SEP}{label}"] += n
                fields[f"p{SEP}{platform}"] += n
                fields[f"l{SEP}{lang}"] += n
                ttl[name] = keep
        for (kind, term, bucket, label), n in a.mix.items():
            b = bucket // res * res
            zincr[key.get("top", kind, b)][term] += n
            hincr[key.get("mix", kind, b)][f"{term}{SEP}{label}"] += n
        for (kind, term, bucket, platform, lang), n in a.watch.items():
            fields = hincr[key.get("watch", kind, bucket // res * res)]
            fields[f"{term}{SEP}p{SEP}{platform}"] += n
            fields[f"{term}{SEP}l{SEP}{lang}"] += n
        for (kind, term, bucket), authors in a.authors.items():
            name = keys.authors(shard, kind, res, bucket // res * res, term)
            pfadd[name] |= authors
            ttl[name] = keep
        if res in CO_RESOLUTIONS:
            for (kind, term, bucket, k, t), n in a.co.items():
                name = keys.coterms(shard, kind, res, bucket // res * res, term)
                zincr[name][f"{k}{SEP}{t}"] += n
                ttl[name] = CO_RETENTION_S[res]
                write.caps[name] = CO_TERMS_KEPT
    for (kind, term, minute), held in a.samples.items():
        index = keys.sample_index(shard, kind, term, minute)
        docs = keys.sample_docs(shard, kind, term, minute)
        newest = heapq.nlargest(sample_size, held.items(), key=lambda item: item[1][0])
        write.samples[(index, docs)] = {pid: (ms, sample_doc(view)) for pid, (ms, view) in newest}
        ttl[index] = ttl[docs] = sample_ttl_s


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
            "edited_at": post.edited_at,
        },
        option=orjson.OPT_UTC_Z,
    )
