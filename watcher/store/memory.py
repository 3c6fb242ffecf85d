"""In-process StateStore: dicts plus lazy-deletion heaps, for tests and the demo.

Values go through a JSON round trip on the way in, so the memory store hands
back exactly what SQLite and Redis would (lists, not tuples, inside events)
and a test written against it holds for the durable backends too.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

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


def _json_copy(value: Any) -> Any:
    """A deep copy with the types JSON gives back (what the durable stores return)."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def _snapshot_copy(snapshot: Snapshot | None) -> Snapshot | None:
    return None if snapshot is None else Snapshot.from_dict(_json_copy(snapshot.to_dict()))


@dataclass(slots=True)
class _Lease:
    """A mutable wrapper: the record plus who holds it and until when it is hidden."""

    due_at: float  # next_poll_at / next_attempt_at, or the lease expiry while leased
    owner: str | None = None


@dataclass(slots=True)
class _JobRow:
    job: JobState
    lease: _Lease


@dataclass(slots=True)
class _DeliveryRow:
    delivery: Delivery
    lease: _Lease


_IsCurrent = Callable[[str, float], bool]


class _DueHeap:
    """A min-heap of (due_at, id); stale entries are dropped when they surface."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due_at: float, item_id: str) -> None:
        heapq.heappush(self._heap, (due_at, item_id))

    def pop_due(self, now: float, is_current: _IsCurrent) -> str | None:
        """Pop the earliest live entry due at `now`, discarding stale ones on the way."""
        while self._heap and self._heap[0][0] <= now:
            due_at, item_id = heapq.heappop(self._heap)
            if is_current(item_id, due_at):
                return item_id
        return None

    def peek(self, is_current: _IsCurrent) -> float | None:
        while self._heap:
            due_at, item_id = self._heap[0]
            if is_current(item_id, due_at):
                return due_at
            heapq.heappop(self._heap)
        return None

    def rebuild(self, entries: Iterable[tuple[float, str]]) -> None:
        self._heap = list(entries)
        heapq.heapify(self._heap)


class MemoryStore:
    """A StateStore kept in this process; lost on exit."""

    def __init__(self) -> None:
        self._jobs: dict[str, _JobRow] = {}
        self._deliveries: dict[str, _DeliveryRow] = {}
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
        return (
            row is not None
            and row.delivery.state is DeliveryState.PENDING
            and row.lease.due_at == due_at
        )

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float) -> bool:
        """Track a job; False (and nothing changes) when the id is already known."""
        if ref.id in self._jobs:
            return False
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

    async def add_jobs(self, refs: Sequence[JobRef], *, now: float, first_poll_at: float) -> list[bool]:
        """`add_job` for each ref, in order; nothing else runs in between."""
        return [await self.add_job(ref, now=now, first_poll_at=first_poll_at) for ref in refs]

    async def get_job(self, job_id: str) -> JobState | None:
        row = self._jobs.get(job_id)
        return None if row is None else row.job

    async def list_jobs(
        self, *, state: str | None = None, limit: int | None = None
    ) -> list[JobState]:
        """Jobs ordered by added_at; `state` is "watching" or an outcome value."""
        jobs = sorted((row.job for row in self._jobs.values()), key=lambda j: (j.added_at, j.id))
        if state is not None:
            jobs = [job for job in jobs if job.state == state]
        return jobs if limit is None else jobs[: max(0, limit)]

    async def remove_job(self, job_id: str) -> bool:
        """Delete the job and every delivery of it, so no orphaned outbox rows remain."""
        if self._jobs.pop(job_id, None) is None:
            return False
        for delivery_id in [d.id for d in self._deliveries_of({job_id})]:
            del self._deliveries[delivery_id]
        return True

    async def claim_due_jobs(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first."""
        claimed: list[JobState] = []
        while len(claimed) < limit:
            job_id = self._job_heap.pop_due(now, self._job_is_current)
            if job_id is None:
                break
            row = self._jobs[job_id]
            # Hide the job until the lease ends: then it is due again for anyone.
            row.lease = _Lease(now + lease, owner)
            self._job_heap.push(now + lease, job_id)
            claimed.append(row.job)
        self._compact()
        return claimed

    def _held(self, job_id: str, owner: str) -> _JobRow | None:
        row = self._jobs.get(job_id)
        if row is None or row.job.outcome is not None or row.lease.owner != owner:
            return None
        return row

    async def record_poll(self, job_id: str, update: PollUpdate, *, owner: str) -> bool:
        """Store a non-final poll and release the lease; False if `owner` lost the lease."""
        row = self._held(job_id, owner)
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

    async def record_polls(self, updates: Sequence[tuple[str, PollUpdate]], *, owner: str) -> list[bool]:
        """`record_poll` for each (job id, update), in order; nothing else runs in between."""
        return [await self.record_poll(job_id, update, owner=owner) for job_id, update in updates]

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
        """Set the final outcome and insert its deliveries; False if final or lease lost."""
        row = self._held(job_id, owner)
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

    async def release_job(self, job_id: str, *, owner: str) -> None:
        """Give a lease back unchanged (shutdown with the poll not made)."""
        row = self._held(job_id, owner)
        if row is not None:
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
            # Only expired leases are overdue; like SQL and Redis, the stale owner stays
            # until someone else claims the job.
            row.lease = _Lease(when, row.lease.owner)
            self._job_heap.push(when, job_id)
        self._compact()
        return len(overdue)

    async def next_job_due_at(self) -> float | None:
        """Earliest due time among unfinished jobs (a leased job counts at its lease expiry)."""
        return self._job_heap.peek(self._job_is_current)

    async def purge_finished(self, *, before: float) -> int:
        """Delete final jobs detected before `before` whose deliveries are all settled."""
        purged = 0
        for job_id, row in list(self._jobs.items()):
            detected = row.job.detected_at
            if row.job.outcome is None or detected is None or detected >= before:
                continue
            deliveries = self._deliveries_of({job_id})
            if any(d.state is DeliveryState.PENDING for d in deliveries):
                continue
            await self.remove_job(job_id)
            purged += 1
        return purged

    # --- outbox -------------------------------------------------------------

    def _deliveries_of(self, job_ids: set[str] | None) -> list[Delivery]:
        found = [
            row.delivery
            for row in self._deliveries.values()
            if job_ids is None or row.delivery.job_id in job_ids
        ]
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
            )
            self._deliveries[delivery.id] = _DeliveryRow(stored, _Lease(stored.next_attempt_at))
            if stored.state is DeliveryState.PENDING:
                self._delivery_heap.push(stored.next_attempt_at, stored.id)
            added += 1
        return added

    async def claim_due_deliveries(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[Delivery]:
        """Pending deliveries with next_attempt_at <= now and no live lease."""
        claimed: list[Delivery] = []
        while len(claimed) < limit:
            delivery_id = self._delivery_heap.pop_due(now, self._delivery_is_current)
            if delivery_id is None:
                break
            row = self._deliveries[delivery_id]
            row.lease = _Lease(now + lease, owner)
            self._delivery_heap.push(now + lease, delivery_id)
            claimed.append(row.delivery)
        self._compact()
        return claimed

    async def record_delivery(self, delivery: Delivery, *, owner: str) -> bool:
        """Write state, attempts, next_attempt_at and last_error; release the lease."""
        row = self._deliveries.get(delivery.id)
        if row is None or row.lease.owner != owner:
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
        return True

    async def list_deliveries(self, job_ids: Iterable[str] | None = None) -> list[Delivery]:
        """Deliveries of these jobs (all deliveries when None), oldest first."""
        return self._deliveries_of(None if job_ids is None else set(job_ids))

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

    def _compact(self) -> None:
        """Rebuild a heap once stale entries outnumber live ones, so memory stays bounded."""
        if len(self._job_heap) > 2 * len(self._jobs) + 64:
            self._job_heap.rebuild(
                (row.lease.due_at, job_id)
                for job_id, row in self._jobs.items()
                if row.job.outcome is None
            )
        if len(self._delivery_heap) > 2 * len(self._deliveries) + 64:
            self._delivery_heap.rebuild(
                (row.lease.due_at, delivery_id)
                for delivery_id, row in self._deliveries.items()
                if row.delivery.state is DeliveryState.PENDING
            )
