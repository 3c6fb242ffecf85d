"""The SQLite store's schema: its tables and indexes as migrations, and `migrate`.

A database file's PRAGMA user_version is the number of migrations applied to it;
SCHEMA_VERSION is the number this import-watcher knows.
"""

from __future__ import annotations

import sqlite3

from watcher.errors import StoreBroken

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

# Tombstones keep deleted and purged ids from coming back; the two delivery indexes let a
# claim filter by notifier and find expired deliveries without scanning the outbox.
_SCHEMA_V2 = """
CREATE TABLE tombstones (id TEXT PRIMARY KEY, at REAL NOT NULL, reason TEXT NOT NULL);
CREATE INDEX tombstones_at ON tombstones (at);
CREATE INDEX deliveries_notifier_due ON deliveries (notifier, due_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_deadline ON deliveries (deadline_at, id) WHERE state = 'pending';
-- counts() (the page's /summary, metrics) reads these instead of every row: 89 ms -> 11 ms at 100,000 jobs.
CREATE INDEX jobs_outcome ON jobs (outcome);
CREATE INDEX deliveries_state ON deliveries (state);
-- Batches (issue 12): a job's batch, its errors-file summary and its one stuck warning.
ALTER TABLE jobs ADD COLUMN batch TEXT;
ALTER TABLE jobs ADD COLUMN errors TEXT;
ALTER TABLE jobs ADD COLUMN stuck_at REAL;
CREATE INDEX jobs_batch ON jobs (batch, added_at, id) WHERE batch IS NOT NULL;
CREATE TABLE batches (
    name TEXT PRIMARY KEY, phase TEXT NOT NULL, jobs INTEGER NOT NULL, final INTEGER NOT NULL,
    outcomes TEXT NOT NULL, started_at REAL NOT NULL, quiet_since REAL NOT NULL, finished_at REAL,
    summaries INTEGER NOT NULL DEFAULT 0, last_summary_id TEXT, lease_owner TEXT, lease_until REAL
);
-- Settled candidates: a claim reads only open batches whose jobs are all final, by quiet_since.
CREATE INDEX batches_settled ON batches (quiet_since, name) WHERE phase = 'open' AND final >= jobs;
CREATE INDEX batches_started ON batches (phase, started_at, name);
CREATE INDEX batches_all ON batches (started_at, name);
-- Digests read the dead deliveries of a period without walking the delivered ones.
CREATE INDEX deliveries_dead ON deliveries (created_at, id) WHERE state = 'dead';
"""

# Exports and accounts (issue 14): a job's kind, and the SendGrid account it lives in (NULL: the
# default). Rows written before read as imports of the default account.
_SCHEMA_V3 = """
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'import';
ALTER TABLE jobs ADD COLUMN account TEXT;
"""

#: Migration N takes a database from user_version N to N + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION (each step in its own transaction); returns it."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read inside the write lock: two processes opening at once migrate once.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreBroken(
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
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
