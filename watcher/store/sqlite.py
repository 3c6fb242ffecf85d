"""SQLite StateStore: the default, one file shared by the daemon and the CLI.

The stdlib driver is called straight from the event loop: every query hits an
index and takes well under a millisecond, and each call finishes its
transaction before it returns, so no lock is ever held across an `await`.
Other processes (`import-watcher add`) are serialised by WAL + busy_timeout.

Leases: `due_at` is next_poll_at (or next_attempt_at) while a row is free and
the lease expiry while it is claimed, so one partial index answers "what is
due and unclaimed", and an expired lease simply becomes due again.

Around this module: sqlite_schema (tables, migrations), sqlite_db (the connection
and its transactions) and sqlite_rows (rows to models and back, and their memos).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
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
from watcher.store.sqlite_db import BUSY_TIMEOUT_MS, SqliteDatabase
from watcher.store.sqlite_rows import (
    _DELIVERY_COLUMNS,
    _INSERT_DELIVERY,
    _JOB_COLUMNS,
    LABELS_MEMO,
    SNAPSHOT_MEMO,
    _delivery,
    _delivery_params,
    _dumps,
    _job,
    _LabelsMemo,
    _snapshot_json,
    _SnapshotMemo,
)
from watcher.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, migrate

# Re-exported: these lived here before the schema, connection and row helpers moved out.
__all__ = [
    "BUSY_TIMEOUT_MS",
    "LABELS_MEMO",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SNAPSHOT_MEMO",
    "SPREAD_CHUNK",
    "SqliteStore",
    "migrate",
]

_ADD_JOB = (
    "INSERT OR IGNORE INTO jobs (id, labels, notify, added_at, next_poll_at, due_at) VALUES (?, ?, ?, ?, ?, ?)"
)


def _add_params(ref: JobRef, now: float, first_poll_at: float) -> tuple[Any, ...]:
    notify = None if ref.notify is None else _dumps(list(ref.notify))
    return (ref.id, _dumps(dict(ref.labels)), notify, now, first_poll_at, first_poll_at)


_RECORD_POLL = (
    "UPDATE jobs SET next_poll_at = ?, due_at = ?, polls = ?, transient_errors = ?,"
    " snapshot = ?, lease_owner = NULL, lease_until = NULL"
    " WHERE id = ? AND outcome IS NULL AND lease_owner = ?"
)

SPREAD_CHUNK = 10_000
_SPREAD_CHUNK = (
    "UPDATE jobs SET next_poll_at = o.at, due_at = o.at FROM ("
    " SELECT id, ? + ? * (? + row_number() OVER (ORDER BY due_at, id) - 1) / ? AS at"
    " FROM (SELECT id, due_at FROM jobs WHERE outcome IS NULL AND due_at < ?"
    " ORDER BY due_at, id LIMIT ?)"
    ") AS o WHERE jobs.id = o.id"
)


class SqliteStore(SqliteDatabase):
    """A StateStore in one SQLite file (or ":memory:")."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        # record_poll group commit: the polls recorded in one event-loop iteration.
        self._poll_batch: list[tuple[tuple[Any, ...], asyncio.Future[bool], Snapshot | None]] = []
        self._snapshots = _SnapshotMemo()
        self._labels = _LabelsMemo()

    # --- plumbing (the rest is SqliteDatabase's) ------------------------------

    async def close(self) -> None:
        if self._poll_batch:
            self._write_polls()
        await super().close()
        self._snapshots.clear()

    # --- jobs ---------------------------------------------------------------

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float) -> bool:
        """Track a job; False (and nothing changes) when the id is already known."""
        return self._update(_ADD_JOB, _add_params(ref, now, first_poll_at)) == 1

    async def add_jobs(self, refs: Sequence[JobRef], *, now: float, first_poll_at: float) -> list[bool]:
        """`add_job` for each ref, in order, in one transaction."""
        if not refs:
            return []
        with self._write() as conn:
            execute = conn.cursor().execute
            return [execute(_ADD_JOB, _add_params(ref, now, first_poll_at)).rowcount == 1 for ref in refs]

    async def get_job(self, job_id: str) -> JobState | None:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?"  # noqa: S608
        rows = self._query(sql, (job_id,))
        return _job(rows[0], self._labels) if rows else None

    async def list_jobs(
        self, *, state: str | None = None, limit: int | None = None
    ) -> list[JobState]:
        """Jobs ordered by added_at; `state` is "watching" or an outcome value."""
        where, params = "", []
        if state == WATCHING:
            where = "WHERE outcome IS NULL"
        elif state is not None:
            where, params = "WHERE outcome = ?", [state]
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY added_at, id LIMIT ?"  # noqa: S608
        rows = self._query(sql, [*params, -1 if limit is None else max(0, limit)])
        return [_job(row, self._labels) for row in rows]

    async def remove_job(self, job_id: str) -> bool:
        """Delete the job and every delivery of it, so no orphaned outbox rows remain."""
        with self._write() as conn:
            if conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 0:
                return False
            conn.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
        self._snapshots.forget(job_id)
        return True

    async def claim_due_jobs(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first."""
        with self._write() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None  # plain tuples: _job reads by position
            rows = cursor.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE outcome IS NULL AND due_at <= ?"  # noqa: S608
                " ORDER BY due_at, id LIMIT ?",
                (now, max(0, limit)),
            ).fetchall()
            until = now + lease
            conn.executemany(
                "UPDATE jobs SET lease_owner = ?, lease_until = ?, due_at = ? WHERE id = ?",
                [(owner, until, until, row[0]) for row in rows],
            )
        snapshots, labels = self._snapshots, self._labels
        return [_job(row, labels, snapshots.snapshot(row[0], row[7])) for row in rows]

    async def record_poll(self, job_id: str, update: PollUpdate, *, owner: str) -> bool:
        """Store a non-final poll and release the lease; False if `owner` lost the lease.

        Group commit: the polls recorded during one event-loop iteration are written in
        one transaction at the start of the next, and each call returns once that
        transaction has committed, with its own answer. A busy engine finishes many polls
        per iteration, and a commit each was the largest share of a poll's CPU. The update is
        written even if the caller is cancelled while it waits, as when the write was
        synchronous.
        """
        params = self._poll_params(job_id, update, owner)
        self._db  # noqa: B018 - raise StoreUnavailable now if the store is closed
        loop = asyncio.get_running_loop()
        written: asyncio.Future[bool] = loop.create_future()
        self._poll_batch.append((params, written, update.snapshot))
        if len(self._poll_batch) == 1:
            loop.call_soon(self._write_polls)
        return await written

    async def record_polls(self, updates: Sequence[tuple[str, PollUpdate]], *, owner: str) -> list[bool]:
        """`record_poll` for each (job id, update) in one transaction; False where `owner` lost the lease."""
        if not updates:
            return []
        return self._write_poll_rows(
            [(self._poll_params(job_id, update, owner), update.snapshot) for job_id, update in updates]
        )

    def _poll_params(self, job_id: str, update: PollUpdate, owner: str) -> tuple[Any, ...]:
        """_RECORD_POLL's parameters; the snapshot text is the remembered one when it is unchanged."""
        return (
            update.next_poll_at, update.next_poll_at, update.polls, update.transient_errors,
            self._snapshots.text(job_id, update.snapshot), job_id, owner,
        )  # fmt: skip

    def _write_poll_rows(self, rows: Sequence[tuple[tuple[Any, ...], Snapshot | None]]) -> list[bool]:
        """Run _RECORD_POLL for each (params, snapshot) in one transaction; remember what was written."""
        with self._write() as conn:
            execute = conn.cursor().execute  # one cursor for the batch, not one per row
            changed = [execute(_RECORD_POLL, params).rowcount == 1 for params, _ in rows]
        remember = self._snapshots.remember
        for (params, snapshot), ok in zip(rows, changed, strict=True):
            if ok:
                remember(params[5], params[4], snapshot)
        return changed

    def _write_polls(self) -> None:
        """Write every queued record_poll in one transaction and answer each caller."""
        batch, self._poll_batch = self._poll_batch, []
        if not batch:
            return
        try:
            changed = self._write_poll_rows([(params, snapshot) for params, _, snapshot in batch])
        except BaseException as exc:
            for _, written, _ in batch:
                if not written.done():
                    written.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, written, _), ok in zip(batch, changed, strict=True):
            if not written.done():
                written.set_result(ok)

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
        """Set the final outcome and insert its deliveries in one transaction."""
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE jobs SET outcome = ?, snapshot = ?, polls = ?, detected_at = ?,"
                " lease_owner = NULL, lease_until = NULL"
                " WHERE id = ? AND outcome IS NULL AND lease_owner = ?",
                (Outcome(outcome).value, _snapshot_json(snapshot), polls, detected_at,
                 job_id, owner),
            ).rowcount  # fmt: skip
            if changed == 1:
                conn.executemany(_INSERT_DELIVERY, [_delivery_params(d) for d in deliveries])
        if changed == 1:
            self._snapshots.forget(job_id)  # final: never claimed again
        return changed == 1

    async def release_job(self, job_id: str, *, owner: str) -> None:
        """Give a lease back unchanged (shutdown with the poll not made)."""
        self._update(
            "UPDATE jobs SET due_at = next_poll_at, lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND outcome IS NULL AND lease_owner = ?",
            (job_id, owner),
        )

    async def spread_overdue(self, *, now: float, window: float) -> int:
        """Reschedule overdue unfinished jobs evenly over [now, now + window); returns how many."""
        total = self._query(
            "SELECT count(*) FROM jobs WHERE outcome IS NULL AND due_at < ?", (now,)
        )[0][0]
        done = 0
        # Row k of `total` (in due order) goes to now + window * k / total: the backlog
        # keeps its order but loses its burst. Chunks bound how long one transaction
        # holds the write lock and the event loop; placed rows are no longer overdue.
        while done < total:
            with self._write() as conn:
                params = (now, window, done, total, now, SPREAD_CHUNK)
                moved: int = conn.execute(_SPREAD_CHUNK, params).rowcount
            if moved == 0:
                break
            done += moved
            await asyncio.sleep(0)
        return done

    async def next_job_due_at(self) -> float | None:
        """Earliest due time among unfinished jobs (a leased job counts at its lease expiry)."""
        rows = self._query("SELECT min(due_at) FROM jobs WHERE outcome IS NULL")
        value = rows[0][0]
        return None if value is None else float(value)

    async def purge_finished(self, *, before: float) -> int:
        """Delete final jobs detected before `before` whose deliveries are all settled."""
        # Deleting the deliveries first cannot change which jobs qualify: only
        # deliveries of already-qualifying jobs (all settled) are removed.
        qualifies = (
            "outcome IS NOT NULL AND detected_at < ? AND NOT EXISTS ("
            " SELECT 1 FROM deliveries d WHERE d.job_id = jobs.id AND d.state = 'pending')"
        )
        with self._write() as conn:
            conn.execute(
                f"DELETE FROM deliveries WHERE job_id IN (SELECT id FROM jobs WHERE {qualifies})",  # noqa: S608
                (before,),
            )
            purged: int = conn.execute(f"DELETE FROM jobs WHERE {qualifies}", (before,)).rowcount  # noqa: S608
        return purged

    # --- outbox -------------------------------------------------------------

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""
        params = [_delivery_params(d) for d in deliveries]
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT_DELIVERY, params)
            return conn.total_changes - before

    async def claim_due_deliveries(
        self, *, now: float, limit: int, owner: str, lease: float
    ) -> list[Delivery]:
        """Pending deliveries with next_attempt_at <= now and no live lease."""
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries"  # noqa: S608
                " WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, id LIMIT ?",
                (now, max(0, limit)),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET lease_owner = ?, lease_until = ?, due_at = ? WHERE id = ?",
                [(owner, now + lease, now + lease, row["id"]) for row in rows],
            )
        return [_delivery(row) for row in rows]

    async def record_delivery(self, delivery: Delivery, *, owner: str) -> bool:
        """Write state, attempts, next_attempt_at and last_error; release the lease."""
        changed = self._update(
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, due_at = ?,"
            " last_error = ?, lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND lease_owner = ?",
            (
                DeliveryState(delivery.state).value, delivery.attempts, delivery.next_attempt_at,
                delivery.next_attempt_at, delivery.last_error, delivery.id, owner,
            ),
        )  # fmt: skip
        return changed == 1

    async def list_deliveries(self, job_ids: Iterable[str] | None = None) -> list[Delivery]:
        """Deliveries of these jobs (all deliveries when None), oldest first."""
        if job_ids is None:
            rows = self._query(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries ORDER BY created_at, id"  # noqa: S608
            )
            return [_delivery(row) for row in rows]
        found: list[Delivery] = []
        ids = sorted(set(job_ids))
        # Chunks stay under SQLite's bound-parameter limit on old builds (999).
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE job_id IN ({marks})",  # noqa: S608
                chunk,
            )
            found.extend(_delivery(row) for row in rows)
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def next_delivery_due_at(self) -> float | None:
        """Earliest due time among pending deliveries (a leased one counts at its lease expiry)."""
        value = self._query("SELECT min(due_at) FROM deliveries WHERE state = 'pending'")[0][0]
        return None if value is None else float(value)

    # --- bookkeeping ----------------------------------------------------------

    async def counts(self) -> StoreCounts:
        jobs: dict[str, int] = dict.fromkeys([WATCHING, *(o.value for o in Outcome)], 0)
        for row in self._query(
            "SELECT coalesce(outcome, ?), count(*) FROM jobs GROUP BY outcome", (WATCHING,)
        ):
            jobs[row[0]] = row[1]
        deliveries: dict[str, int] = dict.fromkeys((s.value for s in DeliveryState), 0)
        for row in self._query("SELECT state, count(*) FROM deliveries GROUP BY state"):
            deliveries[row[0]] = row[1]
        return StoreCounts(jobs_by_state=jobs, deliveries_by_state=deliveries)

    async def set_meta(self, key: str, value: str) -> None:
        self._update(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None
