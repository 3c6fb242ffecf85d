"""The engine's loop: runners over a ready queue, batched records, drain, stale ready jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from watcher.clock import Clock, ManualClock, SystemClock
from watcher.engine import Engine
from watcher.models import JobRef, Snapshot
from watcher.policy import PollPolicy
from watcher.store import MemoryStore, SqliteStore, StateStore

#: Each job is polled once: the next poll is five minutes away.
ONCE = PollPolicy(initial_delay=0.0, min_interval=300.0, max_interval=300.0)


class FakeSendGrid:
    """Answers `pending` for every job; counts calls and the most at once."""

    def __init__(self, clock: Clock, *, delay: float = 0.0, advance: dict[str, float] | None = None) -> None:
        self.clock = clock
        self.delay = delay
        self.advance = advance or {}
        self.calls: list[str] = []
        self.in_flight = 0
        self.peak = 0

    async def get_import(self, job_id: str) -> Snapshot:
        self.calls.append(job_id)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if job_id in self.advance and isinstance(self.clock, ManualClock):
                self.clock.advance(self.advance[job_id])
            return Snapshot("pending", "upsert", {"requested_count": 10})
        finally:
            self.in_flight -= 1


class CountingReleases(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[str] = []

    async def release_job(self, job_id: str, *, token: str) -> None:
        self.released.append(job_id)
        await super().release_job(job_id, token=token)


async def add_jobs(store: StateStore, count: int, now: float) -> list[str]:
    ids = [f"job-{i:03d}" for i in range(count)]
    for job_id in ids:
        assert await store.add_job(JobRef(job_id), now=now, first_poll_at=now)
    return ids


async def run_until(engine: Engine, done: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Run the engine until `done()`, then stop it and drain."""
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    deadline = time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, "the engine did not get there in time"
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert 0 == await engine.drain(5.0)


def make_engine(store: StateStore, client: FakeSendGrid, clock: Clock, **options: float) -> Engine:
    """An engine polling each job once, as owner "w1", with the given max_concurrency and lease."""
    return Engine(
        store=store, client=client, policy=ONCE, clock=clock, owner="w1", recipients=[],
        max_concurrency=int(options.get("max_concurrency", 32)), lease=options.get("lease", 120.0),
    )


def each_polled_once(store: StateStore) -> Callable[[], Awaitable[bool]]:
    async def done() -> bool:
        return all(job.polls == 1 for job in await store.list_jobs())

    return done


async def test_runners_poll_every_due_job_once_within_max_concurrency(tmp_path: Path) -> None:
    """Many due jobs: each is polled and recorded once, never more than max_concurrency at a time."""
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    clock = SystemClock()
    ids = await add_jobs(store, 60, clock.now())
    client = FakeSendGrid(clock, delay=0.001)
    engine = make_engine(store, client, clock, max_concurrency=4)

    await run_until(engine, each_polled_once(store))
    assert (sorted(ids), 4) == (sorted(client.calls), client.peak)
    assert ({"ok": 60}, 0) == (engine.stats.polls, engine.in_flight)
    # Every lease was given back with the record: nothing is held, nothing is due before its time.
    assert [] == await store.claim_due_jobs(now=clock.now() + 299, limit=100, owner="w2", lease=30)
    assert 60 == len(await store.claim_due_jobs(now=clock.now() + 301, limit=100, owner="w2", lease=30))
    await store.close()


async def test_stopping_gives_back_jobs_claimed_but_not_started() -> None:
    """After stop and drain no lease is held: polled jobs are recorded, the others claimable at once."""
    store = MemoryStore()
    clock = SystemClock()
    await add_jobs(store, 40, clock.now())
    client = FakeSendGrid(clock, delay=0.005)
    engine = make_engine(store, client, clock, max_concurrency=2)

    async def some_polled() -> bool:
        return len(client.calls) >= 5

    await run_until(engine, some_polled)
    jobs = await store.list_jobs()
    polled = sorted(job.id for job in jobs if job.polls == 1)
    assert sorted(set(client.calls)) == polled
    assert len(polled) < 40
    # Claimed but never polled: given back, so another replica can take them now.
    again = await store.claim_due_jobs(now=clock.now(), limit=100, owner="w2", lease=30)
    assert sorted(job.id for job in jobs if job.polls == 0) == sorted(job.id for job in again)


async def test_a_ready_job_whose_lease_half_ran_out_is_given_back_not_polled() -> None:
    """A job that waited in the ready queue too long goes back to the store and is claimed afresh."""
    store = CountingReleases()
    clock = ManualClock()
    ids = await add_jobs(store, 2, clock.now())
    # Polling the first job takes 6 s of the 10 s lease the second one waits with.
    client = FakeSendGrid(clock, advance={ids[0]: 6.0})
    engine = make_engine(store, client, clock, max_concurrency=1, lease=10.0)

    await run_until(engine, each_polled_once(store))
    assert (ids, [ids[1]]) == (client.calls, store.released)


async def test_the_reserve_shrinks_when_polls_are_slower_than_the_lease() -> None:
    """Polls held back (say by the rate budget) make ready jobs go stale at first; the engine then
    keeps fewer ready, so later jobs are polled instead of given back over and over."""
    store = CountingReleases()
    clock = ManualClock()
    ids = await add_jobs(store, 40, clock.now())
    # Every poll takes 1 s of a 8 s lease, one at a time: a reserve of 2 waits 2 s at most.
    client = FakeSendGrid(clock, advance=dict.fromkeys(ids, 1.0))
    engine = make_engine(store, client, clock, max_concurrency=1, lease=8.0)

    await run_until(engine, each_polled_once(store))
    assert sorted(ids) == sorted(client.calls)
    assert len(store.released) <= 4


async def test_a_poll_cancelled_by_the_drain_gives_its_lease_back() -> None:
    """A poll still in flight when the grace ends is cancelled and its claim released: claimable at once."""
    store = MemoryStore()
    clock = SystemClock()
    ids = await add_jobs(store, 3, clock.now())
    client = FakeSendGrid(clock, delay=30.0)
    engine = make_engine(store, client, clock, max_concurrency=3, lease=120.0)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    while len(client.calls) < 3:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert 3 == await engine.drain(0.1)
    assert ({}, 0) == (engine.held, client.in_flight)
    again = await store.claim_due_jobs(now=clock.now(), limit=10, owner="w2", lease=30)
    assert sorted(ids) == sorted(job.id for job in again)
