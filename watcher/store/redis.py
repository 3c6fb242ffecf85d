"""Redis StateStore: shared by several replicas, every write an atomic Lua script.

Layout under the prefix P (job ids cannot hold ":", so keys never collide):
  P:job:<id>          hash, one job           P:dlv:<id>         hash, one delivery
  P:jobs:due          zset of unfinished jobs P:dlvs:due         zset of pending deliveries
  P:jobs:added        zset by added_at        P:dlvs:all         zset by created_at
  P:jobs:final        zset by detected_at     P:dlvs:job:<id>    set of a job's deliveries
  P:counts            hash of totals by state P:meta, P:schema   bookkeeping

A due score is next_poll_at (next_attempt_at) while the record is free and the
lease expiry while it is claimed, so "due and unclaimed" is one ZRANGEBYSCORE
and an expired lease simply becomes due again for any replica. Scripts build
record keys from the prefix; for Redis Cluster use a hash-tagged prefix such as
"{import-watcher}" so every key lands in one slot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from watcher.errors import StoreUnavailable, WatcherError
from watcher.models import (
    WATCHING,
    Delivery,
    DeliveryState,
    JobRef,
    JobState,
    Outcome,
    PollUpdate,
    Snapshot,
    StoreCounts,
)

SCHEMA_VERSION = 1
# Server replies that mean "not now" (failover, full memory, loading), not a bug.
_TRANSIENT_REPLIES = frozenset({"READONLY", "OOM", "LOADING", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN"})
_CHUNK = 500  # records per pipeline or script call: bounded latency for other clients

# Shared by every script. ARGV[1] is always the prefix; KEYS[1] (P:jobs:due) only routes.
_LIB = """
local P = ARGV[1]
local JDUE, JADDED, JFINAL = P..':jobs:due', P..':jobs:added', P..':jobs:final'
local DDUE, DALL, COUNTS = P..':dlvs:due', P..':dlvs:all', P..':counts'
local function jkey(id) return P..':job:'..id end
local function dkey(id) return P..':dlv:'..id end
local function dset(job_id) return P..':dlvs:job:'..job_id end
local function bump(field, n) redis.call('HINCRBY', COUNTS, field, n) end
local function holds(owner, cur) return cur and cur ~= '' and cur == owner end
local function job_state(outcome) if outcome == '' then return 'watching' end return outcome end

local function add_delivery(b)  -- ARGV[b..b+9]: the fields in _delivery_args order
  local id, created, next_at, job_id, state = ARGV[b], ARGV[b+3], ARGV[b+4], ARGV[b+6], ARGV[b+7]
  if redis.call('EXISTS', dkey(id)) == 1 then return 0 end
  redis.call('HSET', dkey(id), 'id', id, 'notifier', ARGV[b+1], 'event', ARGV[b+2],
    'created_at', created, 'next_attempt_at', next_at, 'deadline_at', ARGV[b+5],
    'job_id', job_id, 'state', state, 'attempts', ARGV[b+8], 'last_error', ARGV[b+9],
    'owner', '', 'lease_until', '')
  redis.call('ZADD', DALL, created, id)
  if state == 'pending' then redis.call('ZADD', DDUE, next_at, id) end
  if job_id ~= '' then redis.call('SADD', dset(job_id), id) end
  bump('delivery:'..state, 1)
  return 1
end

local function remove_job(id)
  local outcome = redis.call('HGET', jkey(id), 'outcome')
  if not outcome then return 0 end
  redis.call('DEL', jkey(id))
  redis.call('ZREM', JDUE, id); redis.call('ZREM', JADDED, id); redis.call('ZREM', JFINAL, id)
  bump('job:'..job_state(outcome), -1)
  for _, did in ipairs(redis.call('SMEMBERS', dset(id))) do
    local state = redis.call('HGET', dkey(did), 'state')
    if state then redis.call('DEL', dkey(did)); bump('delivery:'..state, -1) end
    redis.call('ZREM', DDUE, did); redis.call('ZREM', DALL, did)
  end
  redis.call('DEL', dset(id))
  return 1
end

-- Hand out due members of zkey whose `field` is still `open`, leasing each one. The records
-- come back as one JSON string: redis-py parses that far faster than nested arrays.
local function claim(zkey, keyfn, field, open)
  local now_s, limit, owner, until_s = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
  local now, out = tonumber(now_s), {}
  if limit <= 0 then return '[]' end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zkey, '-inf', now_s, 'LIMIT', 0, limit)) do
    local key = keyfn(id)
    local v = redis.call('HMGET', key, field, 'owner', 'lease_until')
    if v[1] ~= open then
      redis.call('ZREM', zkey, id)  -- gone or settled: a stale entry
    elseif v[2] and v[2] ~= '' and tonumber(v[3]) > now then
      redis.call('ZADD', zkey, v[3], id)  -- live lease: defensive, the score says so already
    else
      redis.call('HSET', key, 'owner', owner, 'lease_until', until_s)
      redis.call('ZADD', zkey, until_s, id)
      out[#out + 1] = redis.call('HGETALL', key)
    end
  end
  if #out == 0 then return '[]' end  -- cjson would encode an empty table as {}
  return cjson.encode(out)
end
"""

# One script per operation, each prefixed with _LIB; redis-py caches them by SHA.
_SCRIPTS: dict[str, str] = {
    "add_job": """
local id = ARGV[2]
if redis.call('EXISTS', jkey(id)) == 1 then return 0 end
redis.call('HSET', jkey(id), 'id', id, 'labels', ARGV[3], 'notify', ARGV[4], 'added_at', ARGV[5],
  'next_poll_at', ARGV[6], 'polls', '0', 'transient_errors', '0', 'snapshot', 'null',
  'outcome', '', 'detected_at', '', 'owner', '', 'lease_until', '')
redis.call('ZADD', JDUE, ARGV[6], id)
redis.call('ZADD', JADDED, ARGV[5], id)
bump('job:watching', 1)
return 1
""",
    "claim_jobs": "return claim(JDUE, jkey, 'outcome', '')",
    "claim_deliveries": "return claim(DDUE, dkey, 'state', 'pending')",
    "record_poll": """
local id, key = ARGV[2], jkey(ARGV[2])
local cur = redis.call('HMGET', key, 'outcome', 'owner')
if cur[1] ~= '' or not holds(ARGV[3], cur[2]) then return 0 end
redis.call('HSET', key, 'next_poll_at', ARGV[4], 'polls', ARGV[5], 'transient_errors', ARGV[6],
  'snapshot', ARGV[7], 'owner', '', 'lease_until', '')
redis.call('ZADD', JDUE, ARGV[4], id)
return 1
""",
    "record_outcome": """
local id, key, outcome = ARGV[2], jkey(ARGV[2]), ARGV[4]
local cur = redis.call('HMGET', key, 'outcome', 'owner')
if cur[1] ~= '' or not holds(ARGV[3], cur[2]) then return 0 end
redis.call('HSET', key, 'outcome', outcome, 'snapshot', ARGV[5], 'polls', ARGV[6],
  'detected_at', ARGV[7], 'owner', '', 'lease_until', '')
redis.call('ZREM', JDUE, id)
redis.call('ZADD', JFINAL, ARGV[7], id)
bump('job:watching', -1); bump('job:'..outcome, 1)
for i = 0, tonumber(ARGV[8]) - 1 do add_delivery(9 + i * 10) end
return 1
""",
    "release_job": """
local id, key = ARGV[2], jkey(ARGV[2])
local cur = redis.call('HMGET', key, 'outcome', 'owner', 'next_poll_at')
if cur[1] ~= '' or not holds(ARGV[3], cur[2]) then return 0 end
redis.call('HSET', key, 'owner', '', 'lease_until', '')
redis.call('ZADD', JDUE, cur[3], id)
return 1
""",
    "remove_job": "return remove_job(ARGV[2])",
    "spread": """
local now, window, total, offset = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5])
local ids = redis.call('ZRANGEBYSCORE', JDUE, '-inf', '('..ARGV[2], 'LIMIT', 0, tonumber(ARGV[6]))
for i, id in ipairs(ids) do
  -- %.17g: Lua's default tostring keeps 14 digits and would round epoch fractions.
  local at = string.format('%.17g', now + window * (offset + i - 1) / total)
  redis.call('HSET', jkey(id), 'next_poll_at', at)
  redis.call('ZADD', JDUE, at, id)
end
return #ids
""",
    "purge": """
local before, purged = tonumber(ARGV[2]), 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HMGET', jkey(id), 'outcome', 'detected_at')
  local settled = v[1] and v[1] ~= '' and tonumber(v[2]) < before
  if settled then
    for _, did in ipairs(redis.call('SMEMBERS', dset(id))) do
      if redis.call('HGET', dkey(did), 'state') == 'pending' then settled = false; break end
    end
  end
  if settled then purged = purged + remove_job(id) end
end
return purged
""",
    "add_deliveries": """
local added = 0
for i = 0, tonumber(ARGV[2]) - 1 do added = added + add_delivery(3 + i * 10) end
return added
""",
    "record_delivery": """
local id, key, state, next_at = ARGV[2], dkey(ARGV[2]), ARGV[4], ARGV[6]
local cur = redis.call('HMGET', key, 'owner', 'state')
if not holds(ARGV[3], cur[1]) then return 0 end
redis.call('HSET', key, 'state', state, 'attempts', ARGV[5], 'next_attempt_at', next_at,
  'last_error', ARGV[7], 'owner', '', 'lease_until', '')
if state == 'pending' then redis.call('ZADD', DDUE, next_at, id)
else redis.call('ZREM', DDUE, id) end
if cur[2] ~= state then bump('delivery:'..cur[2], -1); bump('delivery:'..state, 1) end
return 1
""",
}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _num(value: float) -> str:
    """repr() of a float round-trips exactly, which str(int) or Lua's tostring would not."""
    return repr(float(value))


def _strs(values: Any) -> list[str]:
    """Members as str: the client decodes responses, the stubs cannot know that."""
    return cast("list[str]", values)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _job(h: dict[str, str]) -> JobState:
    notify = json.loads(h["notify"])
    snapshot = json.loads(h["snapshot"])
    return JobState(
        id=h["id"],
        labels=json.loads(h["labels"]),
        notify=None if notify is None else tuple(notify),
        added_at=float(h["added_at"]),
        next_poll_at=float(h["next_poll_at"]),
        polls=int(h["polls"]),
        transient_errors=int(h["transient_errors"]),
        snapshot=None if snapshot is None else Snapshot.from_dict(snapshot),
        outcome=Outcome(h["outcome"]) if h["outcome"] else None,
        detected_at=float(h["detected_at"]) if h["detected_at"] else None,
    )


def _delivery(h: dict[str, str]) -> Delivery:
    return Delivery(
        id=h["id"],
        notifier=h["notifier"],
        event=json.loads(h["event"]),
        created_at=float(h["created_at"]),
        next_attempt_at=float(h["next_attempt_at"]),
        deadline_at=float(h["deadline_at"]),
        job_id=h["job_id"] or None,
        state=DeliveryState(h["state"]),
        attempts=int(h["attempts"]),
        last_error=json.loads(h["last_error"]),
    )


def _delivery_args(d: Delivery) -> list[str]:
    return [
        d.id, d.notifier, _dumps(dict(d.event)), _num(d.created_at), _num(d.next_attempt_at),
        _num(d.deadline_at), d.job_id or "", DeliveryState(d.state).value, str(d.attempts),
        _dumps(d.last_error),
    ]  # fmt: skip


def _snapshot_arg(snapshot: Snapshot | None) -> str:
    return _dumps(None if snapshot is None else snapshot.to_dict())


class RedisStore:
    """A StateStore in Redis, safe to share between replicas."""

    def __init__(self, url: str, *, prefix: str = "import-watcher") -> None:
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    # --- plumbing -----------------------------------------------------------

    @property
    def _r(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("Redis store is not open")
        return self._client

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store unreachable: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            # A failover (READONLY), a full server (OOM), a loading or masterless replica
            # are passing states of the store, not bugs: callers back off and retry.
            if str(exc).split(" ", 1)[0] in _TRANSIENT_REPLIES:
                raise StoreUnavailable(f"Redis store not accepting writes: {exc}") from exc
            raise

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def _run(self, name: str, *args: str | int) -> Any:
        """Run one Lua script: one round trip, atomic on the server."""
        with self._errors():
            script = self._scripts[name]
            return await script(keys=[self._key("jobs:due")], args=[self.prefix, *args])

    async def open(self) -> None:
        """Connect, check the server answers, and record (or check) the layout version."""
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(self.url, decode_responses=True)
        try:
            with self._errors():
                await client.ping()
                await client.setnx(self._key("schema"), str(SCHEMA_VERSION))
                version = int(await client.get(self._key("schema")) or SCHEMA_VERSION)
        except BaseException:
            await client.aclose()
            raise
        if version > SCHEMA_VERSION:
            await client.aclose()
            raise WatcherError(
                f"Redis store {self.prefix!r} has layout version {version}, newer than this"
                f" import-watcher supports ({SCHEMA_VERSION}); upgrade import-watcher"
            )
        self._scripts = {
            name: client.register_script(_LIB + body) for name, body in _SCRIPTS.items()
        }
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def ping(self) -> None:
        """Raise StoreUnavailable when Redis does not answer."""
        with self._errors():
            await self._r.ping()

    async def _hashes(self, kind: str, ids: Sequence[str]) -> list[dict[str, str]]:
        """HGETALL many records, one pipeline per chunk; vanished ones are skipped."""
        found: list[dict[str, str]] = []
        for start in range(0, len(ids), _CHUNK):
            with self._errors():
                pipe = self._r.pipeline(transaction=False)
                for record_id in ids[start : start + _CHUNK]:
                    pipe.hgetall(self._key(f"{kind}:{record_id}"))
                found.extend(h for h in await pipe.execute() if h)
        return found

    # --- jobs ---------------------------------------------------------------

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float) -> bool:
        """Track a job; False (and nothing changes) when the id is already known."""
        notify = None if ref.notify is None else list(ref.notify)
        added = await self._run(
            "add_job", ref.id, _dumps(dict(ref.labels)), _dumps(notify), _num(now),
            _num(first_poll_at),
        )  # fmt: skip
        return bool(added)

    async def get_job(self, job_id: str) -> JobState | None:
        found = await self._hashes("job", [job_id])
        return _job(found[0]) if found else None

    async def list_jobs(
        self, *, state: str | None = None, limit: int | None = None
    ) -> list[JobState]:
        """Jobs ordered by added_at; `state` is "watching" or an outcome value."""
        if limit is not None and limit <= 0:
            return []
        stop = limit - 1 if limit is not None and state is None else -1
        with self._errors():
            ids = _strs(await self._r.zrange(self._key("jobs:added"), 0, stop))
        jobs: list[JobState] = []
        for start in range(0, len(ids), _CHUNK):
            for h in await self._hashes("job", ids[start : start + _CHUNK]):
                job = _job(h)
                if state is None or job.state == state:
                    jobs.append(job)
            if limit is not None and len(jobs) >= limit:
                break
        return jobs if limit is None else jobs[:limit]

    async def remove_job(self, job_id: str) -> bool:
        """Delete the job and every delivery of it, so no orphaned outbox rows remain."""
        return bool(await self._run("remove_job", job_id))

    async def claim_due_jobs(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first."""
        rows = json.loads(await self._run("claim_jobs", _num(now), limit, owner, _num(now + lease)))
        return [_job(_pairs(row)) for row in rows]

    async def record_poll(self, job_id: str, update: PollUpdate, *, owner: str) -> bool:
        """Store a non-final poll and release the lease; False if `owner` lost the lease."""
        recorded = await self._run(
            "record_poll", job_id, owner, _num(update.next_poll_at), update.polls,
            update.transient_errors, _snapshot_arg(update.snapshot),
        )  # fmt: skip
        return bool(recorded)

    async def record_polls(self, updates: Sequence[tuple[str, PollUpdate]], *, owner: str) -> list[bool]:
        """`record_poll` for each (job id, update) in one MULTI/EXEC round trip: atomic on the server."""
        if not updates:
            return []
        script, keys = self._scripts["record_poll"], [self._key("jobs:due")]
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                for job_id, update in updates:
                    args: list[str | int] = [
                        self.prefix, job_id, owner, _num(update.next_poll_at), update.polls,
                        update.transient_errors, _snapshot_arg(update.snapshot),
                    ]  # fmt: skip
                    await script(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        return [bool(reply) for reply in replies]

    async def record_outcome(
        self,
        job_id: str,
        *,
        outcome: Outcome,
        snapshot: Snapshot | None,
        polls: int,
        detected_at: float,
        deliveries: Sequence[Delivery],
        owner: str,
    ) -> bool:
        """Set the final outcome and insert its deliveries in one script (atomic)."""
        fields = [field for d in deliveries for field in _delivery_args(d)]
        recorded = await self._run(
            "record_outcome", job_id, owner, Outcome(outcome).value, _snapshot_arg(snapshot),
            polls, _num(detected_at), len(deliveries), *fields,
        )  # fmt: skip
        return bool(recorded)

    async def release_job(self, job_id: str, *, owner: str) -> None:
        """Give a lease back unchanged (shutdown with the poll not made)."""
        await self._run("release_job", job_id, owner)

    async def spread_overdue(self, *, now: float, window: float) -> int:
        """Reschedule overdue unfinished jobs evenly over [now, now + window); returns how many."""
        with self._errors():
            total = int(await self._r.zcount(self._key("jobs:due"), "-inf", f"({_num(now)}"))
        done = 0
        # Chunked so Redis is never blocked for long; slot k of `total` keeps them even.
        while done < total:
            moved = int(
                await self._run(
                    "spread", _num(now), _num(window), total, done, min(_CHUNK * 10, total - done)
                )
            )
            if moved == 0:
                break
            done += moved
        return done

    async def next_job_due_at(self) -> float | None:
        """Earliest due time among unfinished jobs (a leased job counts at its lease expiry)."""
        return await self._first_score("jobs:due")

    async def _first_score(self, name: str) -> float | None:
        with self._errors():
            first = await self._r.zrange(self._key(name), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def purge_finished(self, *, before: float) -> int:
        """Delete final jobs detected before `before` whose deliveries are all settled."""
        with self._errors():
            ids = _strs(
                await self._r.zrangebyscore(self._key("jobs:final"), "-inf", f"({_num(before)}")
            )
        purged = 0
        for start in range(0, len(ids), _CHUNK):
            purged += int(await self._run("purge", _num(before), *ids[start : start + _CHUNK]))
        return purged

    # --- outbox -------------------------------------------------------------

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""
        items = list(deliveries)
        fields = [field for d in items for field in _delivery_args(d)]
        return int(await self._run("add_deliveries", len(items), *fields))

    async def claim_due_deliveries(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[Delivery]:
        """Pending deliveries with next_attempt_at <= now and no live lease."""
        rows = json.loads(
            await self._run("claim_deliveries", _num(now), limit, owner, _num(now + lease))
        )
        return [_delivery(_pairs(row)) for row in rows]

    async def record_delivery(self, delivery: Delivery, *, owner: str) -> bool:
        """Write state, attempts, next_attempt_at and last_error; release the lease."""
        recorded = await self._run(
            "record_delivery", delivery.id, owner, DeliveryState(delivery.state).value,
            delivery.attempts, _num(delivery.next_attempt_at), _dumps(delivery.last_error),
        )  # fmt: skip
        return bool(recorded)

    async def list_deliveries(self, job_ids: Iterable[str] | None = None) -> list[Delivery]:
        """Deliveries of these jobs (all deliveries when None), oldest first."""
        with self._errors():
            if job_ids is None:
                ids = _strs(await self._r.zrange(self._key("dlvs:all"), 0, -1))
            else:
                pipe = self._r.pipeline(transaction=False)
                for job_id in set(job_ids):
                    pipe.smembers(self._key(f"dlvs:job:{job_id}"))
                ids = [did for members in await pipe.execute() for did in members]
        found = [_delivery(h) for h in await self._hashes("dlv", ids)]
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def next_delivery_due_at(self) -> float | None:
        """Earliest due time among pending deliveries (a leased one counts at its lease expiry)."""
        return await self._first_score("dlvs:due")

    # --- bookkeeping ----------------------------------------------------------

    async def counts(self) -> StoreCounts:
        with self._errors():
            raw = cast("dict[str, str]", await self._r.hgetall(self._key("counts")))
        jobs: dict[str, int] = dict.fromkeys([WATCHING, *(o.value for o in Outcome)], 0)
        deliveries: dict[str, int] = dict.fromkeys((s.value for s in DeliveryState), 0)
        for field, value in raw.items():
            kind, _, state = field.partition(":")
            (jobs if kind == "job" else deliveries)[state] = int(value)
        return StoreCounts(jobs_by_state=jobs, deliveries_by_state=deliveries)

    async def set_meta(self, key: str, value: str) -> None:
        with self._errors():
            await self._r.hset(self._key("meta"), key, value)

    async def get_meta(self, key: str) -> str | None:
        with self._errors():
            value = await self._r.hget(self._key("meta"), key)
        return None if value is None else str(value)
