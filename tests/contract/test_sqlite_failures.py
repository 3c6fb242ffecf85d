"""The SQLite store under real failures: a full disk, a corrupt file, a file deleted or
replaced under it, a lock held too long. Transient ones pass and the same store object
carries on; fatal ones are one line naming the file."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.storekit import LEASE, NOW, add, claim_one, ids, make_delivery, poll, token
from tests.helpers import fill, mounted_tmpfs
from watcher.errors import StoreBroken, StoreUnavailable
from watcher.models import JobRef
from watcher.store import SqliteStore, sqlite_db


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        yield disk


async def open_store(path: Path) -> SqliteStore:
    store = SqliteStore(str(path))
    await store.open()
    return store


async def test_a_full_disk_is_unavailable_and_the_same_store_writes_again_once_freed(small_disk: Path) -> None:
    """Claims and records fail as StoreUnavailable while the disk is full; after freeing space the same
    object records with the lease it held, and everything written before is still there."""
    store = await open_store(small_disk / "state.db")
    try:
        for index in range(20):
            await add(store, f"job-{index:02d}")
        await store.add_deliveries([make_delivery(f"d{index}") for index in range(5)])
        held = await claim_one(store, "job-00")
        filler = fill(small_disk)
        update = poll(polls=1)
        with pytest.raises(StoreUnavailable, match=r"full|disk"):
            await store.record_poll("job-00", update, token=token(held), now=NOW + 1)
        with pytest.raises(StoreUnavailable):
            await store.claim_due_jobs(now=NOW, limit=20, owner="w1", lease=LEASE)
        with pytest.raises(StoreUnavailable):
            await store.add_jobs(
                [JobRef(f"new-{i}", {"pad": "x" * 2000}) for i in range(50)], now=NOW, first_poll_at=NOW
            )
        await store.ping()  # reads still work: the store is reachable, only writes are refused
        filler.unlink()
        assert True is await store.record_poll("job-00", update, token=token(held), now=NOW + 1)
        claimed = await store.claim_due_jobs(now=NOW, limit=50, owner="w1", lease=LEASE)
        assert [f"job-{index:02d}" for index in range(1, 20)] == ids(claimed)
        assert 1 == (await store.list_jobs(limit=1))[0].polls
        assert [f"d{index}" for index in range(5)] == ids(await store.list_deliveries())
        assert [] == await store.list_jobs(after=(NOW, "job-19"))  # the refused batch left nothing behind
    finally:
        await store.close()
    reopened = await open_store(small_disk / "state.db")
    try:
        assert 20 == len(await reopened.list_jobs())
    finally:
        await reopened.close()


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, just some bytes\n" * 200)


async def test_a_garbage_file_is_broken_with_one_line_naming_it(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises StoreBroken: one line, the path in it, no traceback needed."""
    path = tmp_path / "state.db"
    write_garbage(path)
    store = SqliteStore(str(path))
    with pytest.raises(StoreBroken) as caught:
        await store.open()
    message = str(caught.value)
    assert (True, 1) == (str(path) in message, len(message.splitlines()))
    with pytest.raises(StoreBroken, match="not a database"):
        await store.ping()
    with pytest.raises(StoreBroken):
        await store.add_job(JobRef("job-1"), now=NOW, first_poll_at=NOW)


async def test_a_corrupted_page_behind_a_valid_header_is_broken(tmp_path: Path) -> None:
    """A file with an intact header but a table page overwritten raises StoreBroken, and keeps doing so."""
    path = tmp_path / "state.db"
    store = await open_store(path)
    for index in range(300):
        await store.add_job(JobRef(f"job-{index:03d}", {"pad": "p" * 200}), now=NOW, first_poll_at=NOW)
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()
    with path.open("r+b") as raw:
        raw.seek((root - 1) * page_size)
        raw.write(b"\xa5" * page_size)
    store = SqliteStore(str(path))
    with pytest.raises(StoreBroken) as caught:
        await store.open()
        await store.list_jobs()
    assert (True, 1) == (str(path) in str(caught.value), len(str(caught.value).splitlines()))
    with pytest.raises(StoreBroken):
        await store.ping()
    await store.close()


async def test_a_deleted_file_is_unavailable_until_it_is_back(tmp_path: Path) -> None:
    """Deleting the open file makes ping and writes StoreUnavailable (nothing lands in a file nobody
    reads); renaming it back makes the same store work again, with its data."""
    path = tmp_path / "state.db"
    store = await open_store(path)
    try:
        await add(store, "job-1")
        aside = tmp_path / "aside.db"
        path.rename(aside)
        with pytest.raises(StoreUnavailable, match=re.escape(f"state file {path} was deleted or replaced")):
            await store.ping()
        with pytest.raises(StoreUnavailable, match="deleted or replaced"):
            await store.add_job(JobRef("job-2"), now=NOW, first_poll_at=NOW)
        assert not path.exists()
        aside.rename(path)
        await store.ping()
        assert True is await store.add_job(JobRef("job-2"), now=NOW, first_poll_at=NOW)
        assert ["job-1", "job-2"] == ids(await store.list_jobs())
    finally:
        await store.close()


async def test_a_replaced_file_is_unavailable(tmp_path: Path) -> None:
    """A different file put at the path (another inode) is noticed by ping and by the next write."""
    path = tmp_path / "state.db"
    store = await open_store(path)
    try:
        await add(store, "job-1")
        other = await open_store(tmp_path / "other.db")
        await other.close()
        os.replace(tmp_path / "other.db", path)
        with pytest.raises(StoreUnavailable, match="deleted or replaced"):
            await store.ping()
        with pytest.raises(StoreUnavailable, match="deleted or replaced"):
            await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE)
    finally:
        await store.close()


async def test_a_lock_held_too_long_is_unavailable_then_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection holding the write lock past busy_timeout gives StoreUnavailable (SQLITE_BUSY);
    once it lets go the same store writes."""
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_MS", 50)  # not 5 s of waiting in a test
    path = tmp_path / "state.db"
    store = await open_store(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match=r"locked|busy"):
            await store.add_job(JobRef("job-1"), now=NOW, first_poll_at=NOW)
        blocker.execute("ROLLBACK")
        assert True is await store.add_job(JobRef("job-1"), now=NOW, first_poll_at=NOW)
    finally:
        blocker.close()
        await store.close()


def test_errors_are_classified_by_code_not_text() -> None:
    """Extended codes count as their primary code; a message that merely mentions "locked" is not transient."""
    busy = sqlite3.OperationalError("anything at all")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY_SNAPSHOT
    readonly = sqlite3.OperationalError("x")
    readonly.sqlite_errorcode = sqlite3.SQLITE_READONLY_DBMOVED
    corrupt = sqlite3.DatabaseError("y")
    corrupt.sqlite_errorcode = sqlite3.SQLITE_CORRUPT_INDEX
    with sqlite3.connect(":memory:") as conn, pytest.raises(sqlite3.OperationalError) as caught:
        conn.execute("SELECT * FROM locked")  # "no such table: locked": our bug, not the disk's
    assert [StoreUnavailable, StoreUnavailable, StoreBroken, None] == [
        sqlite_db.classify(exc) for exc in (busy, readonly, corrupt, caught.value)
    ]
