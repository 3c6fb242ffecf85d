"""The SQLite store's connection: opening the file, transactions, and classified errors.

SqliteDatabase is the plumbing SqliteStore builds its StateStore operations on: it
creates the file's directory, sets the connection's pragmas and migrates the schema
(watcher.store.sqlite_schema), runs write transactions under BEGIN IMMEDIATE, and turns
SQLite's errors into StoreUnavailable (may pass) or StoreBroken (will not), by error code.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from watcher.errors import StoreBroken, StoreUnavailable
from watcher.store.sqlite_schema import migrate

BUSY_TIMEOUT_MS = 5000
#: Shutting down (`hurry`): how long a write waits for another process's lock, once.
HURRY_BUSY_MS = 200

# Primary result codes (the low byte of an extended code: SQLITE_IOERR_WRITE is an IOERR).
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_FATAL_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def classify(exc: sqlite3.Error) -> type[StoreUnavailable] | type[StoreBroken] | None:
    """StoreUnavailable for what may pass, StoreBroken for what will not, None for our own bugs."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    primary = code & 0xFF
    if primary in _TRANSIENT_CODES:
        return StoreUnavailable
    if primary in _FATAL_CODES:
        return StoreBroken
    return None


def _identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file, or None when it is not there."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


class SqliteDatabase:
    """One SQLite file (or ":memory:"), opened on demand: the plumbing under SqliteStore."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._opened: tuple[int, int] | None = None  # the file open() found, for replacements
        self._broken: StoreBroken | None = None
        self._hurried = False  # shutting down: writes do not wait long for another process's lock
        self._lock_refused = False  # ... and one already found it held: none waits again

    @property
    def _on_disk(self) -> bool:
        return self.path != ":memory:" and not self.path.startswith("file:")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._broken is not None:
            raise self._broken
        if self._conn is None:
            raise StoreUnavailable(f"SQLite store {self.path} is not open")
        return self._conn

    async def open(self) -> None:
        """Open the file, create its directory if needed, and migrate the schema."""
        if self._conn is not None:
            return
        self._broken = None
        with self._errors():
            if self._on_disk:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer
            # takes the lock up front instead of failing to upgrade a read lock.
            uri = self.path.startswith("file:")
            conn = sqlite3.connect(self.path, isolation_level=None, uri=uri)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {HURRY_BUSY_MS if self._hurried else BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA cache_size = -16000")
                migrate(conn)
            except BaseException:
                conn.close()
                raise
        self._opened = _identity(self.path) if self._on_disk else None
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def hurry(self) -> None:
        """Shutting down: a write waits at most HURRY_BUSY_MS for another process's lock, and once one
        found it held none waits again. Each wait blocks the event loop (sqlite3 is synchronous), so
        without this, N claims given back under a lock held elsewhere would take N x BUSY_TIMEOUT_MS;
        a claim not given back simply expires with its lease."""
        self._hurried = True
        if self._conn is not None:
            with self._errors():
                self._conn.execute(f"PRAGMA busy_timeout = {HURRY_BUSY_MS}")

    async def ping(self) -> None:
        """Raise StoreUnavailable when the file cannot be read or is not the one opened."""
        with self._errors():
            conn = self._db
            self._check_file()
            conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()

    def _check_file(self) -> None:
        """One stat: writes to a file nobody will read again would be lost at the next start."""
        if self._opened is not None and _identity(self.path) != self._opened:
            raise StoreUnavailable(f"state file {self.path} was deleted or replaced since it was opened")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StoreBroken as exc:
            # The schema check raises it without the path; name the file once, here.
            if self.path not in str(exc):
                exc = StoreBroken(f"state file {self.path}: {exc}")
            self._broken = exc
            raise exc from None
        except sqlite3.DatabaseError as exc:
            kind = classify(exc)
            if kind is None:
                raise
            if kind is StoreBroken:
                self._broken = StoreBroken(f"state file {self.path} is not a usable SQLite database: {exc}")
                raise self._broken from exc
            if self._hurried and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY:
                self._lock_refused = True
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the lock at BEGIN so it cannot deadlock later."""
        with self._errors():
            conn = self._db
            if self._lock_refused:
                raise StoreUnavailable(f"SQLite store {self.path}: locked by another process; "
                                       "shutting down without waiting for it")
            self._check_file()
            self._rollback(conn)  # a transaction a failed ROLLBACK left open would block BEGIN
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        """Roll back what is left; SQLite may have done it already (full disk, I/O error)."""
        if conn.in_transaction:
            with suppress(sqlite3.Error):  # the original error says more
                conn.execute("ROLLBACK")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._errors():
            return self._db.execute(sql, params).fetchall()

    def _update(self, sql: str, params: Sequence[Any]) -> int:
        """One write statement, still under BEGIN IMMEDIATE: an autocommit write that
        upgrades a stale read snapshot fails with "locked" without waiting."""
        with self._write() as conn:
            return conn.execute(sql, params).rowcount
