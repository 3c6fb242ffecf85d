"""In-process StateStore: dicts plus lazy-deletion heaps, for tests and the demo.

Values go through a JSON round trip on the way in, so the memory store hands
back exactly what SQLite and Redis would (lists, not tuples, inside events)
and a test written against it holds for the durable backends too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from watcher.models import (
    WATCHING,
    Batch,
    Delivery,
    DeliveryState,
    JobRef,
    JobState,
    Lease,
    Outcome,
    PollUpdate,
    Snapshot,
    StoreCounts,
    Tombstone,
    TombstoneReason,
)
from watcher.store.base import HOUSEKEEPING_BATCH
from watcher.store.memory_batches import MemoryBatches
from watcher.store.memory_outbox import MemoryOutbox
from watcher.store.memory_rows import _DueHeap, _JobRow, _json_copy, _Lease, _snapshot_copy
from watcher.store.tokens import new_token


class MemoryStore(MemoryOutbox):
    """A StateStore kept in this process; lost on exit."""

    def __init__(self) -> None:
        super().__init__()
        self._jobs: dict[str, _JobRow] = {}
        self._tombstones: dict[str, Tombstone] = {}
        self._job_heap = _DueHeap()
        self._batches = MemoryBatches()

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the data stays for another open()."""

    def hurry(self) -> None:
        """Nothing outside this process to wait for."""

    async def ping(self) -> None:
        """Always reachable."""

    # --- jobs ---------------------------------------------------------------

    def _job_is_current(self, job_id: str, due_at: float) -> bool:
        row = self._jobs.get(job_id)
        return row is not None and row.job.outcome is None and row.lease.due_at == due_at

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float, again: bool = False) -> bool:
        """Track a job; see StateStore.add_job for tombstones and `again`."""
        if ref.id in self._tombstones:
            if not again:
                return False
            del self._tombstones[ref.id]
        row = self._jobs.get(ref.id)
        if row is not None:
            if not again or row.job.outcome is None:
                return False
            self._drop_settled_deliveries(ref.id)
            self._leave_batch(row.job, now, uncount=True)
        job = JobState(
            id=ref.id,
            labels=_json_copy(dict(ref.labels)),
            notify=tuple(ref.notify) if ref.notify is not None else None,
            added_at=now,
            next_poll_at=first_poll_at,
            batch=ref.batch,
            kind=ref.kind,
            account=ref.account,
        )
        self._jobs[ref.id] = _JobRow(job, _Lease(first_poll_at))
        self._job_heap.push(first_poll_at, ref.id)
        if ref.batch is not None:
            self._batches.join(ref.batch, ref.id, now)
        return True

    def _leave_batch(self, job: JobState, now: float, *, uncount: bool) -> None:
        if job.batch is not None:
            outcome = None if job.outcome is None else job.outcome.value
            self._batches.leave(job.batch, job.id, outcome, now, uncount=uncount)

    def _drop_settled_deliveries(self, job_id: str) -> None:
        """A new watch replaces a final job: its old deliveries go only when none is pending."""
        old = self._deliveries_of({job_id})
        if all(d.state is not DeliveryState.PENDING for d in old):
            for delivery in old:
                del self._deliveries[delivery.id]

    async def add_jobs(
        self, refs: Sequence[JobRef], *, now: float, first_poll_at: float, again: bool = False
    ) -> list[bool]:
        """`add_job` for each ref, in order; nothing else runs in between."""
        return [await self.add_job(ref, now=now, first_poll_at=first_poll_at, again=again) for ref in refs]

    async def get_job(self, job_id: str) -> JobState | None:
        row = self._jobs.get(job_id)
        return None if row is None else row.job

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
        batch: str | None = None,
    ) -> list[JobState]:
        """Jobs ordered by (added_at, id) after the cursor; `state` is "watching" or an outcome;
        `batch` reads only that batch's members."""
        rows = self._jobs.values() if batch is None else self._batch_rows(batch)
        jobs = sorted((row.job for row in rows), key=lambda j: (j.added_at, j.id))
        if after is not None:
            jobs = [job for job in jobs if (job.added_at, job.id) > after]
        if state is not None:
            jobs = [job for job in jobs if job.state == state]
        return jobs if limit is None else jobs[: max(0, limit)]

    def _batch_rows(self, name: str) -> list[_JobRow]:
        return [self._jobs[job_id] for job_id in self._batches.members(name) if job_id in self._jobs]

    async def remove_job(self, job_id: str, *, now: float) -> bool:
        """Delete the job and its deliveries and leave a STOPPED tombstone."""
        return self._bury(job_id, now, TombstoneReason.STOPPED)

    def _bury(self, job_id: str, now: float, reason: TombstoneReason) -> bool:
        row = self._jobs.pop(job_id, None)
        if row is None:
            return False
        # Retention keeps the counts: the batch's summary covered the job (see memory_batches).
        self._leave_batch(row.job, now, uncount=reason is TombstoneReason.STOPPED)
        for delivery_id in [d.id for d in self._deliveries_of({job_id})]:
            del self._deliveries[delivery_id]
        self._tombstones[job_id] = Tombstone(job_id, now, reason)
        return True

    async def claim_due_jobs(self, *, now: float, limit: int, owner: str, lease: float) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first."""
        claimed: list[JobState] = []
        while len(claimed) < limit:
            entry = self._job_heap.pop_due(now, self._job_is_current)
            if entry is None:
                break
            row = self._jobs[entry[1]]
            # Hidden until the lease ends: then it is due again for anyone.
            token, until = new_token(owner), now + lease
            row.lease = _Lease(until, token, until)
            self._job_heap.push(until, row.job.id)
            claimed.append(replace(row.job, lease=Lease(token, until)))
        self._compact()
        return claimed

    def _held(self, job_id: str, token: str, now: float) -> _JobRow | None:
        row = self._jobs.get(job_id)
        if row is None or row.job.outcome is not None or not row.lease.held(token, now):
            return None
        return row

    async def renew_jobs(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (job id, token) held within its lease to now + lease."""
        answers = []
        for job_id, token in leases:
            row = self._held(job_id, token, now)
            if row is not None:
                row.lease = _Lease(now + lease, token, now + lease)
                self._job_heap.push(now + lease, job_id)
            answers.append(row is not None)
        return answers

    async def record_poll(self, job_id: str, update: PollUpdate, *, token: str, now: float) -> bool:
        """Store a non-final poll and end the lease; False when `token` holds no live lease."""
        row = self._held(job_id, token, now)
        if row is None:
            return False
        row.job = replace(
            row.job,
            next_poll_at=update.next_poll_at,
            polls=update.polls,
            transient_errors=update.transient_errors,
            snapshot=_snapshot_copy(update.snapshot),
        )
        row.lease = _Lease(update.next_poll_at)
        self._job_heap.push(update.next_poll_at, job_id)
        return True

    async def record_polls(self, updates: Sequence[tuple[str, str, PollUpdate]], *, now: float) -> list[bool]:
        """`record_poll` for each (job id, token, update), in order; nothing else runs in between."""
        return [await self.record_poll(job_id, update, token=token, now=now) for job_id, token, update in updates]

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
        """Set the final outcome, insert its deliveries and count it in its batch; False if final or not held."""
        row = self._held(job_id, token, now)
        if row is None:
            return False
        row.job = replace(
            row.job,
            outcome=Outcome(outcome),
            snapshot=_snapshot_copy(snapshot),
            polls=polls,
            detected_at=detected_at,
            errors=None if errors is None else _json_copy(dict(errors)),
        )
        row.lease = _Lease(row.job.next_poll_at)
        await self.add_deliveries(deliveries)
        if row.job.batch is not None:
            self._batches.count(row.job.batch, Outcome(outcome).value, now)
        return True

    async def mark_stuck(self, job_id: str, *, token: str, now: float, deliveries: Sequence[Delivery]) -> bool:
        """Set stuck_at and insert the warning's deliveries, once; the lease stays with the holder."""
        row = self._held(job_id, token, now)
        if row is None or row.job.stuck_at is not None:
            return False
        row.job = replace(row.job, stuck_at=now)
        await self.add_deliveries(deliveries)
        return True

    async def release_job(self, job_id: str, *, token: str) -> None:
        """Give a lease back unchanged; the token alone decides, so a stale holder frees nothing."""
        row = self._jobs.get(job_id)
        if row is not None and row.job.outcome is None and row.lease.token == token:
            row.lease = _Lease(row.job.next_poll_at)
            self._job_heap.push(row.job.next_poll_at, job_id)

    async def spread_overdue(self, *, now: float, window: float) -> int:
        """Reschedule overdue unfinished jobs evenly over [now, now + window); returns how many."""
        overdue = sorted(
            (row.lease.due_at, job_id)
            for job_id, row in self._jobs.items()
            if row.job.outcome is None and row.lease.due_at < now
        )
        for index, (_, job_id) in enumerate(overdue):
            row = self._jobs[job_id]
            when = now + window * index / len(overdue)
            row.job = replace(row.job, next_poll_at=when)
            # Only expired leases are overdue; like SQL and Redis, the stale token stays
            # (it can no longer write: its lease is over) until someone else claims the job.
            row.lease = _Lease(when, row.lease.token, row.lease.until)
            self._job_heap.push(when, job_id)
        self._compact()
        return len(overdue)

    async def next_job_due_at(self) -> float | None:
        """Earliest due time among unfinished jobs (a leased job counts at its lease expiry)."""
        return self._job_heap.peek(self._job_is_current)

    # --- batches ---------------------------------------------------------------

    async def get_batch(self, name: str) -> Batch | None:
        return self._batches.get(name)

    async def list_batches(
        self, *, phase: str | None = None, limit: int | None = None, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        """Batches ordered by (started_at, name), after the cursor; `phase` "open" or "finished"."""
        return self._batches.listed(phase, limit, after)

    async def batch_jobs(self, name: str) -> list[JobState]:
        """Every job of the batch, ordered by (added_at, id)."""
        return await self.list_jobs(batch=name)

    async def claim_settled_batches(
        self, *, now: float, settle: float, limit: int, owner: str, lease: float
    ) -> list[Batch]:
        """Open, all-final batches quiet for `settle` with no live lease, oldest quiet first, leased."""
        return self._batches.claim(cutoff=now - settle, now=now, limit=limit, owner=owner, lease=lease)

    async def finish_batch(
        self, name: str, *, token: str, now: float, summary_id: str, deliveries: Sequence[Delivery]
    ) -> bool:
        """Mark the held batch finished and insert its summary deliveries, together."""
        if not self._batches.finish(name, token=token, now=now, summary_id=summary_id):
            return False
        await self.add_deliveries(deliveries)
        return True

    async def renew_batches(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (batch name, token) held within its lease to now + lease."""
        return [self._batches.renew(name, token, now, lease) for name, token in leases]

    async def release_batch(self, name: str, *, token: str) -> None:
        """Give a batch claim back unchanged; a stale token frees nothing."""
        self._batches.release(name, token)

    async def batch_counts(self) -> dict[str, int]:
        """Batches by phase."""
        return self._batches.counts()

    # --- digests ----------------------------------------------------------------

    async def finished_jobs(self, *, since: float, until: float, limit: int = 10_000) -> list[JobState]:
        """Jobs whose outcome was detected in [since, until), oldest first."""
        found = [
            row.job
            for row in self._jobs.values()
            if row.job.detected_at is not None and row.job.outcome is not None and since <= row.job.detected_at < until
        ]
        return sorted(found, key=lambda j: (j.detected_at or 0.0, j.id))[: max(0, limit)]

    # --- retention and tombstones -----------------------------------------------

    async def purge_finished(self, *, before: float, now: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Delete at most `limit` settled final jobs detected before `before`, oldest first."""
        candidates = sorted(
            (row.job.detected_at, job_id)
            for job_id, row in self._jobs.items()
            if row.job.outcome is not None and row.job.detected_at is not None and row.job.detected_at < before
        )
        purged = 0
        for _, job_id in candidates:
            if purged >= limit:
                break
            if any(d.state is DeliveryState.PENDING for d in self._deliveries_of({job_id})):
                continue
            self._bury(job_id, now, TombstoneReason.FINISHED)
            purged += 1
        return purged

    async def tombstones(self, job_ids: Sequence[str]) -> Mapping[str, Tombstone]:
        return {job_id: self._tombstones[job_id] for job_id in job_ids if job_id in self._tombstones}

    async def purge_tombstones(self, *, before: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Forget at most `limit` tombstones buried before `before`, oldest first."""
        old = sorted((t.at, t.id) for t in self._tombstones.values() if t.at < before)[: max(0, limit)]
        for _, job_id in old:
            del self._tombstones[job_id]
        return len(old)

    # --- bookkeeping ----------------------------------------------------------

    async def counts(self) -> StoreCounts:
        jobs: dict[str, int] = dict.fromkeys([WATCHING, *(o.value for o in Outcome)], 0)
        for row in self._jobs.values():
            jobs[row.job.state] += 1
        deliveries: dict[str, int] = dict.fromkeys((s.value for s in DeliveryState), 0)
        for drow in self._deliveries.values():
            deliveries[drow.delivery.state.value] += 1
        return StoreCounts(jobs_by_state=jobs, deliveries_by_state=deliveries)

    def _compact(self) -> None:
        """Rebuild a heap once stale entries outnumber live ones, so memory stays bounded."""
        if len(self._job_heap) > 2 * len(self._jobs) + 64:
            self._job_heap.rebuild(
                (row.lease.due_at, job_id) for job_id, row in self._jobs.items() if row.job.outcome is None
            )
        self._compact_deliveries()
