"""The SQLite store's batches: counted in the transactions that add, end and remove jobs, claimed
and finished under fenced leases, and the reads digests need.

The counting rules (the same in every backend; see watcher.store.memory_batches): any change to
a batch's members or outcomes sets quiet_since = now and revokes a claim on it; a join reopens
a finished batch; a batch left with no jobs goes if it was never summarised, else stays
finished; retention (purge_finished) leaves the counts alone.

The helpers taking a connection run inside the caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from watcher.models import Batch, Delivery, JobState, Lease
from watcher.store.sqlite_outbox import SqliteOutbox
from watcher.store.sqlite_rows import (
    _BATCH_COLUMNS,
    _INSERT_DELIVERY,
    _JOB_COLUMNS,
    _batch,
    _delivery_params,
    _dumps,
    _job,
    _LabelsMemo,
)
from watcher.store.tokens import new_token

# A change revokes the claim: a summary in progress must not be written over a batch that moved.
_CHANGED = "quiet_since = ?, lease_owner = NULL, lease_until = NULL"
_JOIN = (
    "INSERT INTO batches (name, phase, jobs, final, outcomes, started_at, quiet_since)"  # noqa: S608
    " VALUES (?, 'open', ?, 0, '{}', ?, ?) ON CONFLICT (name) DO UPDATE SET"
    f" jobs = jobs + excluded.jobs, phase = 'open', {_CHANGED.replace('?', 'excluded.quiet_since')}"
)
_SETTLED = "phase = 'open' AND final >= jobs AND jobs > 0"  # the batches_settled index's condition
# INDEXED BY: the claim must never fall back to reading every open batch.
_CLAIM = (
    f"SELECT {_BATCH_COLUMNS} FROM batches INDEXED BY batches_settled WHERE {_SETTLED}"  # noqa: S608
    " AND quiet_since <= ? AND (lease_owner IS NULL OR lease_until <= ?) ORDER BY quiet_since, name LIMIT ?"
)
_FINISH = (
    "UPDATE batches SET phase = 'finished', finished_at = ?, summaries = summaries + 1,"  # noqa: S608
    " last_summary_id = ?, lease_owner = NULL, lease_until = NULL"
    f" WHERE name = ? AND {_SETTLED} AND lease_owner = ? AND lease_until > ?"
)


def join_batches(conn: sqlite3.Connection | sqlite3.Cursor, joined: Mapping[str, int], now: float) -> None:
    """Count new members (`joined`: batch -> how many); a finished batch reopens."""
    conn.executemany(_JOIN, [(name, count, now, now) for name, count in joined.items()])


def count_outcome(conn: sqlite3.Connection, name: str, outcome: str, now: float) -> None:
    """Count a member's final outcome."""
    row = conn.execute("SELECT outcomes FROM batches WHERE name = ?", (name,)).fetchone()
    if row is None:
        return
    outcomes = json.loads(row[0])
    outcomes[outcome] = outcomes.get(outcome, 0) + 1
    conn.execute(
        f"UPDATE batches SET final = final + 1, outcomes = ?, {_CHANGED} WHERE name = ?",  # noqa: S608
        (_dumps(outcomes), now, name),
    )


def leave_batch(conn: sqlite3.Connection | sqlite3.Cursor, name: str, outcome: str | None, now: float) -> None:
    """Uncount a member (and its outcome); an emptied batch goes, or stays finished once summarised."""
    row = conn.execute("SELECT jobs, final, outcomes, summaries, phase FROM batches WHERE name = ?", (name,)).fetchone()
    if row is None:
        return
    jobs, final, outcomes, summaries, phase = row[0] - 1, row[1], json.loads(row[2]), row[3], row[4]
    if outcome is not None:
        final -= 1
        outcomes[outcome] = outcomes.get(outcome, 0) - 1
        if outcomes[outcome] <= 0:
            del outcomes[outcome]
    if jobs <= 0 and summaries == 0:
        conn.execute("DELETE FROM batches WHERE name = ?", (name,))
        return
    conn.execute(
        f"UPDATE batches SET jobs = ?, final = ?, outcomes = ?, phase = ?, {_CHANGED} WHERE name = ?",  # noqa: S608
        (max(jobs, 0), max(final, 0), _dumps(outcomes), "finished" if jobs <= 0 else phase, now, name),
    )


class SqliteBatches(SqliteOutbox):
    """Batch claims and reads of a SQLite store (SqliteStore counts them as jobs come and go)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._labels = _LabelsMemo()

    async def get_batch(self, name: str) -> Batch | None:
        rows = self._query(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE name = ?", (name,))  # noqa: S608
        return _batch(rows[0]) if rows else None

    async def list_batches(
        self, *, phase: str | None = None, limit: int | None = None, after: tuple[float, str] | None = None
    ) -> list[Batch]:
        """Batches ordered by (started_at, name), after the cursor; `phase` "open" or "finished"."""
        clauses: list[str] = []
        params: list[Any] = []
        if phase is not None:
            clauses.append("phase = ?")
            params.append(phase)
        if after is not None:
            clauses.append("(started_at, name) > (?, ?)")
            params += [after[0], after[1]]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_BATCH_COLUMNS} FROM batches {where} ORDER BY started_at, name LIMIT ?"  # noqa: S608
        return [_batch(row) for row in self._query(sql, [*params, -1 if limit is None else max(0, limit)])]

    async def claim_settled_batches(
        self, *, now: float, settle: float, limit: int, owner: str, lease: float
    ) -> list[Batch]:
        """Open, all-final batches quiet since now - settle with no live lease, oldest quiet first, leased."""
        until = now + lease
        with self._write() as conn:
            rows = conn.execute(_CLAIM, (now - settle, now, max(0, limit))).fetchall()
            tokens = [new_token(owner) for _ in rows]
            conn.executemany(
                "UPDATE batches SET lease_owner = ?, lease_until = ? WHERE name = ?",
                [(token, until, row[0]) for token, row in zip(tokens, rows, strict=True)],
            )
        return [_batch(row, Lease(token, until)) for token, row in zip(tokens, rows, strict=True)]

    async def finish_batch(
        self, name: str, *, token: str, now: float, summary_id: str, deliveries: Sequence[Delivery]
    ) -> bool:
        """Mark the held, unchanged batch finished and insert its summary deliveries, in one transaction."""
        with self._write() as conn:
            changed = conn.execute(_FINISH, (now, summary_id, name, token, now)).rowcount == 1
            if changed:
                conn.executemany(_INSERT_DELIVERY, [_delivery_params(d) for d in deliveries])
        return changed

    async def renew_batches(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (batch name, token) held within its lease to now + lease, in one transaction."""
        if not leases:
            return []
        sql = "UPDATE batches SET lease_until = ? WHERE name = ? AND lease_owner = ? AND lease_until > ?"
        with self._write() as conn:
            execute = conn.cursor().execute
            return [execute(sql, (now + lease, name, token, now)).rowcount == 1 for name, token in leases]

    async def release_batch(self, name: str, *, token: str) -> None:
        """Give a batch claim back unchanged; only the token decides, so a stale holder frees nothing."""
        self._update(
            "UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE name = ? AND lease_owner = ?",
            (name, token),
        )

    async def batch_counts(self) -> dict[str, int]:
        """Batches by phase."""
        found = {"open": 0, "finished": 0}
        for row in self._query("SELECT phase, count(*) FROM batches GROUP BY phase"):
            found[row[0]] = row[1]
        return found

    async def finished_jobs(self, *, since: float, until: float, limit: int = 10_000) -> list[JobState]:
        """Jobs whose outcome was detected in [since, until), oldest first (the jobs_detected index)."""
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE outcome IS NOT NULL"  # noqa: S608
            " AND detected_at >= ? AND detected_at < ? ORDER BY detected_at, id LIMIT ?"
        )
        return [_job(row, self._labels) for row in self._query(sql, (since, until, max(0, limit)))]
