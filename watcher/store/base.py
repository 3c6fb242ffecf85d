"""The StateStore protocol: every backend (memory, SQLite, Redis) passes one contract suite."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from watcher.models import Delivery, JobRef, JobState, Outcome, PollUpdate, Snapshot, StoreCounts


class StateStore(Protocol):
    """Durable jobs and a delivery outbox, shared safely by several replicas.

    Claims take a lease: a claimed job or delivery is invisible to other claims
    until `now + lease`; recording a result checks the owner still holds it.
    A final outcome and its deliveries are written in one transaction.
    All times are epoch seconds supplied by the caller (the engine's clock).
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    # --- jobs ---------------------------------------------------------------

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float) -> bool:
        """Track a job; False (and nothing changes) when the id is already known."""

    async def get_job(self, job_id: str) -> JobState | None: ...

    async def list_jobs(
        self, *, state: str | None = None, limit: int | None = None
    ) -> list[JobState]:
        """Jobs ordered by added_at; `state` is "watching" or an outcome value."""

    async def remove_job(self, job_id: str) -> bool:
        """Stop watching: delete the job and its pending deliveries. False if unknown."""

    async def claim_due_jobs(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first."""

    async def record_poll(self, job_id: str, update: PollUpdate, *, owner: str) -> bool:
        """Store a non-final poll and release the lease; False if `owner` lost the lease."""

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
        """Atomically set the final outcome and insert its deliveries; False if already final
        or the lease was lost (then nothing is written)."""

    async def release_job(self, job_id: str, *, owner: str) -> None:
        """Give a lease back unchanged (shutdown with the poll not made)."""

    async def spread_overdue(self, *, now: float, window: float) -> int:
        """Reschedule overdue unfinished jobs evenly over [now, now + window); returns how many."""

    async def next_job_due_at(self) -> float | None:
        """Earliest next_poll_at among unfinished jobs, or None."""

    async def purge_finished(self, *, before: float) -> int:
        """Delete final jobs detected before `before` whose deliveries are all settled."""

    # --- outbox -------------------------------------------------------------

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""

    async def claim_due_deliveries(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[Delivery]:
        """Pending deliveries with next_attempt_at <= now and no live lease."""

    async def record_delivery(self, delivery: Delivery, *, owner: str) -> bool:
        """Write state, attempts, next_attempt_at and last_error; release the lease."""

    async def list_deliveries(self, job_ids: Iterable[str] | None = None) -> list[Delivery]:
        """Deliveries of these jobs (all deliveries when None), oldest first."""

    async def next_delivery_due_at(self) -> float | None: ...

    # --- bookkeeping ----------------------------------------------------------

    async def counts(self) -> StoreCounts: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...


@runtime_checkable
class RecordsPolls(Protocol):
    """Optional for a StateStore: many non-final polls recorded in one go (every built-in store has it).

    The engine records the polls that finish together with one call when the store
    offers this, and with one `record_poll` each otherwise.
    """

    async def record_polls(self, updates: Sequence[tuple[str, PollUpdate]], *, owner: str) -> list[bool]:
        """`record_poll` for each (job id, update), in order; the answers in the same order.

        Atomic as one `record_poll` is: when this raises StoreUnavailable, none was written.
        """
        ...


@runtime_checkable
class AddsJobs(Protocol):
    """Optional for a StateStore: many jobs added in one go (every built-in store has it).

    A job file of 100,000 jobs is added in batches with this when the store offers it,
    and with one `add_job` each otherwise.
    """

    async def add_jobs(self, refs: Sequence[JobRef], *, now: float, first_poll_at: float) -> list[bool]:
        """`add_job` for each ref, in order; the answers in the same order.

        Atomic as one `add_job` is: when this raises StoreUnavailable, none was added.
        """
        ...
