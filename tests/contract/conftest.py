"""The `store` fixture: every contract test runs once per backend (memory, SQLite, Redis)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from watcher.store import MemoryStore, RedisStore, SqliteStore, StateStore

REDIS_URL = os.environ.get("WATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

#: Opens another store instance over the same data (another process's view).
StoreFactory = Callable[[], Awaitable[StateStore]]


async def _redis_reachable() -> str | None:
    """None when Redis answers, else why not."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        return f"Redis at {REDIS_URL} is unreachable ({exc}); set WATCHER_TEST_REDIS_URL"
    finally:
        await client.aclose()
    return None


async def _delete_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A function opening store instances that share one backend's data."""
    backend: str = request.param
    opened: list[StateStore] = []
    memory = MemoryStore()
    prefix = f"iw-test-{uuid.uuid4().hex}"
    if backend == "redis" and (reason := await _redis_reachable()) is not None:
        pytest.skip(reason)

    async def make() -> StateStore:
        store: StateStore
        if backend == "memory":
            store = memory  # one process: every "instance" is the same object
        elif backend == "sqlite":
            store = SqliteStore(str(tmp_path / "state" / "watcher.db"))
        else:
            store = RedisStore(REDIS_URL, prefix=prefix, server_time=False)  # contract tests pass their own `now`
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
    if backend == "redis":
        await _delete_prefix(prefix)


@pytest.fixture
async def store(store_factory: StoreFactory) -> StateStore:
    """One opened store of the backend under test."""
    return await store_factory()
