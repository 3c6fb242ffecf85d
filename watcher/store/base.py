"""The StateStore protocol: every backend (memory, SQLite, Redis) passes one contract suite.

Invariants every backend keeps (each has a contract test that breaks when it is removed):

- A claim has a token and a lease: a claimed job or delivery is handed out with
  `lease=Lease(token, until)` and is invisible to other claims until `until`.
- A write by a holder (record, renew) is accepted only with the current token and
  before `until` (the store's clock); otherwise it changes nothing and answers False.
  A release needs the token only, so a stale holder can never free a fresh claim.
- A final outcome and its deliveries are written in one transaction; so are a delivery's
  final state and the alerts it causes, and a meta transition and its alerts.
- A job stopped (`remove_job`) or purged (`purge_finished`) leaves a tombstone; `add_job`
  skips a tombstoned id unless `again=True`.
- Times are epoch seconds from the caller's clock, except lease expiries where the
  backend keeps its own clock (Redis: the server's TIME), so replicas with skewed clocks
  cannot shorten each other's leases.

Errors: StoreUnavailable for what may pass (locked, busy, disk full, read-only, connection
lost, the file replaced under us); StoreBroken for what will not (corrupt, unknown schema).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from watcher.models import (
    Batch,
    Delivery,
    JobRef,
    JobState,
    Outcome,
    PollUpdate,
    Snapshot,
    StoreCounts,
    Tombstone,
    TombstoneReason,
)

#: How many rows one housekeeping call touches at most: short transactions, other writers let in.
HOUSEKEEPING_BATCH = 1000


class StateStore(Protocol):
    """Durable jobs, tombstones and a delivery outbox, shared safely by several replicas."""

    async def open(self) -> None:
        """Connect and create or migrate the schema (StoreBroken when that cannot work)."""

    async def close(self) -> None: ...

    def hurry(self) -> None:
        """Shutting down: from now on no call may wait long for anything outside this process
        (SQLite: another process's write lock; Redis calls have their own timeouts)."""

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be used now (SQLite: also when its
        file was deleted or replaced since `open`), StoreBroken when it never will."""

    # --- jobs ---------------------------------------------------------------

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float, again: bool = False) -> bool:
        """Track a job; True when a new watch starts.

        False (nothing changes) when the id is already tracked, or tombstoned and `again` is
        False. With `again`, a tombstone is lifted and a final job is replaced by a fresh
        watch (new added_at, so new delivery ids); a job still being watched stays as it is.
        The ref's kind and account are kept with the job: a known id keeps its own, whatever
        kind an add names (callers compare and tell, see sources.base.same_job).
        """

    async def get_job(self, job_id: str) -> JobState | None: ...

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
        batch: str | None = None,
    ) -> list[JobState]:
        """Jobs ordered by (added_at, id), starting after the cursor `after`;
        `state` is "watching" or an outcome value; `batch` keeps that batch's jobs, read
        through a per-batch index (never a scan of every job)."""

    async def remove_job(self, job_id: str, *, now: float) -> bool:
        """Stop watching: delete the job and its deliveries, leave a STOPPED tombstone. False if unknown."""

    async def claim_due_jobs(self, *, now: float, limit: int, owner: str, lease: float) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first, each with a new Lease."""

    async def renew_jobs(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (job id, token) held within its lease to now + lease; the answers in order."""

    async def record_poll(self, job_id: str, update: PollUpdate, *, token: str, now: float) -> bool:
        """Store a non-final poll and end the lease; False when `token` does not hold a live lease."""

    async def record_polls(self, updates: Sequence[tuple[str, str, PollUpdate]], *, now: float) -> list[bool]:
        """`record_poll` for each (job id, token, update) in one transaction; the answers in order."""

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
        """Atomically set the final outcome (and its errors-file summary), insert its deliveries
        and count it in its batch; False (nothing written) when already final or `token` does
        not hold a live lease."""

    async def mark_stuck(self, job_id: str, *, token: str, now: float, deliveries: Sequence[Delivery]) -> bool:
        """Set the job's stuck_at and insert its stuck-warning deliveries in one transaction, once:
        False (nothing written) when already marked, final, or `token` holds no live lease."""

    async def release_job(self, job_id: str, *, token: str) -> None:
        """Give a lease back unchanged (work cancelled): due again at once for anyone."""

    async def spread_overdue(self, *, now: float, window: float) -> int:
        """Reschedule overdue unfinished jobs evenly over [now, now + window); returns how many."""

    async def next_job_due_at(self) -> float | None:
        """Earliest next_poll_at among unfinished jobs, or None."""

    # --- batches ---------------------------------------------------------------
    #
    # A job's batch is counted in the transaction that adds it (`add_job` joins it: jobs + 1,
    # and a finished batch reopens) and in the one that records its outcome (final + 1,
    # outcomes[outcome] + 1). Any change to members or outcomes (join, outcome, removal) sets
    # quiet_since = now and cancels a claim on the batch in the same transaction; purge_finished
    # keeps the counts (the summary covered those jobs); a batch left with no jobs is forgotten
    # unless it was summarised.

    async def get_batch(self, name: str) -> Batch | None: ...

    async def list_batches(
        self, *, phase: str | None = None, limit: int | None = None, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        """Batches ordered by (started_at, name), after the cursor; `phase` "open" or "finished"."""

    async def batch_jobs(self, name: str) -> list[JobState]:
        """Every job of the batch, ordered by (added_at, id)."""

    async def claim_settled_batches(
        self, *, now: float, settle: float, limit: int, owner: str, lease: float
    ) -> list[Batch]:
        """Open batches whose jobs are all final and whose quiet_since <= now - settle, with no
        live lease, oldest quiet first, each with a new Lease."""

    async def finish_batch(
        self, name: str, *, token: str, now: float, summary_id: str, deliveries: Sequence[Delivery]
    ) -> bool:
        """Mark the batch finished (finished_at = now, summaries + 1, last_summary_id) and insert
        its summary deliveries in one transaction; False (nothing written) when `token` holds no
        live lease or the batch changed since the claim (a job joined, or not all are final)."""

    async def renew_batches(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (batch name, token) held within its lease to now + lease; the answers in order."""

    async def release_batch(self, name: str, *, token: str) -> None:
        """Give a batch claim back unchanged."""

    async def batch_counts(self) -> Mapping[str, int]:
        """Batches by phase ("open", "finished"), for metrics; never reads the batch rows themselves."""

    # --- digests ----------------------------------------------------------------

    async def finished_jobs(self, *, since: float, until: float, limit: int = 10_000) -> list[JobState]:
        """Jobs whose outcome was detected in [since, until), oldest first."""

    async def dead_deliveries(self, *, since: float, until: float, limit: int = 1000) -> list[Delivery]:
        """Dead deliveries created in [since, until), without their event bodies."""

    # --- retention and tombstones -----------------------------------------------

    async def purge_finished(self, *, before: float, now: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Delete at most `limit` final jobs detected before `before` whose deliveries are all
        settled, each leaving a FINISHED tombstone; returns how many (call again while == limit)."""

    async def tombstones(self, job_ids: Sequence[str]) -> Mapping[str, Tombstone]:
        """The tombstones among these ids."""

    async def purge_tombstones(self, *, before: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Forget at most `limit` tombstones buried before `before`; returns how many."""

    # --- outbox -------------------------------------------------------------

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""

    async def claim_due_deliveries(
        self,
        *,
        now: float,
        limit: int,
        owner: str,
        lease: float,
        notifiers: Collection[str] | None = None,
    ) -> list[Delivery]:
        """Pending deliveries with next_attempt_at <= now and no live lease, each with a new Lease.

        `notifiers`: only deliveries to these (a replica leaves the others to a replica that
        knows them); None: any. Deliveries to other notifiers never hide due ones behind them.
        """

    async def claim_expired_deliveries(self, *, now: float, limit: int, owner: str, lease: float) -> list[Delivery]:
        """Pending deliveries to any notifier whose deadline_at <= now and no live lease, leased:
        nobody delivered them in time, so the caller records them dead (with alerts)."""

    async def renew_deliveries(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (delivery id, token) held within its lease to now + lease; the answers in order."""

    async def record_delivery(
        self, delivery: Delivery, *, token: str, now: float, alerts: Sequence[Delivery] = ()
    ) -> bool:
        """Write state, attempts, next_attempt_at and last_error, end the lease, and insert
        `alerts` (ids already present skipped), all in one transaction; False (nothing
        written) when `token` does not hold a live lease."""

    async def record_deliveries(
        self, records: Sequence[tuple[Delivery, str, Sequence[Delivery]]], *, now: float
    ) -> list[bool]:
        """`record_delivery` for each (delivery, token, alerts), in one transaction (Redis: one
        script per chunk); each record's alerts are inserted only when its row changed; the
        answers in order."""

    async def release_delivery(self, delivery_id: str, *, token: str) -> None:
        """Give a delivery's lease back unchanged (work cancelled): due again at once."""

    async def list_deliveries(
        self, job_ids: Iterable[str] | None = None, *, with_events: bool = True
    ) -> list[Delivery]:
        """Deliveries of these jobs (all when None), oldest first; without their event bodies
        (`event` is {}) unless `with_events`."""

    async def next_delivery_due_at(self) -> float | None: ...

    # --- bookkeeping ----------------------------------------------------------

    async def counts(self) -> StoreCounts: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        """Set `key` to `value` and insert `deliveries`, in one transaction, only if it holds
        `expected` now (None: absent); False (nothing written) otherwise."""


@runtime_checkable
class AddsJobs(Protocol):
    """Optional for a StateStore: many jobs added in one go (every built-in store has it)."""

    async def add_jobs(
        self, refs: Sequence[JobRef], *, now: float, first_poll_at: float, again: bool = False
    ) -> list[bool]:
        """`add_job` for each ref, in order, in one transaction; the answers in the same order."""
        ...


__all__ = [
    "HOUSEKEEPING_BATCH",
    "AddsJobs",
    "Batch",
    "StateStore",
    "Tombstone",
    "TombstoneReason",
]
