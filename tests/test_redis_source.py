"""The Redis stream source against a real Redis: ack rules, dead letters, reclaim, back-pressure, outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
import structlog

from tests.helpers import eventually, free_port
from watcher.clock import SystemClock
from watcher.config import RedisSourceSettings
from watcher.errors import StoreUnavailable
from watcher.models import JobRef
from watcher.policy import PollPolicy
from watcher.sources.base import Intake
from watcher.sources.redis import RedisStreamSource, client_url, read_entry, redis_location
from watcher.store import MemoryStore

REDIS_URL = os.environ.get("WATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
NOTIFIERS = ("hook", "team-slack")

SourceFactory = Callable[..., Awaitable[RedisStreamSource]]


class FlakyStore(MemoryStore):
    """A memory store whose add_job raises StoreUnavailable while `down` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused: list[str] = []

    async def add_job(self, ref: JobRef, *, now: float, first_poll_at: float, again: bool = False) -> bool:
        if self.down:
            self.refused.append(ref.id)
            raise StoreUnavailable("store down for this test")
        return await super().add_job(ref, now=now, first_poll_at=first_poll_at, again=again)


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"Redis at {REDIS_URL} is unreachable ({exc}); set WATCHER_TEST_REDIS_URL")
    yield client
    await client.aclose()


@pytest.fixture
async def settings(redis_client: aioredis.Redis) -> AsyncIterator[RedisSourceSettings]:
    """Settings on a fresh random stream; every key under its prefix is deleted afterwards."""
    prefix = f"iw-src-{uuid.uuid4().hex}"
    yield RedisSourceSettings(
        url=REDIS_URL, stream=f"{prefix}:jobs", group=f"{prefix}-group", consumer="me", block=0.05, claim_idle=60.0
    )
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
async def make_source(settings: RedisSourceSettings, store: FlakyStore) -> AsyncIterator[SourceFactory]:
    """Starts sources over the test's stream and store; all are closed afterwards."""
    await store.open()
    intake = Intake(store, PollPolicy(), SystemClock(), NOTIFIERS)
    made: list[tuple[RedisStreamSource, asyncio.Event, asyncio.Task[None]]] = []

    async def make(**overrides: Any) -> RedisStreamSource:
        source = RedisStreamSource(replace(settings, **overrides), intake, retry_initial=0.05, retry_max=0.2)
        await source.start()
        stop = asyncio.Event()
        made.append((source, stop, asyncio.create_task(source.run(stop))))  # the daemon's supervisor does this
        return source

    yield make
    for source, stop, reader in made:
        stop.set()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await source.close()


async def pending(client: aioredis.Redis, settings: RedisSourceSettings) -> int:
    return int((await client.xpending(settings.stream, settings.group))["pending"])


async def dead_letters(client: aioredis.Redis, settings: RedisSourceSettings) -> list[dict[str, str]]:
    entries = await client.xrange(f"{settings.stream}:dead")
    return [{k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()} for _, fields in entries]


async def test_good_entries_are_stored_then_acked(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """A `job` JSON entry and a bare `id` entry are both stored with their labels, then acknowledged."""
    source = await make_source()
    assert source.started
    job = {"id": "job-1", "labels": {"team": "growth", "batch": 7}, "notify": ["hook"]}
    await redis_client.xadd(settings.stream, {"job": json.dumps(job)})
    await redis_client.xadd(settings.stream, {"id": "job-2"})
    await eventually(source.idle)
    stored = {j.id: j for j in await store.list_jobs()}
    assert {"job-1", "job-2"} == set(stored)
    assert {"team": "growth", "batch": "7"} == dict(stored["job-1"].labels)
    assert ("hook",) == stored["job-1"].notify
    assert None is stored["job-2"].notify
    assert 0 == await pending(redis_client, settings)
    assert 2 == source.stats["added"]


async def test_a_job_message_may_name_its_batch(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """A `job` JSON entry's `batch` is stored with the job and counted in that batch."""
    source = await make_source()
    await redis_client.xadd(settings.stream, {"job": json.dumps({"id": "in-batch-1", "batch": "nightly:2026-11-27"})})
    await redis_client.xadd(settings.stream, {"job": json.dumps({"id": "no-batch-1", "batch": None})})
    await eventually(source.idle)
    batched, plain = await store.get_job("in-batch-1"), await store.get_job("no-batch-1")
    assert ("nightly:2026-11-27", None) == (batched and batched.batch, plain and plain.batch)
    batch = await store.get_batch("nightly:2026-11-27")
    assert 1 == (batch.jobs if batch else None)


async def test_duplicate_entry_is_a_no_op_and_acked(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """An entry for a job already tracked changes nothing in the store and is still acknowledged."""
    await store.add_job(JobRef("dup-1", {"first": "yes"}), now=time.time(), first_poll_at=time.time())
    source = await make_source()
    await redis_client.xadd(settings.stream, {"job": json.dumps({"id": "dup-1", "labels": {"second": "yes"}})})
    await eventually(lambda: source.stats["known"] == 1)
    await eventually(source.idle)
    job = await store.get_job("dup-1")
    assert job is not None
    assert {"first": "yes"} == dict(job.labels)
    assert 0 == await pending(redis_client, settings)


MALFORMED = [
    ({"job": "{not json"}, "not valid JSON"),
    ({"job": json.dumps({"id": "a b"})}, "invalid job id"),
    ({"id": "a b"}, "invalid job id"),
    ({"id": b"\xff\xfe"}, "not UTF-8"),
    ({"colour": "blue"}, "missing field"),
    ({"job": json.dumps({"labels": {"a": "b"}})}, "missing `id`"),
    ({"job": json.dumps({"id": "ok-id", "colour": "blue"})}, "unknown key 'colour'"),
    ({"job": json.dumps({"id": "ok-id", "again": True})}, "unknown key 'again'"),
    ({"job": '{"id": "ok-id", "labels": {"n": NaN}}'}, "NaN is not a JSON number"),
    ({"job": '{"id": "ok-id", "labels": {"n": "\\ud800"}}'}, "lone surrogate"),
    ({"job": json.dumps({"id": 12345})}, "quote it"),
    ({"job": json.dumps({"id": "ok-id", "batch": "a b"})}, "`job.batch`: invalid batch name 'a b'"),
    ({"job": json.dumps({"id": "ok-id", "batch": "x" * 129})}, "`job.batch`: invalid batch name"),
    ({"id": "ok-id", "padding": "x" * (64 * 1024)}, "entry larger than 65536 bytes"),
]


async def test_malformed_entries_go_to_the_dead_letter_stream(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """Each malformed entry is copied to `<stream>:dead` with a reason and acked; the good one after them is stored."""
    for fields, _ in MALFORMED:
        await redis_client.xadd(settings.stream, fields)  # type: ignore[arg-type]
    await redis_client.xadd(settings.stream, {"id": "after-the-junk"})
    source = await make_source()
    await eventually(source.idle)
    assert ["after-the-junk"] == [job.id for job in await store.list_jobs()]
    dead = await dead_letters(redis_client, settings)
    assert len(MALFORMED) == len(dead)
    for (fields, reason), letter in zip(MALFORMED, dead, strict=True):
        assert reason in letter["reason"], letter
        for key, value in fields.items():
            expected = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            assert expected == letter[key]
    assert 0 == await pending(redis_client, settings)
    assert len(MALFORMED) == source.stats["dead"]


async def test_an_entry_naming_a_notifier_unknown_here_is_stored(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """A notifier this replica does not know (a config not yet rolled out) is stored, not dead-lettered."""
    await redis_client.xadd(settings.stream, {"job": json.dumps({"id": "new-cfg", "notify": ["pager"]})})
    source = await make_source()
    with structlog.testing.capture_logs() as logs:
        await eventually(source.idle)
    job = await store.get_job("new-cfg")
    assert (("pager",), [], 0) == (
        job.notify if job else None, await dead_letters(redis_client, settings), await pending(redis_client, settings)
    )
    assert ["pager"] == next(e["notifiers"] for e in logs if e["event"] == "source.notifier_unknown_here")


async def test_a_tombstoned_job_is_not_brought_back_and_logged_once(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """An entry for a stopped job is acknowledged without a new watch; the tombstone is logged once."""
    await store.add_job(JobRef("stopped-1"), now=time.time(), first_poll_at=time.time())
    assert await store.remove_job("stopped-1", now=time.time())
    for _ in range(3):
        await redis_client.xadd(settings.stream, {"id": "stopped-1"})
    source = await make_source()
    with structlog.testing.capture_logs() as logs:
        await eventually(source.idle)
    assert ([], 0) == (await store.list_jobs(), await pending(redis_client, settings))
    assert [("stopped-1", "stopped")] == [
        (e["job_id"], e["reason"]) for e in logs if e["event"] == "source.job_tombstoned"
    ]


async def test_entries_pushed_before_the_group_existed_are_read(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """The group starts at the beginning of the stream, so entries from before the first watcher are stored."""
    for i in range(5):
        await redis_client.xadd(settings.stream, {"id": f"early-{i}"})
    assert [] == await redis_client.xinfo_groups(settings.stream)
    source = await make_source()
    await eventually(source.idle)
    assert {f"early-{i}" for i in range(5)} == {job.id for job in await store.list_jobs()}


async def test_entries_left_pending_by_a_dead_consumer_are_reclaimed(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """Entries another consumer read and never acked are claimed after claim_idle, stored and acked."""
    await redis_client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    for i in range(3):
        await redis_client.xadd(settings.stream, {"id": f"orphan-{i}"})
    read = await redis_client.xreadgroup(settings.group, "dead-replica", {settings.stream: ">"}, count=10)
    assert 3 == len(read[0][1])
    source = await make_source(claim_idle=0.2)
    await eventually(source.idle)
    assert {f"orphan-{i}" for i in range(3)} == {job.id for job in await store.list_jobs()}
    assert 3 == source.stats["reclaimed"]
    assert 0 == await pending(redis_client, settings)


async def test_own_pending_entries_are_read_first_after_a_restart(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """A consumer restarting under the same name handles what it had read before, without waiting claim_idle."""
    await redis_client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    await redis_client.xadd(settings.stream, {"id": "mine-before"})
    await redis_client.xreadgroup(settings.group, "me", {settings.stream: ">"}, count=10)
    source = await make_source(consumer="me", claim_idle=3600.0)
    await eventually(source.idle)
    assert ["mine-before"] == [job.id for job in await store.list_jobs()]
    assert 0 == source.stats["reclaimed"]


async def test_store_outage_holds_entries_until_the_store_returns(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """While the store is down nothing is acked and the first entry is retried; afterwards all are stored."""
    store.down = True
    await redis_client.xadd(settings.stream, {"id": "held-1"})
    await redis_client.xadd(settings.stream, {"id": "held-2"})
    source = await make_source()
    await eventually(lambda: len(store.refused) >= 3)
    assert {"held-1"} == set(store.refused)  # the same entry, never the next one
    assert 2 == await pending(redis_client, settings)
    assert not await source.idle()
    store.down = False
    await eventually(source.idle)
    assert ["held-1", "held-2"] == [job.id for job in await store.list_jobs()]


async def test_unreachable_redis_at_start_does_not_crash(
    make_source: SourceFactory, settings: RedisSourceSettings
) -> None:
    """With nothing listening, start returns, `started` stays False, retries are logged without the password."""
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    with structlog.testing.capture_logs() as logs:
        source = await make_source(url=url)
        assert not source.started
        await eventually(lambda: sum(e["event"] == "source.redis_unavailable" for e in logs) >= 3)
    assert not source.started
    assert not await source.idle()
    assert "s3cret-pw" not in repr(logs)
    assert "s3cret-pw" not in source.name


class CuttableProxy:
    """A TCP proxy to Redis that a test can cut (drop every connection, refuse new ones) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_redis_outage_mid_run_pauses_then_resumes(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """When Redis goes away mid-run the source retries with backoff and picks up where it was once it is back."""
    port = redis_client.connection_pool.connection_kwargs.get("port", 6379)
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    proxy = CuttableProxy(port)
    await proxy.open()
    source = await make_source(url=f"redis://127.0.0.1:{proxy.port}/{db}")
    await redis_client.xadd(settings.stream, {"id": "before-outage"})
    await eventually(source.idle)
    with structlog.testing.capture_logs() as logs:
        await proxy.cut()
        await redis_client.xadd(settings.stream, {"id": "during-outage"})
        await eventually(lambda: any(e["event"] == "source.redis_unavailable" for e in logs))
        await proxy.open()
        await eventually(source.idle)
    await proxy.cut()
    assert ["before-outage", "during-outage"] == [job.id for job in await store.list_jobs()]
    assert source.started


async def test_deleted_stream_gets_its_group_back(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings, store: FlakyStore
) -> None:
    """When someone deletes the stream mid-run, the group is created again and new entries are still read."""
    source = await make_source()
    await redis_client.xadd(settings.stream, {"id": "before-del"})
    await eventually(source.idle)
    await redis_client.delete(settings.stream)
    await redis_client.xadd(settings.stream, {"id": "after-del"})
    await eventually(lambda: source.stats["added"] == 2)
    await eventually(source.idle)
    assert ["before-del", "after-del"] == [job.id for job in await store.list_jobs()]


async def test_close_leaves_no_consumer_behind(
    make_source: SourceFactory, redis_client: aioredis.Redis, settings: RedisSourceSettings
) -> None:
    """A source closing with nothing pending removes its consumer from the group."""
    source = await make_source(consumer="short-lived")
    await redis_client.xadd(settings.stream, {"id": "one"})
    await eventually(source.idle)
    await source.close()
    consumers = await redis_client.xinfo_consumers(settings.stream, settings.group)
    assert [] == [c["name"] for c in consumers if c["name"] == b"short-lived"]


def test_default_consumer_name_is_host_and_pid() -> None:
    """Without `consumer`, the name is hostname-pid, unique per process on one host."""
    source = RedisStreamSource(RedisSourceSettings(url=REDIS_URL), Intake(MemoryStore(), PollPolicy(), SystemClock(), ()))
    assert f"{socket.gethostname()}-{os.getpid()}" == source.consumer


def test_urls_are_shown_without_password_and_used_without_prefix() -> None:
    """Logs name only host:port, and a state-style `?prefix=` is not passed on to redis-py."""
    assert "redis.internal:6380" == redis_location("redis://user:pw@redis.internal:6380/2?prefix=x")
    assert "redis://:pw@h:1/2?ssl_cert_reqs=none" == client_url("redis://:pw@h:1/2?prefix=x&ssl_cert_reqs=none")


def test_read_entry_prefers_job_over_id() -> None:
    """An entry with both fields is read from `job`; extra fields are ignored."""
    ref = read_entry({b"job": b'{"id": "from-job"}', b"id": b"from-id", b"trace": b"abc"})
    assert JobRef("from-job") == ref
