"""The SQLite store's connection: opening the file, transactions, and retryable errors.

SqliteDatabase is the plumbing SqliteStore builds its StateStore operations on: it
creates the file's directory, sets the connection's pragmas and migrates the schema
(watcher.store.sqlite_schema), runs write transactions under BEGIN IMMEDIATE, and
raises lock contention and I/O trouble as StoreUnavailable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from watcher.errors import StoreUnavailable
from watcher.store.sqlite_schema import migrate

BUSY_TIMEOUT_MS = 5000


def _is_transient(exc: sqlite3.OperationalError) -> bool:
    """Lock contention and I/O trouble are worth retrying; a bad query is not."""
    text = str(exc).lower()
    return any(word in text for word in ("locked", "busy", "disk i/o", "unable to open"))


class SqliteDatabase:
    """One SQLite file (or ":memory:"), opened on demand: the plumbing under SqliteStore."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

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
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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
