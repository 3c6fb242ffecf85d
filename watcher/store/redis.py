"""Redis StateStore: shared by several replicas, every write an atomic Lua script.

Layout 2 under the prefix P (job ids cannot hold ":", so keys never collide):
  P:job:<id>        hash, one job               P:dlv:<id>        hash, one delivery
  P:jobs:due        zset of unfinished jobs     P:dlvs:due        zset of pending deliveries
  P:jobs:added      zset by added_at            P:dlvs:all        zset by created_at
  P:jobs:final      zset by detected_at         P:dlvs:deadline   zset of pending by deadline_at
  P:tombs           zset of tombstones by when  P:dlvs:job:<id>   set of a job's deliveries
  P:tombs:why       hash id -> reason           P:dlvs:due:n:<n>  zset of pending to notifier n
  P:counts          hash of totals by state     P:dlvs:dead       zset of dead deliveries by created_at
  P:meta, P:schema  bookkeeping (P:schema holds the layout version)
  P:batch:<name>, P:batchjobs:<name>, P:batches:*  batches (see redis_batch_scripts)

A due score is next_poll_at (next_attempt_at, the caller's clock) while the record is
free and its lease expiry while it is claimed, so "due and unclaimed" is one
ZRANGEBYSCORE and an expired lease becomes due again for any replica. A claimed
record's `owner` field holds its lease token and `lease_until` the expiry in the lease
clock: the server's TIME by default, so a replica whose clock runs ahead cannot take a
live lease (the scripts check the expiry, the score only finds candidates). Scripts
build record keys from the prefix, so they touch keys they do not declare: Redis Cluster is
not supported (README, Scaling out). The scripts are in redis_scripts.

Layout 1 (before tombstones) lacked P:dlvs:deadline and P:dlvs:due:n:*; `open` builds them
and moves to 2.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, cast

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
    Tombstone,
    TombstoneReason,
)
from watcher.store import redis_rows as rows
from watcher.store.base import HOUSEKEEPING_BATCH
from watcher.store.redis_batches import RedisBatches
from watcher.store.redis_client import CHUNK, SCHEMA_VERSION
from watcher.store.tokens import new_token

__all__ = ["SCHEMA_VERSION", "RedisStore"]

_SCAN_FACTOR = 8  # a claim looks at up to limit * 8 due entries: leases live by the server clock may lie in front
_LIST_SCAN = 2000  # members one list_jobs call looks at: short scripts even when a filter skips most


class RedisStore(RedisBatches):
    """A StateStore in Redis, safe to share between replicas (see RedisConnection for the options)."""

    # --- jobs ---------------------------------------------------------------

    @staticmethod
    def _add_args(ref: JobRef, now: float, first_poll_at: float, again: bool) -> list[str]:
        notify = None if ref.notify is None else list(ref.notify)
        return [ref.id, rows.dumps(dict(ref.labels)), rows.dumps(notify), rows.num(now), rows.num(first_poll_at),
                "1" if again else "0", ref.batch or "", ref.kind.value, ref.account or ""]  # fmt: skip

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float, again: bool = False) -> bool:
        """Track a job; see StateStore.add_job for tombstones and `again`."""
        return bool(await self._run("add_job", None, *self._add_args(ref, now, first_poll_at, again)))

    async def add_jobs(
        self, refs: Sequence[JobRef], *, now: float, first_poll_at: float, again: bool = False
    ) -> list[bool]:
        """`add_job` for each ref in one MULTI/EXEC round trip: atomic on the server."""
        calls = [self._add_args(ref, now, first_poll_at, again) for ref in refs]
        return [bool(reply) for reply in await self._run_many("add_job", None, calls)]

    async def get_job(self, job_id: str) -> JobState | None:
        found = await self._hashes("job", [job_id])
        return rows.job(found[0]) if found else None

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
        batch: str | None = None,
    ) -> list[JobState]:
        """Jobs ordered by (added_at, id) after the cursor, a page per script call: a filter
        or an absent limit never makes one call read every job; `batch` reads its own zset."""
        if limit is not None and limit <= 0:
            return []
        jobs: list[JobState] = []
        cursor = after
        while limit is None or len(jobs) < limit:
            want = CHUNK if limit is None else min(limit - len(jobs), CHUNK)
            where = ["1", rows.num(cursor[0]), cursor[1]] if cursor else ["0", "", ""]
            raw = await self._run("list_jobs", None, *where, state or "", want, _LIST_SCAN, batch or "")
            found, last_id, last_score, done = json.loads(raw)
            if isinstance(found, list):
                jobs.extend(rows.job(rows.pairs(h)) for h in found)
            if done or not last_id:
                break
            cursor = (float(last_score), last_id)
        return jobs

    async def batch_jobs(self, name: str) -> list[JobState]:
        """Every job of the batch, ordered by (added_at, id): its zset, a page per script call."""
        return await self.list_jobs(batch=name)

    async def remove_job(self, job_id: str, *, now: float) -> bool:
        """Delete the job and its deliveries and leave a STOPPED tombstone, in one script."""
        return bool(await self._run("remove_job", None, job_id, rows.num(now)))

    @staticmethod
    def _claim_args(now: float, limit: int, owner: str, lease: float, notifiers: Collection[str] | None) -> list[str]:
        # Tokens are owner:nonce:n, so a token says whose it is and is never handed out twice.
        wanted = ["-1"] if notifiers is None else [str(len(set(notifiers))), *sorted(set(notifiers))]
        return [rows.num(now), str(limit), new_token(owner), rows.num(lease),
                str(max(limit, 1) * _SCAN_FACTOR), *wanted]  # fmt: skip

    async def claim_due_jobs(self, *, now: float, limit: int, owner: str, lease: float) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first, leased."""
        raw = await self._run("claim_jobs", now, *self._claim_args(now, limit, owner, lease, None))
        return [rows.job(h, leased=True) for h in rows.script_rows(raw)]

    async def renew_jobs(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each held (job id, token) to lease-clock now + lease, in one script."""
        return await self._renew("renew_jobs", leases, now, lease)

    @staticmethod
    def _poll_args(job_id: str, token: str, update: PollUpdate) -> list[str]:
        return [job_id, token, rows.num(update.next_poll_at), str(update.polls), str(update.transient_errors),
                rows.snapshot_arg(update.snapshot)]  # fmt: skip

    async def record_poll(self, job_id: str, update: PollUpdate, *, token: str, now: float) -> bool:
        """Store a non-final poll and end the lease; False when `token` holds no live lease."""
        return (await self.record_polls([(job_id, token, update)], now=now))[0]

    async def record_polls(self, updates: Sequence[tuple[str, str, PollUpdate]], *, now: float) -> list[bool]:
        """`record_poll` for each (job id, token, update): one script call (one EVALSHA) per CHUNK."""
        answers: list[bool] = []
        for start in range(0, len(updates), CHUNK):
            chunk = updates[start : start + CHUNK]
            args = [part for job_id, token, update in chunk for part in self._poll_args(job_id, token, update)]
            answers.extend(bool(reply) for reply in await self._run("record_polls", now, len(chunk), *args))
        return answers

    async def record_outcome(
        self,
        job_id: str,
        *,
        token: str,
        now: float,
        outcome: Outcome,
        snapshot: Snapshot | None,
        polls: int,
        detected_at: float,
        deliveries: Sequence[Delivery],
        errors: Mapping[str, Any] | None = None,
    ) -> bool:
        """Set the final outcome, insert its deliveries and count it in its batch, in one script,
        if `token` holds a live lease."""
        recorded = await self._run(
            "record_outcome", now, job_id, token, Outcome(outcome).value, rows.snapshot_arg(snapshot),
            polls, rows.num(detected_at), rows.dumps(None if errors is None else dict(errors)), rows.num(now),
            *rows.delivery_args(deliveries),
        )  # fmt: skip
        return bool(recorded)

    async def release_job(self, job_id: str, *, token: str) -> None:
        """Give a lease back unchanged: due again at once for anyone."""
        await self._run("release_job", None, job_id, token)

    async def spread_overdue(self, *, now: float, window: float) -> int:
        """Reschedule overdue unfinished jobs evenly over [now, now + window); returns how many."""
        with self._errors():
            total = int(await self._r.zcount(self._key("jobs:due"), "-inf", f"({rows.num(now)}"))
        done = skipped = 0
        # Chunked so Redis is never blocked for long; slot k of `total` keeps them even.
        while done + skipped < total:
            count = min(CHUNK * 10, total - done - skipped)
            moved, passed = await self._run("spread", now, rows.num(now), rows.num(window), total, done, count, skipped)
            if moved + passed == 0:
                break
            done, skipped = done + int(moved), skipped + int(passed)
        return done

    async def next_job_due_at(self) -> float | None:
        """Earliest due time among unfinished jobs (a leased job counts at its lease expiry)."""
        return await self._first_score("jobs:due")

    # --- retention and tombstones -----------------------------------------------

    async def purge_finished(self, *, before: float, now: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Delete at most `limit` settled final jobs detected before `before`, oldest first,
        each leaving a FINISHED tombstone, in one script."""
        if limit <= 0:
            return 0
        bound = limit * _SCAN_FACTOR
        return int(await self._run("purge", None, rows.num(before), rows.num(now), limit, bound))

    async def tombstones(self, job_ids: Sequence[str]) -> Mapping[str, Tombstone]:
        """The tombstones among these ids, read in one MULTI/EXEC round trip."""
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        chunks = [wanted[start : start + CHUNK] for start in range(0, len(wanted), CHUNK)]
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                for chunk in chunks:
                    pipe.zmscore(self._key("tombs"), chunk)
                    pipe.hmget(self._key("tombs:why"), chunk)
                replies = await pipe.execute()
        found: dict[str, Tombstone] = {}
        for index, chunk in enumerate(chunks):
            scores, reasons = replies[2 * index], replies[2 * index + 1]
            for job_id, at, reason in zip(chunk, scores, reasons, strict=True):
                if at is not None and reason is not None:
                    found[job_id] = Tombstone(job_id, float(at), TombstoneReason(reason))
        return found

    async def purge_tombstones(self, *, before: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Forget at most `limit` tombstones buried before `before`, oldest first."""
        if limit <= 0:
            return 0
        return int(await self._run("purge_tombstones", None, rows.num(before), limit))

    # --- outbox -------------------------------------------------------------

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""
        return int(await self._run("add_deliveries", None, *rows.delivery_args(list(deliveries))))

    async def claim_due_deliveries(
        self,
        *,
        now: float,
        limit: int,
        owner: str,
        lease: float,
        notifiers: Collection[str] | None = None,
    ) -> list[Delivery]:
        """Pending deliveries due at `now` with no live lease, to `notifiers` (None: any), leased.

        With `notifiers` the script reads those notifiers' own due zsets, so deliveries to
        others stay where they are and can never starve the ones this replica can send.
        """
        args = self._claim_args(now, limit, owner, lease, notifiers)
        raw = await self._run("claim_deliveries", now, *args)
        return [rows.delivery(h, leased=True) for h in rows.script_rows(raw)]

    async def claim_expired_deliveries(self, *, now: float, limit: int, owner: str, lease: float) -> list[Delivery]:
        """Pending deliveries past their deadline with no live lease, any notifier, leased.

        P:dlvs:deadline orders them by deadline: a scan of the due zset could not find one
        behind many due deliveries to notifiers nobody here knows.
        """
        raw = await self._run("claim_expired", now, *self._claim_args(now, limit, owner, lease, None))
        return [rows.delivery(h, leased=True) for h in rows.script_rows(raw)]

    async def renew_deliveries(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each held (delivery id, token) to lease-clock now + lease, in one script."""
        return await self._renew("renew_deliveries", leases, now, lease)

    @staticmethod
    def _delivery_record_args(delivery: Delivery, token: str, alerts: Sequence[Delivery]) -> list[str | int]:
        state, next_at = DeliveryState(delivery.state).value, rows.num(delivery.next_attempt_at)
        return [delivery.id, token, state, delivery.attempts, next_at, rows.dumps(delivery.last_error),
                *rows.delivery_args(alerts)]  # fmt: skip

    async def record_delivery(
        self, delivery: Delivery, *, token: str, now: float, alerts: Sequence[Delivery] = ()
    ) -> bool:
        """Write the delivery's new state, end the lease and insert `alerts`, in one script."""
        return (await self.record_deliveries([(delivery, token, alerts)], now=now))[0]

    async def record_deliveries(
        self, records: Sequence[tuple[Delivery, str, Sequence[Delivery]]], *, now: float
    ) -> list[bool]:
        """`record_delivery` for each (delivery, token, alerts): one script call per CHUNK records."""
        answers: list[bool] = []
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            args = [part for d, token, alerts in chunk for part in self._delivery_record_args(d, token, alerts)]
            answers.extend(bool(reply) for reply in await self._run("record_deliveries", now, len(chunk), *args))
        return answers

    async def release_delivery(self, delivery_id: str, *, token: str) -> None:
        """Give a delivery's lease back unchanged: due again at once."""
        await self._run("release_delivery", None, delivery_id, token)

    async def list_deliveries(
        self, job_ids: Iterable[str] | None = None, *, with_events: bool = True
    ) -> list[Delivery]:
        """Deliveries of these jobs (all when None), oldest first; bodies only `with_events`."""
        with self._errors():
            if job_ids is None:
                ids = cast("list[str]", await self._r.zrange(self._key("dlvs:all"), 0, -1))
            else:
                pipe = self._r.pipeline(transaction=False)
                for job_id in set(job_ids):
                    pipe.smembers(self._key(f"dlvs:job:{job_id}"))
                ids = [did for members in await pipe.execute() for did in members]
        fields = () if with_events else rows.DELIVERY_FIELDS_NO_EVENT
        found = [rows.delivery(h) for h in await self._hashes("dlv", ids, fields)]
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

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        """Set `key` to `value` and insert `deliveries` in one script, if it holds `expected`."""
        held = ["0", ""] if expected is None else ["1", expected]
        transitioned = await self._run("transition_meta", None, key, *held, value, *rows.delivery_args(deliveries))
        return bool(transitioned)
