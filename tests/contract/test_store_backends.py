"""Backend-only behaviour: SQLite files and threads, Redis reachability, store URLs."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.contract.storekit import LEASE, NOW, add, ids, make_delivery
from watcher.errors import StoreBroken, StoreUnavailable
from watcher.store import MemoryStore, RedisStore, SqliteStore, open_store
from watcher.store.sqlite import SCHEMA_VERSION


async def test_sqlite_data_survives_reopen_and_sets_schema_version(tmp_path: Path) -> None:
    """A closed and reopened SQLite file keeps its jobs, and records the schema version."""
    path = tmp_path / "deep" / "dir" / "state.db"
    store = SqliteStore(str(path))
    await store.open()
    await add(store, "job-1")
    await store.add_deliveries([make_delivery("d1")])
    await store.set_meta("k", "v")
    await store.close()
    reopened = SqliteStore(str(path))
    await reopened.open()
    try:
        assert ["job-1"] == [j.id for j in await reopened.list_jobs()]
        assert ["d1"] == ids(await reopened.list_deliveries())
        assert "v" == await reopened.get_meta("k")
    finally:
        await reopened.close()
    with sqlite3.connect(path) as conn:
        assert SCHEMA_VERSION == conn.execute("PRAGMA user_version").fetchone()[0]
        assert "wal" == conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_sqlite_claimers_in_threads_never_share_a_job(tmp_path: Path) -> None:
    """Separate connections in separate threads (like separate processes) never share a job."""
    path = str(tmp_path / "state.db")

    async def seed() -> None:
        store = SqliteStore(path)
        await store.open()
        for index in range(200):
            await add(store, f"job-{index:03d}", at=NOW - index)
        await store.close()

    async def drain(owner: str) -> list[str]:
        store = SqliteStore(path)
        await store.open()
        got: list[str] = []
        while batch := await store.claim_due_jobs(now=NOW, limit=3, owner=owner, lease=LEASE):
            got.extend(job.id for job in batch)
        await store.close()
        return got

    asyncio.run(seed())
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: asyncio.run(drain(f"w{n}")), range(4)))
    every = [job_id for got in results for job_id in got]
    assert (200, 200) == (len(every), len(set(every)))


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database written by a newer import-watcher is refused as broken, naming the file."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreBroken, match="newer"):
        await SqliteStore(str(path)).open()
    with pytest.raises(StoreBroken, match=str(path)):
        await SqliteStore(str(path)).open()


async def test_sqlite_in_memory_works() -> None:
    """SqliteStore(":memory:") gives a private, working database."""
    store = SqliteStore(":memory:")
    await store.open()
    await add(store, "job-1")
    assert ["job-1"] == [j.id for j in await store.list_jobs()]
    await store.close()


async def test_redis_unreachable_raises_store_unavailable() -> None:
    """A Redis nobody listens on maps to StoreUnavailable, not a redis exception."""
    store = RedisStore("redis://127.0.0.1:1/0?socket_connect_timeout=1", prefix="iw-none")
    with pytest.raises(StoreUnavailable):
        await store.open()


@pytest.mark.parametrize(
    ("url", "kind", "attribute", "value"),
    [
        ("sqlite:///relative/path.db", SqliteStore, "path", "relative/path.db"),
        ("sqlite:////abs/path.db", SqliteStore, "path", "/abs/path.db"),
        ("sqlite:///:memory:", SqliteStore, "path", ":memory:"),
        ("memory://", MemoryStore, None, None),
        ("redis://127.0.0.1:6379/2", RedisStore, "prefix", "import-watcher"),
        ("rediss://h:6380/0?prefix=team-a&socket_timeout=5", RedisStore, "prefix", "team-a"),
    ],
)
def test_open_store_maps_urls(url: str, kind: type, attribute: str | None, value: str) -> None:
    """Each supported URL names the right backend, file path or key prefix."""
    store = open_store(url)
    assert kind is type(store)
    if attribute is not None:
        assert value == getattr(store, attribute)


@pytest.mark.parametrize(
    "url", ["postgres://db/x", "sqlite:///", "sqlite://host/x.db", "nonsense", "redis://h?prefix="]
)
def test_open_store_rejects_other_urls(url: str) -> None:
    """Anything else is a ValueError naming the accepted forms."""
    with pytest.raises(ValueError, match=r"state store|sqlite|prefix"):
        open_store(url)


def test_redis_prefix_is_not_passed_to_the_client() -> None:
    """The prefix query parameter is ours; the client URL keeps only its own parameters."""
    store = open_store("rediss://h:6380/0?prefix=team-a&socket_timeout=5")
    assert isinstance(store, RedisStore)
    assert "rediss://h:6380/0?socket_timeout=5" == store.url
