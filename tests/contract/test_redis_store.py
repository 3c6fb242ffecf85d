"""What only the Redis store promises: the server's lease clock, bounded waits on a paused
or silent server, clear errors for what is not Redis, its layout upgrade and paging."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tests.contract.storekit import NOW, make_delivery, token
from tests.helpers import free_port, missing_service
from watcher.errors import StoreBroken, StoreUnavailable
from watcher.models import JobRef, Outcome, PollUpdate
from watcher.store.redis import SCHEMA_VERSION, RedisStore


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    """A Redis store on the test server, measuring leases by the server's TIME (the default)."""
    opened = RedisStore(redis_url, prefix=redis_prefix)
    await opened.open()
    yield opened
    await opened.close()


async def server_now(redis_url: str) -> float:
    client = aioredis.Redis.from_url(redis_url)
    try:
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    return seconds + micros / 1e6


@contextlib.contextmanager
def redis_server(*options: str) -> Iterator[int]:
    """A redis-server of our own on a free port (pausing the shared one would stall everyone else's tests)."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_service("redis-server is not on PATH")
    assert binary is not None
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *options]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@pytest.fixture
def private_redis() -> Iterator[int]:
    """The port of a private redis-server."""
    with redis_server() as port:
        yield port


# --- the lease clock ------------------------------------------------------------


async def test_a_caller_clock_ahead_of_the_server_cannot_take_a_live_lease(store: RedisStore, redis_url: str) -> None:
    """With a 30 s fast clock, a replica cannot claim a job leased 10 s ago (by the server) for 20 s."""
    now = await server_now(redis_url)
    assert await store.add_job(JobRef("job-1"), now=now - 20, first_poll_at=now - 20)
    # Leased "10 s ago" for 20 s: 10 s of it are left on the server's clock.
    (held,) = await store.claim_due_jobs(now=now - 10, limit=5, owner="w1", lease=20)
    assert held.lease is not None and now + 19 < held.lease.until < now + 21
    fast = now + 30  # the other replica's clock; the lease expiry (now + 20) is behind it
    assert [] == await store.claim_due_jobs(now=fast, limit=5, owner="w2", lease=20)
    update = PollUpdate(next_poll_at=fast + 60, polls=1, transient_errors=0, snapshot=None)
    assert True is await store.record_poll("job-1", update, token=token(held), now=fast)


async def test_a_record_is_fenced_by_the_server_clock_not_the_callers(store: RedisStore, redis_url: str) -> None:
    """A holder whose own clock says the lease is long over may still write while the server says it lives."""
    now = await server_now(redis_url)
    await store.add_job(JobRef("job-1"), now=now, first_poll_at=now - 1)
    (held,) = await store.claim_due_jobs(now=now, limit=5, owner="w1", lease=30)
    assert [True] == await store.renew_jobs([("job-1", token(held))], now=now + 1000, lease=30)
    update = PollUpdate(next_poll_at=now + 60, polls=1, transient_errors=0, snapshot=None)
    assert [True] == await store.record_polls([("job-1", token(held), update)], now=now + 1000)


async def test_spreading_overdue_jobs_leaves_a_live_lease_alone(store: RedisStore, redis_url: str) -> None:
    """A caller clock ahead of the server sees a leased job as overdue; spreading must not reschedule it."""
    now = await server_now(redis_url)
    await store.add_job(JobRef("job-1"), now=now, first_poll_at=now - 1)
    (held,) = await store.claim_due_jobs(now=now, limit=5, owner="w1", lease=20)
    assert 0 == await store.spread_overdue(now=now + 30, window=10)
    assert now - 1 == (await store.get_job("job-1") or held).next_poll_at


async def test_a_lease_the_server_says_is_over_is_refused(store: RedisStore, redis_url: str) -> None:
    """A lease of 0.2 s is over 0.3 s later on the server: the holder's record is refused, a new claim wins."""
    now = await server_now(redis_url)
    await store.add_job(JobRef("job-1"), now=now, first_poll_at=now - 1)
    (stale,) = await store.claim_due_jobs(now=now, limit=5, owner="w1", lease=0.2)
    await asyncio.sleep(0.3)
    later = await server_now(redis_url)
    (fresh,) = await store.claim_due_jobs(now=later, limit=5, owner="w2", lease=30)
    update = PollUpdate(next_poll_at=later + 60, polls=1, transient_errors=0, snapshot=None)
    assert False is await store.record_poll("job-1", update, token=token(stale), now=now)
    await store.release_job("job-1", token=token(stale))  # a stale release frees nothing
    assert [] == await store.claim_due_jobs(now=later, limit=5, owner="w3", lease=30)
    assert True is await store.record_poll("job-1", update, token=token(fresh), now=later)


# --- bounded waits and clear errors ------------------------------------------------


async def test_a_paused_server_surfaces_as_unavailable_within_the_timeout_then_recovers(private_redis: int) -> None:
    """CLIENT PAUSE during a claim: StoreUnavailable within about a second, and the same store works afterwards."""
    url = f"redis://127.0.0.1:{private_redis}/0"
    store = RedisStore(url, prefix="iw-pause", socket_timeout=0.5, server_time=False)
    admin = aioredis.Redis.from_url(url)
    await store.open()
    try:
        await store.add_job(JobRef("job-1"), now=NOW, first_poll_at=NOW)
        await admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{private_redis}"):
                await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=30)
            assert time.monotonic() - started < 1.2
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")  # answered once the pause ends
        assert ["job-1"] == [job.id for job in await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=30)]
    finally:
        await store.close()
        await admin.aclose()


async def test_a_closed_port_is_unavailable_with_host_and_port_but_no_password() -> None:
    """Nothing listening: StoreUnavailable, one line naming host:port, never the password."""
    port = free_port()
    store = RedisStore(f"redis://:hunter2-secret@127.0.0.1:{port}/0", connect_timeout=1)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    message = str(caught.value)
    assert (True, False, False) == (f"127.0.0.1:{port}" in message, "hunter2" in message, "\n" in message)


async def test_a_server_that_is_not_redis_is_broken_with_host_and_port_but_no_password() -> None:
    """An HTTP server on the port: StoreBroken (protocol error), one line naming host:port, never the password."""
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        store = RedisStore(f"redis://:hunter2-secret@127.0.0.1:{port}/3", connect_timeout=1, socket_timeout=1)
        with pytest.raises(StoreBroken) as caught:
            await store.open()
    finally:
        await runner.cleanup()
    message = str(caught.value)
    assert (True, False, False) == (f"127.0.0.1:{port}" in message, "hunter2" in message, "\n" in message)


async def test_a_wrong_password_is_broken_and_never_shown() -> None:
    """A server refusing our password: StoreBroken (retrying cannot help), and the password is not in the message."""
    with redis_server("--requirepass", "right-one") as port:
        store = RedisStore(f"redis://:hunter2-secret@127.0.0.1:{port}/0", connect_timeout=1)
        with pytest.raises(StoreBroken) as caught:
            await store.open()
    message = str(caught.value)
    assert (True, False) == (f"127.0.0.1:{port}" in message, "hunter2" in message)


async def test_keys_of_another_kind_under_the_prefix_are_broken(
    store: RedisStore, redis_url: str, redis_prefix: str
) -> None:
    """A prefix whose keys hold something else (WRONGTYPE) cannot be mended by retrying: StoreBroken."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{redis_prefix}:jobs:due", "not a zset")
    finally:
        await client.aclose()
    with pytest.raises(StoreBroken, match="WRONGTYPE"):
        await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=30)


# --- layout -------------------------------------------------------------------------


async def test_a_layout_1_store_is_upgraded_and_its_overdue_deliveries_found(redis_url: str, redis_prefix: str) -> None:
    """Opening a layout-1 store indexes its pending deliveries by deadline, so claim_expired finds them."""
    first = RedisStore(redis_url, prefix=redis_prefix, server_time=False)
    await first.open()
    await first.add_deliveries(
        [make_delivery("late", job_id=None, deadline=NOW + 10), make_delivery("ok", job_id=None)]
    )
    await first.close()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.delete(f"{redis_prefix}:dlvs:deadline", f"{redis_prefix}:dlvs:due:n:console")
        await client.set(f"{redis_prefix}:schema", "1")
        upgraded = RedisStore(redis_url, prefix=redis_prefix, server_time=False)
        await upgraded.open()
        expired = await upgraded.claim_expired_deliveries(now=NOW + 10, limit=5, owner="w1", lease=30)
        known = await upgraded.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=30, notifiers=["console"])
        await upgraded.close()
        assert (["late"], ["ok"], str(SCHEMA_VERSION)) == (
            [d.id for d in expired],
            [d.id for d in known],
            await client.get(f"{redis_prefix}:schema"),
        )
    finally:
        await client.aclose()


async def test_a_newer_layout_is_refused_as_broken(redis_url: str, redis_prefix: str) -> None:
    """A store written by a newer import-watcher is StoreBroken, naming the upgrade to make."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{redis_prefix}:schema", str(SCHEMA_VERSION + 1))
    finally:
        await client.aclose()
    with pytest.raises(StoreBroken, match="upgrade import-watcher"):
        await RedisStore(redis_url, prefix=redis_prefix).open()


async def command_calls(client: aioredis.Redis, command: str) -> int:
    """How many times the server ran `command`, also from inside scripts (INFO commandstats)."""
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_job_views_read_only_the_page_and_never_delivery_bodies(private_redis: int) -> None:
    """list_jobs(limit=10) over 3000 jobs reads 10 job hashes; list_deliveries(with_events=False) reads no body."""
    url = f"redis://127.0.0.1:{private_redis}/0"
    store, admin = RedisStore(url, prefix="iw-views", server_time=False), aioredis.Redis.from_url(url)
    await store.open()
    try:
        await store.add_jobs([JobRef(f"j{index:04d}") for index in range(3000)], now=NOW, first_poll_at=NOW)
        await store.add_deliveries([make_delivery(f"d{index}", job_id="j0001") for index in range(3)])
        before = await command_calls(admin, "hgetall")
        assert 10 == len(await store.list_jobs(limit=10))
        middle = await command_calls(admin, "hgetall")
        assert [{}, {}, {}] == [d.event for d in await store.list_deliveries(["j0001"], with_events=False)]
        assert (10, 0) == (middle - before, await command_calls(admin, "hgetall") - middle)
    finally:
        await store.close()
        await admin.aclose()


# --- paging -------------------------------------------------------------------------


async def test_pages_over_equal_added_at_follow_byte_order_even_from_a_removed_cursor(store: RedisStore) -> None:
    """Jobs added in one batch share added_at: pages follow the id's byte order, and a cursor whose
    job was removed meanwhile resumes right after where it stood."""
    job_ids = ["b-2", "B_1", "a", "A", "_x", "-y", "Zz", "z", "0", "9a", "a-b", "aB"]
    assert all(await store.add_jobs([JobRef(job_id) for job_id in job_ids], now=NOW, first_poll_at=NOW))
    await store.add_job(JobRef("later"), now=NOW + 1, first_poll_at=NOW)
    expected = [*sorted(job_ids), "later"]
    pages: list[str] = []
    cursor: tuple[float, str] | None = None
    while page := await store.list_jobs(limit=5, after=cursor):
        pages += [job.id for job in page]
        cursor = (page[-1].added_at, page[-1].id)
    assert expected == pages
    await store.remove_job("a", now=NOW)
    resumed = await store.list_jobs(limit=3, after=(NOW, "a"))
    assert expected[expected.index("a") + 1 : expected.index("a") + 4] == [job.id for job in resumed]


async def test_a_filter_pages_past_many_jobs_that_do_not_match(store: RedisStore) -> None:
    """A state filter finds the matching jobs however many others lie between (several script calls)."""
    refs = [JobRef(f"j{index:05d}") for index in range(4500)]
    await store.add_jobs(refs, now=NOW, first_poll_at=NOW + 1e6)
    await store.add_job(JobRef("zz-last"), now=NOW + 1, first_poll_at=NOW)
    (held,) = await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=30)
    assert await store.record_outcome(
        "zz-last", token=token(held), now=NOW, outcome=Outcome.COMPLETED, snapshot=None,
        polls=1, detected_at=NOW, deliveries=[],
    )  # fmt: skip
    assert ["zz-last"] == [job.id for job in await store.list_jobs(state="completed")]
    assert 4500 == len(await store.list_jobs(state="watching"))


async def test_a_batch_lease_is_measured_by_the_server_clock(store: RedisStore, redis_url: str) -> None:
    """A replica whose clock runs ahead cannot take a live batch claim; the holder finishes by the server's clock."""
    now = await server_now(redis_url)
    await store.add_job(JobRef("job-1", batch="nightly"), now=now - 100, first_poll_at=now - 100)
    (job,) = await store.claim_due_jobs(now=now - 100, limit=5, owner="w1", lease=30)
    await store.record_outcome(
        "job-1", token=token(job), now=now - 100, outcome=Outcome.COMPLETED, snapshot=None, polls=1,
        detected_at=now - 100, deliveries=[],
    )  # fmt: skip
    (held,) = await store.claim_settled_batches(now=now, settle=60, limit=5, owner="w1", lease=20)
    assert held.lease is not None and now + 19 < held.lease.until < now + 21
    assert [] == await store.claim_settled_batches(now=now + 30, settle=60, limit=5, owner="w2", lease=20)
    assert True is await store.finish_batch(
        "nightly", token=held.lease.token, now=now + 30, summary_id="s-1", deliveries=[make_delivery("s", job_id=None)]
    )


async def test_a_batch_claim_is_renewed_by_the_server_clock(store: RedisStore, redis_url: str) -> None:
    """A holder whose clock says the claim is long over still renews it while the server says it lives,
    to the server's now + lease: past its first 0.2 s a fast replica still cannot take it."""
    now = await server_now(redis_url)
    await store.add_job(JobRef("job-1", batch="nightly"), now=now - 100, first_poll_at=now - 100)
    (job,) = await store.claim_due_jobs(now=now - 100, limit=5, owner="w1", lease=30)
    await store.record_outcome(
        "job-1", token=token(job), now=now - 100, outcome=Outcome.COMPLETED, snapshot=None, polls=1,
        detected_at=now - 100, deliveries=[],
    )  # fmt: skip
    (held,) = await store.claim_settled_batches(now=now, settle=60, limit=5, owner="w1", lease=0.2)
    assert held.lease is not None
    assert [True] == await store.renew_batches([("nightly", held.lease.token)], now=now + 1000, lease=60)
    client = aioredis.Redis.from_url(redis_url)
    try:
        until = float(await client.hget(f"{store.prefix}:batch:nightly", "lease_until"))
    finally:
        await client.aclose()
    assert now + 59 < until < now + 61  # the server's clock, not the caller's now + 1000
    await asyncio.sleep(0.3)
    assert [] == await store.claim_settled_batches(now=now + 30, settle=60, limit=5, owner="w2", lease=20)


async def test_a_read_only_replica_is_unavailable_not_a_crash() -> None:
    """A failover's read-only replica answers writes with READONLY, which redis-py raises as its own
    class: the store reports StoreUnavailable (retried, readiness says so), never the raw error."""
    with redis_server("--replicaof", "127.0.0.1", str(free_port())) as port:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix=f"ro-{uuid.uuid4().hex[:8]}")
        with pytest.raises(StoreUnavailable) as info:
            await store.open()
    assert "not accepting writes" in str(info.value)
