"""SQLite StateStore: the default, one file shared by the daemon and the CLI.

The stdlib driver is called straight from the event loop: every query hits an
index and takes well under a millisecond, and each call finishes its
transaction before it returns, so no lock is ever held across an `await`.
Other processes (`import-watcher add`) are serialised by WAL + busy_timeout.

Leases: `due_at` is next_poll_at (or next_attempt_at) while a row is free and
the lease expiry while it is claimed, so one partial index answers "what is
due and unclaimed", and an expired lease simply becomes due again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from watcher.errors import StoreUnavailable, WatcherError
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

BUSY_TIMEOUT_MS = 5000

_SCHEMA_V1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL, notify TEXT,
    added_at REAL NOT NULL, next_poll_at REAL NOT NULL, due_at REAL NOT NULL,
    polls INTEGER NOT NULL DEFAULT 0, transient_errors INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT, outcome TEXT, detected_at REAL, lease_owner TEXT, lease_until REAL
);
CREATE INDEX jobs_due ON jobs (due_at, id) WHERE outcome IS NULL;
CREATE INDEX jobs_added ON jobs (added_at, id);
CREATE INDEX jobs_detected ON jobs (detected_at) WHERE outcome IS NOT NULL;
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY, job_id TEXT, notifier TEXT NOT NULL, event TEXT NOT NULL,
    created_at REAL NOT NULL, next_attempt_at REAL NOT NULL, due_at REAL NOT NULL,
    deadline_at REAL NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, lease_owner TEXT, lease_until REAL
);
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_job ON deliveries (job_id, created_at, id);
CREATE INDEX deliveries_created ON deliveries (created_at, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: Migration N takes a database from user_version N to N + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1,)
SCHEMA_VERSION = len(MIGRATIONS)

_JOB_COLUMNS = (
    "id, labels, notify, added_at, next_poll_at, polls, transient_errors,"
    " snapshot, outcome, detected_at"
)
_DELIVERY_COLUMNS = (
    "id, notifier, event, created_at, next_attempt_at, deadline_at, job_id,"
    " state, attempts, last_error"
)
_INSERT_DELIVERY = (
    f"INSERT OR IGNORE INTO deliveries ({_DELIVERY_COLUMNS}, due_at) VALUES"  # noqa: S608
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _snapshot_json(snapshot: Snapshot | None) -> str | None:
    return None if snapshot is None else _dumps(snapshot.to_dict())


def _snapshot(text: str | None) -> Snapshot | None:
    return None if text is None else Snapshot.from_dict(json.loads(text))


#: Distinct labels texts kept parsed (labels repeat across jobs: a team, a source).
LABELS_MEMO = 256


class _LabelsMemo:
    """The labels column parsed once per distinct text; each job still gets a dict of its own."""

    def __init__(self) -> None:
        self._parsed: dict[str, dict[str, str]] = {}

    def __call__(self, text: str) -> Any:
        parsed = self._parsed.get(text)
        if parsed is not None:
            return dict(parsed)
        value = json.loads(text)
        if type(value) is dict and all(type(v) is str for v in value.values()):
            if len(self._parsed) >= LABELS_MEMO:
                self._parsed.clear()
            self._parsed[text] = dict(value)
        return value


def _job(
    row: Sequence[Any], labels_of: Callable[[str], Any] = json.loads, snapshot: Snapshot | None = None
) -> JobState:
    """A row of _JOB_COLUMNS (by position: a tuple or a sqlite3.Row) as a JobState.

    `snapshot`, when given, is the row's snapshot already parsed (see _SnapshotMemo).
    """
    job_id, labels, notify, added_at, next_poll_at, polls, transient_errors, text, outcome, detected_at = row
    return JobState(
        job_id,
        labels_of(labels),
        None if notify is None else tuple(json.loads(notify)),
        added_at,
        next_poll_at,
        polls,
        transient_errors,
        _snapshot(text) if snapshot is None else snapshot,
        None if outcome is None else Outcome(outcome),
        detected_at,
    )


def _same_json(a: Snapshot, b: Snapshot) -> bool:
    """Whether `_snapshot_json` gives the same text for both: equal, and alike in every
    way equality overlooks (results key order, 1 vs 1.0 vs true, 0.0 vs -0.0)."""
    if a is b:
        return True
    if (
        a.status != b.status or a.job_type != b.job_type
        or a.started_at != b.started_at or a.finished_at != b.finished_at
        or type(a.status) is not type(b.status) or type(a.job_type) is not type(b.job_type)
        or type(a.started_at) is not type(b.started_at) or type(a.finished_at) is not type(b.finished_at)
    ):  # fmt: skip
        return False
    ra, rb = a.results, b.results
    if type(ra) is not dict or type(rb) is not dict or len(ra) != len(rb):
        return False
    for (ka, va), (kb, vb) in zip(ra.items(), rb.items(), strict=True):
        if ka != kb or type(ka) is not str or type(kb) is not str or type(va) is not type(vb) or va != vb:
            return False
        if type(va) is float and repr(va) != repr(vb):
            return False
        if type(va) not in _FLAT_JSON:
            return False
    return True


_FLAT_JSON = (str, int, float, bool, type(None))

#: Jobs whose last written snapshot the store remembers (bounds its memory at 100,000 jobs).
SNAPSHOT_MEMO = 4096


class _SnapshotMemo:
    """The snapshot text this store last wrote for a job, with the Snapshot it came from.

    A job that is still running mostly shows the same snapshot poll after poll: then
    record_poll writes the remembered text instead of serialising the Snapshot again,
    and the next claim reuses the Snapshot instead of parsing the text again. Texts
    are compared, so a row changed by anyone else is parsed as before.
    """

    def __init__(self, size: int = SNAPSHOT_MEMO) -> None:
        self._size = size
        self._entries: dict[str, tuple[str, Snapshot]] = {}

    def text(self, job_id: str, snapshot: Snapshot | None) -> str | None:
        """`_snapshot_json(snapshot)`, from the memo when this job last had an identical one."""
        if snapshot is None:
            return None
        entry = self._entries.get(job_id)
        if entry is not None and _same_json(entry[1], snapshot):
            return entry[0]
        return _snapshot_json(snapshot)

    def remember(self, job_id: str, text: str | None, snapshot: Snapshot | None) -> None:
        """Note that `text` (which is `_snapshot_json(snapshot)`) is now this job's row."""
        entries = self._entries
        if text is None or snapshot is None or type(snapshot.results) is not dict:
            entries.pop(job_id, None)
            return
        if job_id not in entries and len(entries) >= self._size:
            del entries[next(iter(entries))]  # the oldest
        entries[job_id] = (text, snapshot)

    def snapshot(self, job_id: str, text: str | None) -> Snapshot | None:
        """The Snapshot of `text` if it is the text last written for this job, else None."""
        if text is None:
            return None
        entry = self._entries.get(job_id)
        return entry[1] if entry is not None and entry[0] == text else None

    def forget(self, job_id: str) -> None:
        self._entries.pop(job_id, None)

    def clear(self) -> None:
        self._entries.clear()


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        notifier=row["notifier"],
        event=json.loads(row["event"]),
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        deadline_at=row["deadline_at"],
        job_id=row["job_id"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
    )


def _delivery_params(d: Delivery) -> tuple[Any, ...]:
    return (
        d.id, d.notifier, _dumps(dict(d.event)), d.created_at, d.next_attempt_at,
        d.deadline_at, d.job_id, DeliveryState(d.state).value, d.attempts, d.last_error,
        d.next_attempt_at,
    )  # fmt: skip


def _is_transient(exc: sqlite3.OperationalError) -> bool:
    """Lock contention and I/O trouble are worth retrying; a bad query is not."""
    text = str(exc).lower()
    return any(word in text for word in ("locked", "busy", "disk i/o", "unable to open"))


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION (each step in its own transaction); returns it."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read inside the write lock: two processes opening at once migrate once.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise WatcherError(
                    f"state database schema version {version} is newer than this"
                    f" import-watcher supports ({SCHEMA_VERSION}); upgrade import-watcher"
                )
            if version == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return version
            # Not executescript(): it would COMMIT first and break the transaction.
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class SqliteStore:
    """A StateStore in one SQLite file (or ":memory:")."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        # record_poll group commit: the polls recorded in one event-loop iteration.
        self._poll_batch: list[tuple[tuple[Any, ...], asyncio.Future[bool], Snapshot | None]] = []
        self._snapshots = _SnapshotMemo()
        self._labels = _LabelsMemo()

    # --- plumbing -----------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"SQLite store {self.path} is not open")
        return self._conn

    async def open(self) -> None:
        """Open the file, create its directory if needed, and migrate the schema."""
        if self._conn is not None:
            return
        with self._errors():
            if self.path != ":memory:" and not self.path.startswith("file:"):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer
            # takes the lock up front instead of failing to upgrade a read lock.
            uri = self.path.startswith("file:")
            conn = sqlite3.connect(self.path, isolation_level=None, uri=uri)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA cache_size = -16000")
                migrate(conn)
            except BaseException:
                conn.close()
                raise
        self._conn = conn

    async def close(self) -> None:
        if self._poll_batch:
            self._write_polls()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._snapshots.clear()

    async def ping(self) -> None:
        """Raise StoreUnavailable when the file cannot be read."""
        with self._errors():
            self._db.execute("SELECT 1").fetchone()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if _is_transient(exc):
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the lock at BEGIN so it cannot deadlock later."""
        with self._errors():
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._errors():
            return self._db.execute(sql, params).fetchall()

    def _update(self, sql: str, params: Sequence[Any]) -> int:
        """One write statement, still under BEGIN IMMEDIATE: an autocommit write that
        upgrades a stale read snapshot fails with "locked" without waiting."""
        with self._write() as conn:
            return conn.execute(sql, params).rowcount

    # --- jobs ---------------------------------------------------------------

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float) -> bool:
        """Track a job; False (and nothing changes) when the id is already known."""
        notify = None if ref.notify is None else _dumps(list(ref.notify))
        added = self._update(
            "INSERT OR IGNORE INTO jobs (id, labels, notify, added_at, next_poll_at, due_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (ref.id, _dumps(dict(ref.labels)), notify, now, first_poll_at, first_poll_at),
        )
        return added == 1

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
        params = (
            update.next_poll_at, update.next_poll_at, update.polls, update.transient_errors,
            self._snapshots.text(job_id, update.snapshot), job_id, owner,
        )  # fmt: skip
        self._db  # noqa: B018 - raise StoreUnavailable now if the store is closed
        loop = asyncio.get_running_loop()
        written: asyncio.Future[bool] = loop.create_future()
        self._poll_batch.append((params, written, update.snapshot))
        if len(self._poll_batch) == 1:
            loop.call_soon(self._write_polls)
        return await written

    async def record_polls(self, updates: Sequence[tuple[str, PollUpdate]], *, owner: str) -> list[bool]:
        """`record_poll` for each (job id, update) in one transaction; False where `owner` lost the lease."""
        snapshots = self._snapshots
        batch = [
            (
                (update.next_poll_at, update.next_poll_at, update.polls, update.transient_errors,
                 snapshots.text(job_id, update.snapshot), job_id, owner),
                update.snapshot,
            )
            for job_id, update in updates
        ]  # fmt: skip
        if not batch:
            return []
        with self._write() as conn:
            execute = conn.cursor().execute  # one cursor for the batch, not one per row
            changed = [execute(_RECORD_POLL, params).rowcount == 1 for params, _ in batch]
        for (params, snapshot), ok in zip(batch, changed, strict=True):
            if ok:
                snapshots.remember(params[5], params[4], snapshot)
        return changed

    def _write_polls(self) -> None:
        """Write every queued record_poll in one transaction and answer each caller."""
        batch, self._poll_batch = self._poll_batch, []
        if not batch:
            return
        try:
            with self._write() as conn:
                execute = conn.cursor().execute  # one cursor for the batch, not one per row
                changed = [execute(_RECORD_POLL, params).rowcount == 1 for params, _, _ in batch]
        except BaseException as exc:
            for _, written, _ in batch:
                if not written.done():
                    written.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        remember = self._snapshots.remember
        for (params, written, snapshot), ok in zip(batch, changed, strict=True):
            if ok:
                remember(params[5], params[4], snapshot)
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
