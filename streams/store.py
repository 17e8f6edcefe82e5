"""The trend store's write side: one Lua call per shard per batch, effectively once. The Redis shell.

The Lua script first checks, for every input partition in the write, that the shard's applied offset
is below the write's first offset; only then does it apply the increments, sample posts and TTLs and
record the new applied offset and partition clock, all in the one atomic call. A write that overlaps
what the shard already holds (a zombie after a rebalance, a stale cache) applies nothing and answers
``conflict``: the caller reloads the offsets and plans the batch again. So a record is counted in a
shard exactly once, whatever crashes, rebalances or replays happen around it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import orjson
import redis

from streams.aggregate import Applied, Counted, Plan, Record, ShardWrite, part_field, plan_batch
from streams.buckets import RESOLUTIONS, RETENTION_S
from streams.keys import SEP, Keys
from streams.watermark import PartitionClock

if TYPE_CHECKING:
    from pulse.settings import StreamsSettings

log = logging.getLogger("pulse.streams")

# KEYS[1]: the shard's offsets hash. ARGV[1]: the write as JSON (see _payload).
# Every other key it touches carries KEYS[1]'s hash tag (same cluster slot).
APPLY = """
local w = cjson.decode(ARGV[1])
local off = KEYS[1]
for _, part in ipairs(w.parts) do
  local stored = redis.call('HGET', off, part[1])
  if stored and tonumber(stored) >= part[2] then
    return {'conflict', part[1], stored}
  end
end
for _, z in ipairs(w.z) do
  local key, m = z[1], z[2]
  for i = 1, #m, 2 do redis.call('ZINCRBY', key, m[i + 1], m[i]) end
end
for _, h in ipairs(w.h) do
  local key, f = h[1], h[2]
  for i = 1, #f, 2 do redis.call('HINCRBY', key, f[i], f[i + 1]) end
end
for _, z in ipairs(w.zd) do
  local key, m = z[1], z[2]
  for i = 1, #m, 2 do
    if redis.call('ZSCORE', key, m[i]) then
      if tonumber(redis.call('ZINCRBY', key, m[i + 1], m[i])) <= 0 then redis.call('ZREM', key, m[i]) end
    end
  end
end
for _, h in ipairs(w.hd) do
  local key, f = h[1], h[2]
  for i = 1, #f, 2 do
    if redis.call('HEXISTS', key, f[i]) == 1 then
      if redis.call('HINCRBY', key, f[i], f[i + 1]) <= 0 then redis.call('HDEL', key, f[i]) end
    end
  end
end
for _, a in ipairs(w.pf) do
  local key, els = a[1], a[2]
  for i = 1, #els, 500 do redis.call('PFADD', key, unpack(els, i, math.min(i + 499, #els))) end
end
for _, s in ipairs(w.s) do
  local index, docs, cap, items = s[1], s[2], s[3], s[4]
  for i = 1, #items, 3 do
    redis.call('ZADD', index, items[i + 1], items[i])
    redis.call('HSET', docs, items[i], items[i + 2])
    local where = w.sp .. items[i]
    redis.call('SADD', where, index .. w.sep .. docs)
    redis.call('EXPIRE', where, w.spttl)
  end
  local n = redis.call('ZCARD', index)
  if n > cap then
    local old = redis.call('ZRANGE', index, 0, n - cap - 1)
    redis.call('ZREMRANGEBYRANK', index, 0, n - cap - 1)
    for i = 1, #old, 500 do redis.call('HDEL', docs, unpack(old, i, math.min(i + 499, #old))) end
  end
end
for _, c in ipairs(w.c) do
  local n = redis.call('ZCARD', c[1])
  if n > c[2] then redis.call('ZREMRANGEBYRANK', c[1], 0, n - c[2] - 1) end
end
for _, t in ipairs(w.t) do redis.call('EXPIRE', t[1], t[2]) end
for _, part in ipairs(w.parts) do
  redis.call('HSET', off, part[1], part[3], part[1] .. ':maxev', part[4], part[1] .. ':seen', part[5])
end
return {'ok'}
"""


# KEYS[1]: the shard's offsets hash (its slot). ARGV[1]: the sample-posts key prefix, ARGV[2]: the
# separator, ARGV[3...]: post ids. Removes each post from every sample of this shard that holds it.
FORGET = """
local removed = 0
for i = 3, #ARGV do
  local pid = ARGV[i]
  local where = ARGV[1] .. pid
  for _, both in ipairs(redis.call('SMEMBERS', where)) do
    local cut = string.find(both, ARGV[2], 1, true)
    local index, docs = string.sub(both, 1, cut - 1), string.sub(both, cut + #ARGV[2])
    removed = removed + redis.call('HDEL', docs, pid)
    redis.call('ZREM', index, pid)
  end
  redis.call('DEL', where)
end
return removed
"""


# KEYS[1]: the partition's marks prefix (its slot). ARGV[1]: that prefix, ARGV[2]: the marks' TTL (s),
# then (post digest, mark) pairs in consumption order, a mark being the offset, optionally followed by
# a space and what the post counted (``Counted.dumps``). Each post not marked yet is marked; returns
# the 1-based positions of the pairs whose post was first seen at another offset. A replay finds its
# own offsets, so checking a batch again (a crash before its write) changes nothing.
DEDUP = """
local dups = {}
for i = 3, #ARGV, 2 do
  local key, mark = ARGV[1] .. ARGV[i], ARGV[i + 1]
  if not redis.call('SET', key, mark, 'NX', 'EX', ARGV[2]) then
    local held = redis.call('GET', key)
    if held and string.match(held, '^%d+') ~= string.match(mark, '^%d+') then
      dups[#dups + 1] = (i - 1) / 2
    end
  end
end
return dups
"""


# KEYS[1]: the partition's marks prefix (its slot). ARGV[1]: that prefix, ARGV[2]: the TTL (s), then
# (post digest, offset, edited ms or -1 for a deletion, what the new version counts or '') quadruples
# in consumption order. A post's versions after its first are kept under ``<prefix>v:<digest>`` as a
# JSON list of [offset, edited ms, counted]. For each, answers what the version before this offset
# counted (the one to take out), or '' when nothing changes: the post is unknown (never seen, or its
# mark expired), it was deleted before, or this edit is not newer than the one before. A replay
# finds its own version and answers the same, so revising a batch again changes nothing.
REVISE = """
local out = {}
for i = 3, #ARGV, 4 do
  local digest, off, edited, counted = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  local mark = redis.call('GET', ARGV[1] .. digest)
  local answer = ''
  if mark then
    local first, first_counted = string.match(mark, '^(%d+) (.*)$')
    if first and tonumber(first) < off then
      local vkey = ARGV[1] .. 'v:' .. digest
      local raw = redis.call('GET', vkey)
      local versions = raw and cjson.decode(raw) or {}
      local before = {tonumber(first), -1, first_counted}
      local mine = false
      for _, v in ipairs(versions) do
        if v[1] < off and v[1] > before[1] then before = v end
        if v[1] == off then mine = true end
      end
      if before[3] ~= '' and (edited < 0 or before[2] < edited) then
        answer = before[3]
        if not mine then
          versions[#versions + 1] = {off, edited, counted}
          redis.call('SET', vkey, cjson.encode(versions), 'EX', ARGV[2])
        end
      end
    end
  end
  out[#out + 1] = answer
end
return out
"""


def post_digest(post_id: str) -> str:
    """64 bits of BLAKE2b of a post id: a mark's key (short, whatever the id's length)."""
    return hashlib.blake2b(post_id.encode(), digest_size=8).hexdigest()


class Conflict(RuntimeError):
    """A shard already holds records of this write: reload its offsets and plan again."""


def _payload(write: ShardWrite, sample_size: int, sample_posts: str, sample_ttl_s: int) -> bytes:
    return orjson.dumps(
        {
            "sp": sample_posts,
            "spttl": sample_ttl_s,
            "sep": SEP,
            "parts": [[name, *v] for name, v in write.parts.items()],
            # Increments; decrements (an edit's previous version, a deleted post) apply only where the
            # member is still there (a bucket or a trimmed co-term may have gone) and remove what
            # falls to zero.
            "z": [
                [key, [x for m, n in members.items() if n > 0 for x in (m, n)]]
                for key, members in write.zincr.items()
            ],
            "h": [
                [key, [x for f, n in fields.items() if n > 0 for x in (f, n)]]
                for key, fields in write.hincr.items()
            ],
            "zd": [
                [key, [x for m, n in members.items() if n < 0 for x in (m, n)]]
                for key, members in write.zincr.items()
                if any(n < 0 for n in members.values())
            ],
            "hd": [
                [key, [x for f, n in fields.items() if n < 0 for x in (f, n)]]
                for key, fields in write.hincr.items()
                if any(n < 0 for n in fields.values())
            ],
            "pf": [[key, sorted(els)] for key, els in write.pfadd.items()],
            "s": [
                [
                    index,
                    docs,
                    sample_size,
                    [x for pid, (ms, doc) in items.items() for x in (pid, ms, doc.decode())],
                ]
                for (index, docs), items in write.samples.items()
            ],
            "c": [[key, cap] for key, cap in write.caps.items()],
            "t": [[key, ttl] for key, ttl in write.ttl.items()],
        }
    )


@dataclass
class BatchResult:
    plan: Plan
    conflicts: int


class RedisTrendStore:
    """Applies batches to Redis and keeps, per shard and input partition, what Redis has applied.

    The cache (``applied``) is loaded with ``load`` for the partitions this process owns (on
    assignment) and updated after each successful write; Redis stays the source of truth, and a
    write planned from a stale cache is refused by the script (``Conflict``), never double-counted.
    """

    @classmethod
    def for_stage(cls, client: redis.Redis, keys: Keys, cfg: StreamsSettings) -> RedisTrendStore:
        """The store as the streams stage configures it (``STREAMS__*``)."""
        return cls(
            client,
            keys,
            lateness_ms=cfg.lateness_s * 1000,
            sample_size=cfg.sample_size,
            sample_ttl_s=cfg.sample_ttl_s,
            dedup_ttl_s=cfg.dedup_ttl_s,
            revise_counts=cfg.revise_counts,
            count_deleted=cfg.count_deleted,
        )

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        lateness_ms: int,
        sample_size: int,
        sample_ttl_s: int,
        dedup_ttl_s: int = 3600,
        revise_counts: bool = True,
        count_deleted: bool = True,
    ) -> None:
        self.client = client
        self.dedup_ttl_s = dedup_ttl_s
        # Edits move counts / deletions take them out: both need what each post counted, in its mark.
        self.revise_counts = revise_counts and dedup_ttl_s > 0
        self.uncount_deleted = not count_deleted and dedup_ttl_s > 0
        self.too_old = 0  # edits and deletions older than the finest buckets: counts left as they are
        self.keys = keys
        self.lateness_ms = lateness_ms
        self.sample_size = sample_size
        self.sample_ttl_s = sample_ttl_s
        self.applied: dict[int, dict[tuple[str, int], Applied]] = {s: {} for s in range(keys.shards)}
        # Where the stage last sought a partition: a batch may start there (see ``plan_batch``).
        self.starts: dict[tuple[str, int], int] = {}
        self._apply = client.register_script(APPLY)
        self._forget = client.register_script(FORGET)
        self._dedup = client.register_script(DEDUP)
        self._revise = client.register_script(REVISE)

    def load(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Read the shards' applied offsets for ``partitions``; the offset to resume each from (the
        lowest any shard needs: applied + 1), or None where no shard has applied anything yet."""
        tps = list(partitions)
        resume: dict[tuple[str, int], int | None] = {}
        if not tps:
            return resume
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            fields = [
                f
                for tp in tps
                for f in (part_field(*tp), f"{part_field(*tp)}:maxev", f"{part_field(*tp)}:seen")
            ]
            pipe.hmget(self.keys.offsets(shard), fields)
        answers = pipe.execute()
        for shard, values in enumerate(answers):
            held = self.applied[shard]
            for i, tp in enumerate(tps):
                offset, maxev, seen = values[3 * i : 3 * i + 3]
                if offset is None:
                    held.pop(tp, None)
                    continue
                clock = (
                    PartitionClock(int(maxev), int(seen)) if maxev is not None and int(maxev) > 0 else None
                )
                held[tp] = Applied(int(offset), clock)
        for tp in tps:
            offsets = [
                self.applied[s][tp].offset if tp in self.applied[s] else None for s in range(self.keys.shards)
            ]
            resume[tp] = (
                None if all(o is None for o in offsets) else min(-1 if o is None else o for o in offsets) + 1
            )
        return resume

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions this process no longer owns: their cache goes (a new owner reloads it)."""
        for tp in partitions:
            self.starts.pop(tp, None)
            for held in self.applied.values():
                held.pop(tp, None)

    def sought(self, targets: Mapping[tuple[str, int], int]) -> None:
        """The stage sought these partitions to these offsets: a batch may start there."""
        self.starts.update(targets)

    def resume_from(self, tp: tuple[str, int]) -> int | None:
        """The lowest applied offset over the shards, plus one; None if a shard has applied nothing."""
        held = [shard.get(tp) for shard in self.applied.values()]
        return None if any(h is None for h in held) else min(h.offset for h in held if h is not None) + 1

    def plan(self, records: Sequence[Record], wall_ms: int) -> Plan:
        return plan_batch(
            records,
            self.applied,
            self.keys,
            self.lateness_ms,
            wall_ms,
            self.sample_size,
            self.sample_ttl_s,
            self.starts,
        )

    def apply(
        self,
        records: Sequence[Record],
        wall_ms: int,
        before_write: Callable[[Plan], None] | None = None,
    ) -> BatchResult:
        """Count ``records`` (in consumption order) into every shard, exactly once.

        ``before_write`` sees each plan before anything is written (the stage delivers the plan's
        dead letters there, so a record's offset is applied only once its dead letter is safe). A
        plan that conflicts with what Redis holds is planned again after reloading the offsets (a
        conflict means another process wrote these partitions, which a rebalance makes rare).
        """
        conflicts = 0
        tps = {(r.topic, r.partition) for r in records}
        self.mark_duplicates(records)
        self.find_revisions(records, wall_ms)
        while True:
            plan = self.plan(records, wall_ms)
            if before_write is not None:
                before_write(plan)
            try:
                for shard, write in plan.writes.items():
                    if not write.empty:
                        self._write(shard, write)
                return BatchResult(plan, conflicts)
            except Conflict as exc:
                conflicts += 1
                if conflicts > 5:
                    raise
                log.warning(
                    "applied offsets moved under us: reloading",
                    extra={"stage": "streams", "detail": str(exc)},
                )
                self.load(tps)

    def mark_duplicates(self, records: Sequence[Record]) -> int:
        """Flag the records that are later copies of a post already seen on their partition (inference
        delivers at least once: a worker killed before storing its offsets publishes a batch again);
        how many. A post is recognised for ``dedup_ttl_s`` after its first copy; 0 turns this off.

        One Lua call per partition in the batch (the marks carry the partition's hash tag), pipelined.
        Records every shard already applied, deletions and edits are not checked.
        """
        if self.dedup_ttl_s <= 0:
            return 0
        by_partition = self._unapplied(
            records, lambda r: r.view is not None and r.view.post.edited_at is None
        )
        if not by_partition:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for partition, checked in by_partition.items():
            prefix = self.keys.post_marks(partition)
            pairs = [x for r in checked if r.view for x in (post_digest(r.view.post.id), self._mark(r))]
            self._dedup(keys=[prefix], args=[prefix, self.dedup_ttl_s, *pairs], client=pipe)
        found = 0
        for checked, positions in zip(by_partition.values(), pipe.execute(), strict=True):
            for position in positions:
                checked[int(position) - 1].duplicate = True
                found += 1
        return found

    def _mark(self, record: Record) -> str:
        """A post's duplicate mark: its offset, and what it counted where edits or deletions revise counts."""
        if (self.revise_counts or self.uncount_deleted) and record.view is not None:
            return f"{record.offset} {Counted.of(record.view).dumps()}"
        return str(record.offset)

    def _unapplied(
        self, records: Sequence[Record], wanted: Callable[[Record], bool]
    ) -> dict[int, list[Record]]:
        """``records`` that ``wanted`` picks and some shard has not applied yet, by partition."""
        by_partition: dict[int, list[Record]] = defaultdict(list)
        floors: dict[tuple[str, int], int] = {}
        for record in records:
            if not wanted(record):
                continue
            tp = (record.topic, record.partition)
            if tp not in floors:
                floors[tp] = min(
                    -1 if h is None else h.offset for h in (s.get(tp) for s in self.applied.values())
                )
            if record.offset > floors[tp]:
                by_partition[record.partition].append(record)
        return by_partition

    def find_revisions(self, records: Sequence[Record], wall_ms: int) -> int:
        """Set ``revision`` on the edits (``revise_counts``) and deletions (unless ``count_deleted``)
        that change counts: what the post counted so far, from its mark and versions. An edit or a
        deletion of a post not seen within ``dedup_ttl_s``, or older than the finest buckets keep,
        leaves the counts as they are. One Lua call per partition, pipelined; how many were found."""
        if not (self.revise_counts or self.uncount_deleted):
            return 0

        def wanted(r: Record) -> bool:
            if r.view is not None:
                return self.revise_counts and r.view.post.edited_at is not None
            return self.uncount_deleted and r.value is None and r.key is not None

        by_partition = self._unapplied(records, wanted)
        if not by_partition:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for partition, checked in by_partition.items():
            prefix = self.keys.post_marks(partition)
            args: list[str | int] = [prefix, self.dedup_ttl_s]
            for r in checked:
                if r.view is not None:
                    edited = r.view.post.edited_at
                    assert edited is not None
                    args += [post_digest(r.view.post.id), r.offset, int(edited.timestamp() * 1000),
                             Counted.of(r.view).dumps()]  # fmt: skip
                else:
                    assert r.key is not None
                    args += [post_digest(r.key.decode(errors="replace")), r.offset, -1, ""]
            self._revise(keys=[prefix], args=args, client=pipe)
        oldest_ms = wall_ms - (RETENTION_S[RESOLUTIONS[0]] - 600) * 1000
        found = 0
        for checked, answers in zip(by_partition.values(), pipe.execute(), strict=True):
            for record, answer in zip(checked, answers, strict=True):
                if not answer:
                    continue
                before = Counted.loads(answer)
                if before.event_ms < oldest_ms:
                    self.too_old += 1
                    continue
                record.revision = (before, Counted.of(record.view) if record.view is not None else None)
                found += 1
        return found

    def forget_posts(self, post_ids: Sequence[str]) -> int:
        """Remove deleted posts from every sample that holds them (idempotent); how many were held."""
        if not post_ids:
            return 0
        removed = 0
        for shard in range(self.keys.shards):
            removed += int(
                self._forget(
                    keys=[self.keys.offsets(shard)],
                    args=[self.keys.sample_posts(shard, ""), SEP, *post_ids],
                )
            )
        return removed

    def revise_posts(self, docs: Mapping[str, bytes]) -> int:
        """Edited posts: each sample that holds a post (``docs``: post id -> its sample JSON, see
        ``aggregate.sample_doc``) shows this version unless it already shows a newer one; how many
        samples changed. Only the owner of the post's partition writes its samples, so read, compare
        and write need no script."""
        revised = 0
        for shard in range(self.keys.shards):
            pids = list(docs)
            pipe = self.client.pipeline(transaction=False)
            for pid in pids:
                pipe.smembers(self.keys.sample_posts(shard, pid))
            held = []  # (pid, docs key) per sample that holds the post
            for pid, members in zip(pids, pipe.execute(), strict=True):
                for both in members:
                    _index, _, docs_key = _text(both).partition(SEP)
                    held.append((pid, docs_key))
            if not held:
                continue
            pipe = self.client.pipeline(transaction=False)
            for pid, docs_key in held:
                pipe.hget(docs_key, pid)
            writes = self.client.pipeline(transaction=False)
            for (pid, docs_key), current in zip(held, pipe.execute(), strict=True):
                if current is None:
                    continue  # trimmed from that sample since
                shown = orjson.loads(current).get("edited_at")
                new = orjson.loads(docs[pid]).get("edited_at")
                if shown is not None and new is not None and _utc(shown) >= _utc(new):
                    continue
                writes.hset(docs_key, pid, docs[pid])
                revised += 1
            writes.execute()
        return revised

    def _write(self, shard: int, write: ShardWrite) -> None:
        payload = _payload(write, self.sample_size, self.keys.sample_posts(shard, ""), self.sample_ttl_s)
        answer = self._apply(keys=[self.keys.offsets(shard)], args=[payload])
        status = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        if status == "conflict":
            raise Conflict(f"shard {shard} {answer[1]!r} already at {answer[2]!r}")
        held = self.applied[shard]
        for name, (_first, last, maxev, seen) in write.parts.items():
            topic, _, partition = name.rpartition(":")
            held[(topic, int(partition))] = Applied(last, PartitionClock(maxev, seen) if maxev else None)


def _utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def clocks_in(client: redis.Redis, keys: Keys) -> Mapping[str, PartitionClock]:
    """Every input partition's clock as the shards recorded it (the newest per partition)."""
    out: dict[str, PartitionClock] = {}
    for shard in range(keys.shards):
        raw = client.hgetall(keys.offsets(shard))
        fields = {_text(k): _text(v) for k, v in raw.items()}
        for name, value in fields.items():
            if not name.endswith(":maxev"):
                continue
            part = name[: -len(":maxev")]
            seen = int(fields.get(f"{part}:seen", "0"))
            clock = PartitionClock(int(value), seen)
            if int(value) > 0 and (part not in out or out[part].seen_wall_ms < seen):
                out[part] = clock
    return out
