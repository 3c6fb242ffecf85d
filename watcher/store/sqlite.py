"""SQLite StateStore: the default, one file shared by the daemon and the CLI.

The stdlib driver is called straight from the event loop: every query hits an
index and takes well under a millisecond, and each call finishes its
transaction before it returns, so no lock is ever held across an `await`.
Other processes (`import-watcher add`) are serialised by WAL + busy_timeout.

Leases: `due_at` is next_poll_at (or next_attempt_at) while a row is free and
the lease expiry while it is claimed, so one partial index answers "what is
due and unclaimed", and an expired lease simply becomes due again. The lease
owner column holds the claim's fencing token; lease times are the caller's clock
(one process's), so replicas on one file share it.

Around this module: sqlite_schema (tables, migrations), sqlite_db (the connection,
its transactions and error classes), sqlite_outbox (deliveries and meta) and
sqlite_rows (rows to models and back, and their memos).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

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
from watcher.store.sqlite_batches import SqliteBatches, count_outcome, join_batches, leave_batch
from watcher.store.sqlite_db import BUSY_TIMEOUT_MS
from watcher.store.sqlite_outbox import PARAMS_CHUNK
from watcher.store.sqlite_rows import (
    _INSERT_DELIVERY,
    _JOB_COLUMNS,
    LABELS_MEMO,
    SNAPSHOT_MEMO,
    _delivery_params,
    _dumps,
    _job,
    _snapshot_json,
    _SnapshotMemo,
)
from watcher.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, migrate
from watcher.store.tokens import new_token

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

_JOB_FIELDS = "(id, labels, notify, added_at, next_poll_at, due_at, batch, kind, account)"
_ADD_JOB = f"INSERT OR IGNORE INTO jobs {_JOB_FIELDS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
# A tombstoned id stays out unless the caller asks again (then the tombstone goes first).
_ADD_UNBURIED = (
    f"INSERT OR IGNORE INTO jobs {_JOB_FIELDS} SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"  # noqa: S608
    " WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?)"
)
_BURY = "INSERT OR REPLACE INTO tombstones (id, at, reason) VALUES (?, ?, ?)"


def _add_params(ref: JobRef, now: float, first_poll_at: float) -> tuple[Any, ...]:
    notify = None if ref.notify is None else _dumps(list(ref.notify))
    return (ref.id, _dumps(dict(ref.labels)), notify, now, first_poll_at, first_poll_at, ref.batch,
            ref.kind.value, ref.account)  # fmt: skip


# Fencing: only the current token, and only while its lease lives.
_HELD = "id = ? AND outcome IS NULL AND lease_owner = ? AND lease_until > ?"
_RECORD_POLL = (
    "UPDATE jobs SET next_poll_at = ?, due_at = ?, polls = ?, transient_errors = ?,"  # noqa: S608
    f" snapshot = ?, lease_owner = NULL, lease_until = NULL WHERE {_HELD}"
)
_RECORD_OUTCOME = (
    "UPDATE jobs SET outcome = ?, snapshot = ?, polls = ?, detected_at = ?, errors = ?,"  # noqa: S608
    f" lease_owner = NULL, lease_until = NULL WHERE {_HELD}"
)
_PURGEABLE = (
    "SELECT id FROM jobs INDEXED BY jobs_detected WHERE outcome IS NOT NULL AND detected_at < ? AND NOT EXISTS ("
    " SELECT 1 FROM deliveries d INDEXED BY deliveries_job WHERE d.job_id = jobs.id AND d.state = 'pending')"
    " ORDER BY detected_at, id LIMIT ?"
)

SPREAD_CHUNK = 10_000
_SPREAD_CHUNK = (
    "UPDATE jobs SET next_poll_at = o.at, due_at = o.at FROM ("
    " SELECT id, ? + ? * (? + row_number() OVER (ORDER BY due_at, id) - 1) / ? AS at"
    " FROM (SELECT id, due_at FROM jobs INDEXED BY jobs_due WHERE outcome IS NULL AND due_at < ?"
    " ORDER BY due_at, id LIMIT ?)"
    ") AS o WHERE jobs.id = o.id"
)


class SqliteStore(SqliteBatches):
    """A StateStore in one SQLite file (or ":memory:")."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._snapshots = _SnapshotMemo()

    async def close(self) -> None:
        await super().close()
        self._snapshots.clear()

    # --- jobs ---------------------------------------------------------------

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float, again: bool = False) -> bool:
        """Track a job; see StateStore.add_job for tombstones and `again`."""
        return (await self.add_jobs([ref], now=now, first_poll_at=first_poll_at, again=again))[0]

    async def add_jobs(
        self, refs: Sequence[JobRef], *, now: float, first_poll_at: float, again: bool = False
    ) -> list[bool]:
        """`add_job` for each ref, in order, in one transaction."""
        if not refs:
            return []
        with self._write() as conn:
            cursor = conn.cursor()
            if not again:
                added = [
                    cursor.execute(_ADD_UNBURIED, (*_add_params(ref, now, first_poll_at), ref.id)).rowcount == 1
                    for ref in refs
                ]
                joined = Counter(ref.batch for ref, new in zip(refs, added, strict=True) if new and ref.batch)
                join_batches(cursor, joined, now)
                return added
            added = [self._add_again(cursor, ref, now, first_poll_at) for ref in refs]
        for ref, new in zip(refs, added, strict=True):
            if new:
                self._snapshots.forget(ref.id)
        return added

    @staticmethod
    def _add_again(cursor: sqlite3.Cursor, ref: JobRef, now: float, first_poll_at: float) -> bool:
        """Lift the tombstone; replace a final job by a fresh watch; leave a watching one be."""
        cursor.execute("DELETE FROM tombstones WHERE id = ?", (ref.id,))
        row = cursor.execute("SELECT outcome, batch FROM jobs WHERE id = ?", (ref.id,)).fetchone()
        if row is not None:
            if row[0] is None:
                return False
            if row[1] is not None:
                leave_batch(cursor, row[1], row[0], now)
            # Old deliveries still pending keep going (their ids differ from the new watch's).
            pending = cursor.execute(
                "SELECT 1 FROM deliveries WHERE job_id = ? AND state = 'pending' LIMIT 1", (ref.id,)
            ).fetchone()
            if pending is None:
                cursor.execute("DELETE FROM deliveries WHERE job_id = ?", (ref.id,))
            cursor.execute("DELETE FROM jobs WHERE id = ?", (ref.id,))
        new: bool = cursor.execute(_ADD_JOB, _add_params(ref, now, first_poll_at)).rowcount == 1
        if new and ref.batch is not None:
            join_batches(cursor, {ref.batch: 1}, now)
        return new

    async def get_job(self, job_id: str) -> JobState | None:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?"  # noqa: S608
        rows = self._query(sql, (job_id,))
        return _job(rows[0], self._labels) if rows else None

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
        batch: str | None = None,
    ) -> list[JobState]:
        """Jobs ordered by (added_at, id) after the cursor; `state` is "watching" or an outcome;
        `batch` reads that batch's range of the jobs_batch index, not every job."""
        clauses: list[str] = []
        params: list[Any] = []
        index = "jobs_added"
        if batch is not None:
            clauses.append("batch = ?")
            params.append(batch)
            index = "jobs_batch"
        if after is not None:
            clauses.append("(added_at, id) > (?, ?)")  # a range on the index
            params += [after[0], after[1]]
        if state == WATCHING:
            clauses.append("outcome IS NULL")
        elif state is not None:
            clauses.append("outcome = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # INDEXED BY: a page must never fall back to scanning (or sorting) the whole table.
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY {index} {where} ORDER BY added_at, id LIMIT ?"  # noqa: S608
        rows = self._query(sql, [*params, -1 if limit is None else max(0, limit)])
        return [_job(row, self._labels) for row in rows]

    async def batch_jobs(self, name: str) -> list[JobState]:
        """Every job of the batch, ordered by (added_at, id)."""
        return await self.list_jobs(batch=name)

    async def remove_job(self, job_id: str, *, now: float) -> bool:
        """Delete the job and its deliveries and leave a STOPPED tombstone, in one transaction."""
        with self._write() as conn:
            row = conn.execute("SELECT outcome, batch FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            if row[1] is not None:
                leave_batch(conn, row[1], row[0], now)
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            conn.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
            conn.execute(_BURY, (job_id, now, TombstoneReason.STOPPED.value))
        self._snapshots.forget(job_id)
        return True

    async def claim_due_jobs(self, *, now: float, limit: int, owner: str, lease: float) -> list[JobState]:
        """Unfinished jobs with next_poll_at <= now and no live lease, earliest first."""
        until = now + lease
        with self._write() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None  # plain tuples: _job reads by position
            rows = cursor.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_due WHERE outcome IS NULL AND due_at <= ?"  # noqa: S608
                " ORDER BY due_at, id LIMIT ?",
                (now, max(0, limit)),
            ).fetchall()
            tokens = [new_token(owner) for _ in rows]
            conn.executemany(
                "UPDATE jobs SET lease_owner = ?, lease_until = ?, due_at = ? WHERE id = ?",
                [(token, until, until, row[0]) for token, row in zip(tokens, rows, strict=True)],
            )
        snapshots, labels = self._snapshots, self._labels
        return [
            _job(row, labels, snapshots.snapshot(row[0], row[7]), Lease(token, until))
            for token, row in zip(tokens, rows, strict=True)
        ]

    async def renew_jobs(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (job id, token) held within its lease to now + lease."""
        if not leases:
            return []
        until = now + lease
        sql = f"UPDATE jobs SET lease_until = ?, due_at = ? WHERE {_HELD}"  # noqa: S608
        with self._write() as conn:
            execute = conn.cursor().execute
            return [execute(sql, (until, until, job_id, token, now)).rowcount == 1 for job_id, token in leases]

    async def record_poll(self, job_id: str, update: PollUpdate, *, token: str, now: float) -> bool:
        """Store a non-final poll and end the lease; False when `token` holds no live lease."""
        return (await self.record_polls([(job_id, token, update)], now=now))[0]

    async def record_polls(self, updates: Sequence[tuple[str, str, PollUpdate]], *, now: float) -> list[bool]:
        """`record_poll` for each (job id, token, update) in one transaction; the answers in order."""
        if not updates:
            return []
        text = self._snapshots.text
        rows = [
            (
                (u.next_poll_at, u.next_poll_at, u.polls, u.transient_errors, text(job_id, u.snapshot),
                 job_id, token, now),
                u.snapshot,
            )
            for job_id, token, u in updates
        ]  # fmt: skip
        with self._write() as conn:
            execute = conn.cursor().execute  # one cursor for the batch, not one per row
            changed = [execute(_RECORD_POLL, params).rowcount == 1 for params, _ in rows]
        remember = self._snapshots.remember
        for (params, snapshot), ok in zip(rows, changed, strict=True):
            if ok:
                remember(params[5], params[4], snapshot)
        return changed

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
        """Set the final outcome, insert its deliveries and count it in its batch, in one transaction."""
        value = Outcome(outcome).value
        errors_text = None if errors is None else _dumps(dict(errors))
        params = (value, _snapshot_json(snapshot), polls, detected_at, errors_text, job_id, token, now)
        with self._write() as conn:
            changed = conn.execute(_RECORD_OUTCOME, params).rowcount == 1
            if changed:
                conn.executemany(_INSERT_DELIVERY, [_delivery_params(d) for d in deliveries])
                batch = conn.execute("SELECT batch FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
                if batch is not None:
                    count_outcome(conn, batch, value, now)
        if changed:
            self._snapshots.forget(job_id)  # final: never claimed again
        return changed

    async def mark_stuck(self, job_id: str, *, token: str, now: float, deliveries: Sequence[Delivery]) -> bool:
        """Set stuck_at and insert the warning's deliveries, once, in one transaction; the lease stays."""
        sql = f"UPDATE jobs SET stuck_at = ? WHERE {_HELD} AND stuck_at IS NULL"  # noqa: S608
        with self._write() as conn:
            changed = conn.execute(sql, (now, job_id, token, now)).rowcount == 1
            if changed:
                conn.executemany(_INSERT_DELIVERY, [_delivery_params(d) for d in deliveries])
        return changed

    async def release_job(self, job_id: str, *, token: str) -> None:
        """Give a lease back unchanged; only the token decides, so a stale holder frees nothing."""
        self._update(
            "UPDATE jobs SET due_at = next_poll_at, lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND outcome IS NULL AND lease_owner = ?",
            (job_id, token),
        )

    async def spread_overdue(self, *, now: float, window: float) -> int:
        """Reschedule overdue unfinished jobs evenly over [now, now + window); returns how many."""
        overdue = "SELECT count(*) FROM jobs INDEXED BY jobs_due WHERE outcome IS NULL AND due_at < ?"
        total = self._query(overdue, (now,))[0][0]
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
        value = self._query("SELECT min(due_at) FROM jobs INDEXED BY jobs_due WHERE outcome IS NULL")[0][0]
        return None if value is None else float(value)

    # --- retention and tombstones -----------------------------------------------

    async def purge_finished(self, *, before: float, now: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Delete at most `limit` settled final jobs detected before `before`, oldest first, each
        leaving a FINISHED tombstone: one short transaction, so other writers wait little."""
        with self._write() as conn:
            ids = [(row[0],) for row in conn.execute(_PURGEABLE, (before, max(0, limit)))]
            conn.executemany("DELETE FROM deliveries WHERE job_id = ?", ids)
            conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
            conn.executemany(_BURY, [(job_id, now, TombstoneReason.FINISHED.value) for (job_id,) in ids])
        for (job_id,) in ids:
            self._snapshots.forget(job_id)
        return len(ids)

    async def tombstones(self, job_ids: Sequence[str]) -> Mapping[str, Tombstone]:
        """The tombstones among these ids."""
        found: dict[str, Tombstone] = {}
        ids = sorted(set(job_ids))
        for start in range(0, len(ids), PARAMS_CHUNK):
            chunk = ids[start : start + PARAMS_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, at, reason FROM tombstones WHERE id IN ({marks})"  # noqa: S608
            for row in self._query(sql, chunk):
                found[row[0]] = Tombstone(row[0], row[1], TombstoneReason(row[2]))
        return found

    async def purge_tombstones(self, *, before: float, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Forget at most `limit` tombstones buried before `before`, oldest first."""
        return self._update(
            "DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones WHERE at < ? ORDER BY at LIMIT ?)",
            (before, max(0, limit)),
        )

    # --- bookkeeping ----------------------------------------------------------

    async def counts(self) -> StoreCounts:
        jobs: dict[str, int] = dict.fromkeys([WATCHING, *(o.value for o in Outcome)], 0)
        for row in self._query("SELECT coalesce(outcome, ?), count(*) FROM jobs GROUP BY outcome", (WATCHING,)):
            jobs[row[0]] = row[1]
        deliveries: dict[str, int] = dict.fromkeys((s.value for s in DeliveryState), 0)
        for row in self._query("SELECT state, count(*) FROM deliveries GROUP BY state"):
            deliveries[row[0]] = row[1]
        return StoreCounts(jobs_by_state=jobs, deliveries_by_state=deliveries)
