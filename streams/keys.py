"""The Redis key scheme of the trend store: one place that names every key (see docs/streams.md).

Every key starts with ``REDIS__KEY_PREFIX``. Counts live in *shards*: a term's keys all carry the hash
tag of its shard (``{s3}``), chosen by a stable hash of (kind, term), and each shard has its own
applied-offsets hash with the same tag. One Lua call per batch per shard touches only keys of that
shard, so the scheme runs unchanged on Redis Cluster (one slot per shard); reads that span terms
(top-k) merge the shards in the client, exactly, because shards hold disjoint terms. Totals (all
posts) live in shard 0. ``STREAMS__SHARDS`` is 1 by default: everything in one slot.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

SEP = "\x1f"  # between the parts of a hash field or sorted-set member: terms may hold ':' or '|'
_KIND = {"hashtag": "h", "entity": "e", "brand": "b", "keyword": "k"}


def shard_of(kind: str, term: str, shards: int) -> int:
    """The shard that owns a term (stable across processes and restarts: crc32, not ``hash()``)."""
    return zlib.crc32(f"{kind}{SEP}{term}".encode()) % shards if shards > 1 else 0


@functools.lru_cache(maxsize=4096)
def _tag(prefix: str, shard: int) -> str:
    return f"{prefix}:{{s{shard}}}"


@dataclass(frozen=True)
class Keys:
    prefix: str
    shards: int = 1

    def tag(self, shard: int) -> str:
        return _tag(self.prefix, shard)

    # -- per shard: written by the streams stage, one Lua call per batch ---------------------------
    def offsets(self, shard: int) -> str:
        """HASH ``<topic>:<partition>`` → last applied offset, ``…:maxev`` / ``…:seen`` → clocks (ms)."""
        return f"{self.tag(shard)}:off"

    def top(self, shard: int, kind: str, res: int, bucket: int) -> str:
        """ZSET term → mentions in one bucket."""
        return f"{self.tag(shard)}:z:{_KIND[kind]}:{res}:{bucket}"

    def mix(self, shard: int, kind: str, res: int, bucket: int) -> str:
        """HASH ``term SEP label`` → mentions with that sentiment label in one bucket."""
        return f"{self.tag(shard)}:m:{_KIND[kind]}:{res}:{bucket}"

    def watch(self, shard: int, kind: str, res: int, bucket: int) -> str:
        """HASH ``term SEP p SEP platform`` / ``term SEP l SEP lang`` → mentions (watched kinds only)."""
        return f"{self.tag(shard)}:w:{_KIND[kind]}:{res}:{bucket}"

    def authors(self, shard: int, kind: str, res: int, bucket: int, term: str) -> str:
        """HyperLogLog of the distinct authors of a watched term in one bucket."""
        return f"{self.tag(shard)}:a:{_KIND[kind]}:{res}:{bucket}:{term}"

    def coterms(self, shard: int, kind: str, res: int, bucket: int, term: str) -> str:
        """ZSET ``kind SEP term`` → posts that mention both, for a watched term in one bucket."""
        return f"{self.tag(shard)}:c:{_KIND[kind]}:{res}:{bucket}:{term}"

    def totals(self, res: int, bucket: int) -> str:
        """HASH of all posts in a bucket: ``n``, ``s SEP label``, ``p SEP platform``, ``l SEP lang``."""
        return f"{self.tag(0)}:t:{res}:{bucket}"

    def sample_index(self, shard: int, kind: str, term: str, minute: int) -> str:
        """ZSET post id → event time (ms) of a watched term's posts in one minute (bounded, newest kept)."""
        return f"{self.tag(shard)}:sz:{_KIND[kind]}:{minute}:{term}"

    def sample_docs(self, shard: int, kind: str, term: str, minute: int) -> str:
        """HASH post id → the sample post (JSON: id, text, sentiment, platform, author handle, time)."""
        return f"{self.tag(shard)}:sd:{_KIND[kind]}:{minute}:{term}"

    def sample_posts(self, shard: int, post_id: str) -> str:
        """SET ``index SEP docs``: the sample keys of this shard that hold a post (where a deletion of
        the post removes it from); expires with the samples."""
        return f"{self.tag(shard)}:sp:{post_id}"

    def post_marks(self, partition: int) -> str:
        """Key prefix of the duplicate marks of one input partition (hash tag ``{d<partition>}``):
        ``<prefix><post digest>`` → STRING, the offset the post was first seen at; expires after
        ``STREAMS__DEDUP_TTL_S``."""
        return f"{self.prefix}:{{d{partition}}}:u:"

    def scratch(self, shard: int, name: str) -> str:
        """A temporary key in a shard's slot, for a read that merges buckets server-side."""
        return f"{self.tag(shard)}:tmp:{name}"

    # -- outside the shards: single-key operations, written by the detectors -----------------------
    def alert_index(self) -> str:
        """ZSET alert id → window end (epoch s) of every alert kept."""
        return f"{self.prefix}:alerts"

    def alert(self, alert_id: str) -> str:
        """STRING: the alert's JSON, as published."""
        return f"{self.prefix}:alert:{alert_id}"

    def alerts_with(self, post_id: str) -> str:
        """SET of the alert ids whose evidence shows a post (a deletion re-publishes them without it)."""
        return f"{self.prefix}:ap:{post_id}"

    def cooldown(self, kind: str, subject_kind: str, subject: str) -> str:
        """STRING: window end (epoch s) of the subject's last alert of this kind."""
        return f"{self.prefix}:cool:{kind}:{_KIND[subject_kind]}:{subject}"

    def snapshot(self, window_s: int) -> str:
        """STRING: the latest TrendSnapshot of a window size, as published."""
        return f"{self.prefix}:trends:{window_s}"

    def events(self) -> str:
        """STREAM of published snapshots and alerts (``type``, ``data``), capped: server-sent events."""
        return f"{self.prefix}:events"

    def detector_state(self) -> str:
        """HASH: the detectors' progress (last window end evaluated per window size)."""
        return f"{self.prefix}:detect"
