"""The Redis store's batches, stuck warnings and digest reads (keys in watcher.store.redis_batch_scripts).

Batch counts change inside the job scripts (add_job, record_outcome, remove_job); this module
claims, finishes and reads them. A batch claim is fenced like a job's: a token, and a lease
measured by the lease clock (the server's TIME by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from watcher.models import Batch, BatchPhase, Delivery, DeliveryState, JobState
from watcher.store import redis_rows as rows
from watcher.store.redis_client import CHUNK, RedisConnection
from watcher.store.tokens import new_token

_SCAN_FACTOR = 8  # a claim looks at up to limit * 8 settled batches: some may be under a live lease


class RedisBatches(RedisConnection):
    """Batch claims and reads, stuck marks and digest reads of a RedisStore."""

    async def mark_stuck(self, job_id: str, *, token: str, now: float, deliveries: Sequence[Delivery]) -> bool:
        """Set stuck_at and insert the warning's deliveries in one script, once; the lease stays."""
        marked = await self._run("mark_stuck", now, job_id, token, rows.num(now), *rows.delivery_args(deliveries))
        return bool(marked)

    async def get_batch(self, name: str) -> Batch | None:
        with self._errors():
            h = cast("dict[str, str]", await self._r.hgetall(self._key(f"batch:{name}")))
        return rows.batch(h) if h.get("name") is not None else None

    async def list_batches(
        self, *, phase: str | None = None, limit: int | None = None, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        """Batches ordered by (started_at, name), after the cursor, a page per script call."""
        if phase is not None and phase not in {p.value for p in BatchPhase}:
            return []
        if limit is not None and limit <= 0:
            return []
        found: list[Batch] = []
        cursor = after
        while limit is None or len(found) < limit:
            want = CHUNK if limit is None else min(limit - len(found), CHUNK)
            where = ["1", rows.num(cursor[0]), cursor[1]] if cursor else ["0", "", ""]
            page = rows.script_rows(await self._run("list_batches", None, phase or "all", *where, want))
            found.extend(rows.batch(h) for h in page)
            if len(page) < want:
                break
            cursor = (found[-1].started_at, found[-1].name)
        return found

    async def claim_settled_batches(
        self, *, now: float, settle: float, limit: int, owner: str, lease: float
    ) -> list[Batch]:
        """Open, all-final batches quiet since now - settle with no live lease, oldest quiet first, leased."""
        raw = await self._run(
            "claim_batches", now, rows.num(now - settle), str(limit), new_token(owner), rows.num(lease),
            str(max(limit, 1) * _SCAN_FACTOR),
        )  # fmt: skip
        return [rows.batch(h, leased=True) for h in rows.script_rows(raw)]

    async def finish_batch(
        self, name: str, *, token: str, now: float, summary_id: str, deliveries: Sequence[Delivery]
    ) -> bool:
        """Mark the held, unchanged batch finished and insert its summary deliveries, in one script."""
        finished = await self._run(
            "finish_batch", now, name, token, rows.num(now), summary_id, *rows.delivery_args(deliveries)
        )
        return bool(finished)

    async def renew_batches(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each held (batch name, token) to lease-clock now + lease, in one script."""
        return await self._renew("renew_batches", leases, now, lease)

    async def release_batch(self, name: str, *, token: str) -> None:
        """Give a batch claim back unchanged; a stale token frees nothing."""
        await self._run("release_batch", None, name, token)

    async def batch_counts(self) -> dict[str, int]:
        """Batches by phase: the cardinality of each phase's zset."""
        with self._errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for phase in BatchPhase:
                    pipe.zcard(self._key(f"batches:{phase.value}"))
                counts = await pipe.execute()
        return {phase.value: int(count) for phase, count in zip(BatchPhase, counts, strict=True)}

    async def finished_jobs(self, *, since: float, until: float, limit: int = 10_000) -> list[JobState]:
        """Jobs whose outcome was detected in [since, until), oldest first (P:jobs:final)."""
        ids = await self._range("jobs:final", since, until, limit)
        jobs = [rows.job(h) for h in await self._hashes("job", ids) if h.get("outcome")]
        return [job for job in jobs if job.detected_at is not None and since <= job.detected_at < until]

    async def dead_deliveries(self, *, since: float, until: float, limit: int = 1000) -> list[Delivery]:
        """Dead deliveries created in [since, until), oldest first, without bodies (P:dlvs:dead)."""
        ids = await self._range("dlvs:dead", since, until, limit)
        found = [rows.delivery(h) for h in await self._hashes("dlv", ids, rows.DELIVERY_FIELDS_NO_EVENT)]
        return [d for d in found if d.state is DeliveryState.DEAD]

    async def _range(self, name: str, since: float, until: float, limit: int) -> list[str]:
        """Members of a zset scored in [since, until), by score then member, at most `limit`."""
        if limit <= 0:
            return []
        with self._errors():
            found = await self._r.zrangebyscore(
                self._key(name), rows.num(since), f"({rows.num(until)}", start=0, num=limit
            )
        return cast("list[str]", found)
