"""In-process StateStore: dicts plus lazy-deletion heaps, for tests and the demo.

Values go through a JSON round trip on the way in, so the memory store hands
back exactly what SQLite and Redis would (lists, not tuples, inside events)
and a test written against it holds for the durable backends too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from watcher.models import (
    WATCHING,
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
from watcher.store.memory_rows import (
    _DeliveryRow,
    _DueHeap,
    _JobRow,
    _json_copy,
    _Lease,
    _snapshot_copy,
)
from watcher.store.tokens import new_token


class MemoryStore:
    """A StateStore kept in this process; lost on exit."""

    def __init__(self) -> None:
        self._jobs: dict[str, _JobRow] = {}
        self._deliveries: dict[str, _DeliveryRow] = {}
        self._tombstones: dict[str, Tombstone] = {}
        self._job_heap = _DueHeap()
        self._delivery_heap = _DueHeap()
        self._meta: dict[str, str] = {}

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the data stays for another open()."""

    async def ping(self) -> None:
        """Always reachable."""

    # --- jobs ---------------------------------------------------------------

    def _job_is_current(self, job_id: str, due_at: float) -> bool:
        row = self._jobs.get(job_id)
        return row is not None and row.job.outcome is None and row.lease.due_at == due_at

    def _delivery_is_current(self, delivery_id: str, due_at: float) -> bool:
        row = self._deliveries.get(delivery_id)
        return row is not None and row.delivery.state is DeliveryState.PENDING and row.lease.due_at == due_at

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
        job = JobState(
            id=ref.id,
            labels=_json_copy(dict(ref.labels)),
            notify=tuple(ref.notify) if ref.notify is not None else None,
            added_at=now,
            next_poll_at=first_poll_at,
        )
        self._jobs[ref.id] = _JobRow(job, _Lease(first_poll_at))
        self._job_heap.push(first_poll_at, ref.id)
        return True

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
    ) -> list[JobState]:
        """Jobs ordered by (added_at, id) after the cursor; `state` is "watching" or an outcome."""
        jobs = sorted((row.job for row in self._jobs.values()), key=lambda j: (j.added_at, j.id))
        if after is not None:
            jobs = [job for job in jobs if (job.added_at, job.id) > after]
        if state is not None:
            jobs = [job for job in jobs if job.state == state]
        return jobs if limit is None else jobs[: max(0, limit)]

    async def remove_job(self, job_id: str, *, now: float) -> bool:
        """Delete the job and its deliveries and leave a STOPPED tombstone."""
        return self._bury(job_id, now, TombstoneReason.STOPPED)

    def _bury(self, job_id: str, now: float, reason: TombstoneReason) -> bool:
        if self._jobs.pop(job_id, None) is None:
            return False
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
    ) -> bool:
        """Set the final outcome and insert its deliveries; False if final or not held."""
        row = self._held(job_id, token, now)
        if row is None:
            return False
        row.job = replace(
            row.job,
            outcome=Outcome(outcome),
            snapshot=_snapshot_copy(snapshot),
            polls=polls,
            detected_at=detected_at,
        )
        row.lease = _Lease(row.job.next_poll_at)
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

    # --- outbox -------------------------------------------------------------

    def _deliveries_of(self, job_ids: set[str] | None) -> list[Delivery]:
        found = [row.delivery for row in self._deliveries.values() if job_ids is None or row.delivery.job_id in job_ids]
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""
        added = 0
        for delivery in deliveries:
            if delivery.id in self._deliveries:
                continue
            stored = replace(
                delivery,
                event=_json_copy(dict(delivery.event)),
                state=DeliveryState(delivery.state),
                lease=None,
            )
            self._deliveries[delivery.id] = _DeliveryRow(stored, _Lease(stored.next_attempt_at))
            if stored.state is DeliveryState.PENDING:
                self._delivery_heap.push(stored.next_attempt_at, stored.id)
            added += 1
        return added

    def _lease_delivery(self, row: _DeliveryRow, owner: str, now: float, lease: float) -> Delivery:
        token, until = new_token(owner), now + lease
        row.lease = _Lease(until, token, until)
        self._delivery_heap.push(until, row.delivery.id)
        return replace(row.delivery, lease=Lease(token, until))

    async def claim_due_deliveries(
        self,
        *,
        now: float,
        limit: int,
        owner: str,
        lease: float,
        notifiers: Collection[str] | None = None,
    ) -> list[Delivery]:
        """Pending deliveries with next_attempt_at <= now and no live lease, to these notifiers."""
        claimed: list[Delivery] = []
        skipped: list[tuple[float, str]] = []
        while len(claimed) < limit:
            entry = self._delivery_heap.pop_due(now, self._delivery_is_current)
            if entry is None:
                break
            row = self._deliveries[entry[1]]
            if notifiers is not None and row.delivery.notifier not in notifiers:
                skipped.append(entry)  # another replica's: back in the heap, untouched
                continue
            claimed.append(self._lease_delivery(row, owner, now, lease))
        for due_at, delivery_id in skipped:
            self._delivery_heap.push(due_at, delivery_id)
        self._compact()
        return claimed

    async def claim_expired_deliveries(self, *, now: float, limit: int, owner: str, lease: float) -> list[Delivery]:
        """Pending deliveries past their deadline with no live lease, earliest deadline first."""
        expired = sorted(
            (row.delivery.deadline_at, row.delivery.id, row)
            for row in self._deliveries.values()
            if row.delivery.state is DeliveryState.PENDING
            and row.delivery.deadline_at <= now
            and (row.lease.until is None or row.lease.until <= now)
        )[: max(0, limit)]
        return [self._lease_delivery(row, owner, now, lease) for _, _, row in expired]

    def _held_delivery(self, delivery_id: str, token: str, now: float) -> _DeliveryRow | None:
        row = self._deliveries.get(delivery_id)
        if row is None or row.delivery.state is not DeliveryState.PENDING or not row.lease.held(token, now):
            return None
        return row

    async def renew_deliveries(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (delivery id, token) held within its lease to now + lease."""
        answers = []
        for delivery_id, token in leases:
            row = self._held_delivery(delivery_id, token, now)
            if row is not None:
                row.lease = _Lease(now + lease, token, now + lease)
                self._delivery_heap.push(now + lease, delivery_id)
            answers.append(row is not None)
        return answers

    async def record_delivery(
        self, delivery: Delivery, *, token: str, now: float, alerts: Sequence[Delivery] = ()
    ) -> bool:
        """Write the delivery's new state and end its lease, and insert `alerts`, together."""
        row = self._held_delivery(delivery.id, token, now)
        if row is None:
            return False
        row.delivery = replace(
            row.delivery,
            state=DeliveryState(delivery.state),
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_error=delivery.last_error,
        )
        row.lease = _Lease(delivery.next_attempt_at)
        if row.delivery.state is DeliveryState.PENDING:
            self._delivery_heap.push(delivery.next_attempt_at, delivery.id)
        await self.add_deliveries(alerts)
        return True

    async def release_delivery(self, delivery_id: str, *, token: str) -> None:
        """Give a delivery's lease back unchanged: due again at once."""
        row = self._deliveries.get(delivery_id)
        if row is not None and row.delivery.state is DeliveryState.PENDING and row.lease.token == token:
            row.lease = _Lease(row.delivery.next_attempt_at)
            self._delivery_heap.push(row.delivery.next_attempt_at, delivery_id)

    async def list_deliveries(
        self, job_ids: Iterable[str] | None = None, *, with_events: bool = True
    ) -> list[Delivery]:
        """Deliveries of these jobs (all when None), oldest first; events only when asked."""
        found = self._deliveries_of(None if job_ids is None else set(job_ids))
        return found if with_events else [replace(d, event={}) for d in found]

    async def next_delivery_due_at(self) -> float | None:
        """Earliest due time among pending deliveries (a leased one counts at its lease expiry)."""
        return self._delivery_heap.peek(self._delivery_is_current)

    # --- bookkeeping ----------------------------------------------------------

    async def counts(self) -> StoreCounts:
        jobs: dict[str, int] = dict.fromkeys([WATCHING, *(o.value for o in Outcome)], 0)
        for row in self._jobs.values():
            jobs[row.job.state] += 1
        deliveries: dict[str, int] = dict.fromkeys((s.value for s in DeliveryState), 0)
        for drow in self._deliveries.values():
            deliveries[drow.delivery.state.value] += 1
        return StoreCounts(jobs_by_state=jobs, deliveries_by_state=deliveries)

    async def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    async def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        """Compare-and-set `key`, inserting `deliveries` only when it succeeds."""
        if self._meta.get(key) != expected:
            return False
        self._meta[key] = value
        await self.add_deliveries(deliveries)
        return True

    def _compact(self) -> None:
        """Rebuild a heap once stale entries outnumber live ones, so memory stays bounded."""
        if len(self._job_heap) > 2 * len(self._jobs) + 64:
            self._job_heap.rebuild(
                (row.lease.due_at, job_id) for job_id, row in self._jobs.items() if row.job.outcome is None
            )
        if len(self._delivery_heap) > 2 * len(self._deliveries) + 64:
            self._delivery_heap.rebuild(
                (row.lease.due_at, delivery_id)
                for delivery_id, row in self._deliveries.items()
                if row.delivery.state is DeliveryState.PENDING
            )
