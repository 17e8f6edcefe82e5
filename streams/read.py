"""The trend store's read side: what the API, the dashboard and the detectors ask of Redis.

Reads merge the shards in the client. Top-k is exact: a shard holds all of its terms' counts, so
the global top-k is the top-k of the shards' top-k lists. A window is the sum of the buckets it
covers (``streams.buckets``): a top-k read is one Lua call per shard that unions at most 90 bucket
sets (170 for a week) and returns the k best, O(B·n + n log n) for B buckets of n terms; counts of
named terms are one ZMSCORE/HMGET per bucket, pipelined.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import redis

from schemas import SENTIMENT_LABELS, SentimentCounts, TrendTerm
from streams.aggregate import CO_RESOLUTIONS, SAMPLE_BUCKET_S
from streams.buckets import RESOLUTIONS, Window, window_ending
from streams.keys import SEP, Keys, shard_of
from streams.store import clocks_in
from streams.trending import trending
from streams.watermark import PartitionClock, watermark

if TYPE_CHECKING:
    from pulse.settings import TrendSettings

# KEYS[1]: scratch key in the shard's slot; KEYS[2..]: bucket sets. ARGV[1]: k; ARGV[2]: minimum count.
TOP = """
redis.call('ZUNIONSTORE', KEYS[1], #KEYS - 1, unpack(KEYS, 2))
local r = redis.call('ZRANGE', KEYS[1], '+inf', ARGV[2], 'BYSCORE', 'REV', 'LIMIT', 0, ARGV[1], 'WITHSCORES')
redis.call('DEL', KEYS[1])
return r
"""


@dataclass
class TermStats:
    """A term in a window: mentions and their sentiment labels."""

    term: str
    kind: str
    count: int
    sentiment: dict[str, int] = field(default_factory=dict)


@dataclass
class Summary:
    """A watched term (brand or keyword) in a window, with what explains its volume."""

    term: str
    kind: str
    count: int
    sentiment: dict[str, int]
    platforms: dict[str, int]
    languages: dict[str, int]
    authors: int
    co_terms: list[tuple[str, str, int]]  # (kind, term, posts with both)
    samples: list[dict[str, object]]


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected Redis reply {value!r}")


def _int(value: object) -> int:
    if value is None:
        return 0
    return int(float(value.decode() if isinstance(value, bytes) else value))  # type: ignore[arg-type]


class TrendReader:
    """Read-only access to the trend store (plus its alert and snapshot records)."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, lateness_ms: int = 30_000, idle_after_ms: int = 10_000
    ) -> None:
        self.client = client
        self.keys = keys
        self.lateness_ms = lateness_ms
        self.idle_after_ms = idle_after_ms
        self._top = client.register_script(TOP)

    # -- time -----------------------------------------------------------------------------------------
    def clocks(self) -> dict[str, PartitionClock]:
        return dict(clocks_in(self.client, self.keys))

    def latest_event_ms(self) -> int | None:
        clocks = self.clocks()
        return max((c.max_event_ms for c in clocks.values()), default=None)

    def watermark_ms(self, now_wall_ms: int | None = None) -> int | None:
        now = int(time.time() * 1000) if now_wall_ms is None else now_wall_ms
        return watermark(self.clocks(), now, self.lateness_ms, self.idle_after_ms)

    def now_s(self) -> int:
        """The store's "now": the latest event time seen (so replayed history reads as it happened),
        or the wall clock before any post arrived."""
        latest = self.latest_event_ms()
        return (latest // 1000 + 1) if latest is not None else int(time.time())

    def window(self, size_s: int, end_s: int | None = None) -> Window:
        """The window of ``size_s`` ending at ``end_s`` (default: now, including the current bucket)."""
        end = self.now_s() if end_s is None else end_s
        res = window_ending(end, size_s).res
        return Window(end=-(-end // res) * res, size=size_s, res=res)

    # -- counts ---------------------------------------------------------------------------------------
    def top(self, kind: str, window: Window, k: int, min_count: int = 1) -> list[tuple[str, int]]:
        """The ``k`` terms of ``kind`` with most mentions in ``window`` (at least ``min_count``)."""
        merged: list[tuple[str, int]] = []
        for shard in range(self.keys.shards):
            bucket_keys = [self.keys.top(shard, kind, window.res, b) for b in window.buckets()]
            raw = self._top(keys=[self.keys.scratch(shard, "top"), *bucket_keys], args=[k, min_count])
            merged += [(raw[i].decode(), _int(raw[i + 1])) for i in range(0, len(raw), 2)]
        merged.sort(key=lambda tc: (-tc[1], tc[0]))
        return merged[:k]

    def counts(self, kind: str, terms: Sequence[str], window: Window) -> dict[str, int]:
        """Mentions of each of ``terms`` in ``window`` (0 for a term never seen)."""
        per_bucket = self.bucket_counts(kind, terms, window.res, window.buckets())
        return {t: sum(per_bucket[t]) for t in terms}

    def bucket_counts(
        self, kind: str, terms: Sequence[str], res: int, buckets: Sequence[int]
    ) -> dict[str, list[int]]:
        """Mentions of each term in each bucket (oldest first)."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for term in terms:
            by_shard[shard_of(kind, term, self.keys.shards)].append(term)
        out = {t: [0] * len(buckets) for t in terms}
        if not terms or not buckets:
            return out
        pipe = self.client.pipeline(transaction=False)
        order = []
        for shard, members in by_shard.items():
            for i, b in enumerate(buckets):
                pipe.zmscore(self.keys.top(shard, kind, res, b), members)
                order.append((members, i))
        for (members, i), scores in zip(order, pipe.execute(), strict=True):
            for term, score in zip(members, scores, strict=True):
                if score:
                    out[term][i] = int(score)
        return out

    def sentiment(self, kind: str, terms: Sequence[str], window: Window) -> dict[str, dict[str, int]]:
        """Per term, mentions by sentiment label in ``window``: one HMGET per bucket and shard."""
        out: dict[str, dict[str, int]] = {t: dict.fromkeys(SENTIMENT_LABELS, 0) for t in terms}
        if not terms:
            return out
        by_shard: dict[int, list[str]] = defaultdict(list)
        for term in terms:
            by_shard[shard_of(kind, term, self.keys.shards)].append(term)
        pipe = self.client.pipeline(transaction=False)
        order = []
        for shard, members in by_shard.items():
            fields = [f"{term}{SEP}{label}" for term in members for label in SENTIMENT_LABELS]
            pairs = [(term, label) for term in members for label in SENTIMENT_LABELS]
            for b in window.buckets():
                pipe.hmget(self.keys.mix(shard, kind, window.res, b), fields)
                order.append(pairs)
        for pairs, values in zip(order, pipe.execute(), strict=True):
            for (term, label), value in zip(pairs, values, strict=True):
                if value is not None:
                    out[term][label] += _int(value)
        return out

    def history(self, kind: str, terms: Sequence[str], window: Window, count: int) -> dict[str, list[int]]:
        """Each term's mentions in the ``count`` windows of ``window``'s size before it, oldest first, read
        from the coarsest buckets that divide the size (1 h windows from 1 h buckets): a baseline needs
        the level, not the exact edges, so the past windows end at the last such bucket edge."""
        res = max(r for r in RESOLUTIONS if window.size % r == 0)
        end = window.start // res * res
        per_window = window.size // res
        buckets = list(range(end - count * window.size, end, res))
        counts = self.bucket_counts(kind, terms, res, buckets)
        return {
            term: [sum(values[i : i + per_window]) for i in range(0, len(values), per_window)]
            for term, values in counts.items()
        }

    def trending(
        self,
        kind: str,
        window: Window,
        *,
        k: int,
        candidates: int,
        baseline_windows: int,
        alpha: float,
        min_count: int,
        min_score: float,
    ) -> list[TrendTerm]:
        """The ``k`` terms of ``kind`` rising fastest in ``window`` against their own baseline."""
        counts = dict(self.top(kind, window, candidates, min_count=min_count))
        if not counts:
            return []
        history = self.history(kind, list(counts), window, baseline_windows)
        best = trending(counts, history, alpha=alpha, min_count=min_count, min_score=min_score, k=k)
        mix = self.sentiment(kind, [s.term for s in best], window)
        return [
            TrendTerm(
                term=s.term,
                kind=kind,
                count=s.count,
                baseline=s.baseline,
                score=s.score,
                sentiment=SentimentCounts(**{label: mix[s.term].get(label, 0) for label in SENTIMENT_LABELS}),
            )
            for s in best
        ]

    def trending_under(
        self, kinds: Sequence[str], window: Window, cfg: TrendSettings, k: int
    ) -> list[TrendTerm]:
        """``trending`` for each of ``kinds`` in turn (each best first), with the detectors' settings
        (``TRENDS__*``)."""
        terms: list[TrendTerm] = []
        for kind in kinds:
            terms += self.trending(
                kind,
                window,
                k=k,
                candidates=cfg.candidates,
                baseline_windows=cfg.baseline_windows,
                alpha=cfg.ewma_alpha,
                min_count=cfg.min_count,
                min_score=cfg.min_score,
            )
        return terms

    def top_terms(self, kind: str, window: Window, k: int) -> list[TermStats]:
        """Top-k with sentiment mix."""
        top = self.top(kind, window, k)
        mix = self.sentiment(kind, [t for t, _ in top], window)
        return [TermStats(t, kind, n, mix[t]) for t, n in top]

    def timeline(
        self, kind: str, term: str, window: Window, step_s: int
    ) -> list[tuple[int, int, dict[str, int]]]:
        """(step start, mentions, sentiment labels) for each ``step_s`` step of ``window``."""
        # The coarsest stored resolution whose buckets tile both the steps and the window's own start.
        res = max(
            (r for r in RESOLUTIONS if r >= window.res and step_s % r == 0 and window.start % r == 0),
            default=window.res,
        )
        steps = list(range(window.start, window.end, step_s))
        buckets = list(range(window.start, window.end, res))
        shard = shard_of(kind, term, self.keys.shards)
        pipe = self.client.pipeline(transaction=False)
        fields = [f"{term}{SEP}{label}" for label in SENTIMENT_LABELS]
        for b in buckets:
            pipe.zscore(self.keys.top(shard, kind, res, b), term)
            pipe.hmget(self.keys.mix(shard, kind, res, b), fields)
        answers = pipe.execute()
        counts = dict.fromkeys(steps, 0)
        labels: dict[int, dict[str, int]] = {s: dict.fromkeys(SENTIMENT_LABELS, 0) for s in steps}
        for i, b in enumerate(buckets):
            step = window.start + (b - window.start) // step_s * step_s
            counts[step] += _int(answers[2 * i])
            for label, value in zip(SENTIMENT_LABELS, answers[2 * i + 1], strict=True):
                labels[step][label] += _int(value)
        return [(s, counts[s], labels[s]) for s in steps]

    def totals(self, window: Window) -> dict[str, int]:
        """All posts in ``window``: ``posts``, and per sentiment label, platform and language."""
        pipe = self.client.pipeline(transaction=False)
        for b in window.buckets():
            pipe.hgetall(self.keys.totals(window.res, b))
        out: dict[str, int] = defaultdict(int)
        for fields in pipe.execute():
            for name, value in fields.items():
                out[name.decode()] += _int(value)
        return dict(out)

    def covered_s(self, window: Window) -> int:
        """Seconds of ``window`` the store has posts in (buckets with at least one post, times their width):
        a baseline read over a period the stream did not cover yet would look like silence."""
        pipe = self.client.pipeline(transaction=False)
        for b in window.buckets():
            pipe.hget(self.keys.totals(window.res, b), "n")
        return sum(window.res for n in pipe.execute() if n)

    def summary(self, kind: str, term: str, window: Window, co_terms: int = 10, samples: int = 10) -> Summary:
        """A watched term in ``window``: volume, sentiment, platforms, languages, reach, co-terms, samples."""
        shard = shard_of(kind, term, self.keys.shards)
        buckets = window.buckets()
        pipe = self.client.pipeline(transaction=False)
        for b in buckets:
            pipe.hgetall(self.keys.watch(shard, kind, window.res, b))
        watch = pipe.execute()
        platforms: dict[str, int] = defaultdict(int)
        languages: dict[str, int] = defaultdict(int)
        prefix = f"{term}{SEP}"
        for fields in watch:
            for name, value in fields.items():
                decoded = name.decode()
                if not decoded.startswith(prefix):
                    continue
                what, _, which = decoded[len(prefix) :].partition(SEP)
                (platforms if what == "p" else languages)[which] += _int(value)
        author_keys = [self.keys.authors(shard, kind, window.res, b, term) for b in buckets]
        authors = int(self.client.pfcount(*author_keys)) if author_keys else 0
        co_res = next(r for r in CO_RESOLUTIONS if r >= window.res)  # co-terms: per minute or per hour
        co_start, co_end = window.start // co_res * co_res, -(-window.end // co_res) * co_res
        co_keys = [self.keys.coterms(shard, kind, co_res, b, term) for b in range(co_start, co_end, co_res)]
        raw = self._top(keys=[self.keys.scratch(shard, "co"), *co_keys], args=[co_terms, 1])
        co = []
        for i in range(0, len(raw), 2):
            k, _, t = raw[i].decode().partition(SEP)
            co.append((k, t, _int(raw[i + 1])))
        return Summary(
            term=term,
            kind=kind,
            count=self.counts(kind, [term], window)[term],
            sentiment=self.sentiment(kind, [term], window)[term],
            platforms=dict(sorted(platforms.items(), key=lambda kv: -kv[1])),
            languages=dict(sorted(languages.items(), key=lambda kv: -kv[1])),
            authors=authors,
            co_terms=co,
            samples=self.samples(
                kind, term, limit=samples, since_ms=window.start * 1000, until_ms=window.end * 1000
            ),
        )

    def samples(
        self, kind: str, term: str, limit: int = 10, since_ms: int | None = None, until_ms: int | None = None
    ) -> list[dict[str, object]]:
        """Sample posts of a watched term from ``[since_ms, until_ms)`` (default: the hour before the newest
        event), newest first, at most ``limit``: read minute by minute from the end."""
        shard = shard_of(kind, term, self.keys.shards)
        until = until_ms if until_ms is not None else (self.now_s() * 1000)
        since = since_ms if since_ms is not None else until - 3_600_000
        minutes = list(range((until - 1) // 60_000 * 60, since // 60_000 * 60 - 1, -SAMPLE_BUCKET_S))
        out: list[dict[str, object]] = []
        for start in range(0, len(minutes), 15):  # 15 minutes a round trip, until enough are found
            chunk = minutes[start : start + 15]
            pipe = self.client.pipeline(transaction=False)
            for minute in chunk:
                pipe.zrange(
                    self.keys.sample_index(shard, kind, term, minute),
                    f"({until}",
                    since,
                    byscore=True,
                    desc=True,
                    offset=0,
                    num=limit - len(out),
                )
            found = [(m, ids) for m, ids in zip(chunk, pipe.execute(), strict=True) if ids]
            pipe = self.client.pipeline(transaction=False)
            for minute, ids in found:
                pipe.hmget(self.keys.sample_docs(shard, kind, term, minute), [_bytes(i) for i in ids])
            for docs in pipe.execute():
                out += [orjson.loads(d) for d in docs if d is not None]
                if len(out) >= limit:
                    return out[:limit]
        return out

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    # -- detectors' records ---------------------------------------------------------------------------
    def snapshot(self, window_s: int) -> bytes | None:
        """The latest published TrendSnapshot of a window size (wire bytes)."""
        value = self.client.get(self.keys.snapshot(window_s))
        return _bytes(value) if value is not None else None

    def alert_ids(self, since_s: int | None = None, limit: int = 100) -> list[str]:
        """Alert ids, newest window first (window end at or after ``since_s``)."""
        ids = self.client.zrange(
            self.keys.alert_index(),
            "+inf",
            "-inf" if since_s is None else since_s,
            byscore=True,
            desc=True,
            offset=0,
            num=limit,
        )
        return [_bytes(i).decode() for i in ids]

    def alerts(self, ids: Iterable[str]) -> list[bytes]:
        """The alerts' wire bytes, in the order asked (missing ones left out)."""
        ids = list(ids)
        if not ids:
            return []
        values = self.client.mget([self.keys.alert(i) for i in ids])
        return [_bytes(v) for v in values if v is not None]
