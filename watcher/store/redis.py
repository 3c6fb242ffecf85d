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
"{import-watcher}" so every key lands in one slot. The scripts are in redis_scripts.
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
from watcher.store.redis_scripts import register_scripts

SCHEMA_VERSION = 1
# Server replies that mean "not now" (failover, full memory, loading), not a bug.
_TRANSIENT_REPLIES = frozenset({"READONLY", "OOM", "LOADING", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN"})
_CHUNK = 500  # records per pipeline or script call: bounded latency for other clients


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

    async def _run_many(self, name: str, calls: Sequence[Sequence[str | int]]) -> list[Any]:
        """Run one Lua script once per argument list in one MULTI/EXEC: one round trip, atomic."""
        if not calls:
            return []
        script, keys = self._scripts[name], [self._key("jobs:due")]
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                for args in calls:
                    await script(keys=keys, args=[self.prefix, *args], client=pipe)
                return list(await pipe.execute())

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
        self._scripts = register_scripts(client)
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

    async def add_jobs(self, refs: Sequence[JobRef], *, now: float, first_poll_at: float) -> list[bool]:
        """`add_job` for each ref in one MULTI/EXEC round trip: atomic on the server."""
        replies = await self._run_many("add_job", [
            [ref.id, _dumps(dict(ref.labels)), _dumps(None if ref.notify is None else list(ref.notify)),
             _num(now), _num(first_poll_at)]
            for ref in refs
        ])  # fmt: skip
        return [bool(reply) for reply in replies]

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
        replies = await self._run_many("record_poll", [
            [job_id, owner, _num(update.next_poll_at), update.polls, update.transient_errors,
             _snapshot_arg(update.snapshot)]
            for job_id, update in updates
        ])  # fmt: skip
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
