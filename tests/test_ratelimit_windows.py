"""Window accounting counted exactly: lost requests shrink one window only; several pending answers merge by the rule."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from tests.test_ratelimit import START, redis_client, settle, window
from watcher.clock import ManualClock
from watcher.ratelimit import LocalRateBudget, RateBudget, RedisRateBudget
from watcher.ratelimit.shared import _text

__all__ = ["redis_client"]  # the fixture, re-used


class WatchedClock(ManualClock):
    """A ManualClock that tells when someone starts to sleep on it: a budget that made a caller wait."""

    def __init__(self, start: float = START) -> None:
        super().__init__(start)
        self.slept = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.slept.set()
        await super().sleep(seconds)


async def granted_now(budget: RateBudget, clock: WatchedClock) -> bool:
    """Whether an acquire returns without waiting: it either returns or sleeps on the clock, no timing."""
    clock.slept.clear()
    acquire = asyncio.ensure_future(budget.acquire())
    if isinstance(budget, LocalRateBudget):
        await settle()  # no I/O: it has returned or waits (for a probe's answer on an event, not the clock)
    else:
        slept = asyncio.ensure_future(clock.slept.wait())
        await asyncio.wait({acquire, slept}, return_when=asyncio.FIRST_COMPLETED, timeout=10)
        slept.cancel()
    if acquire.done():
        acquire.result()
        return True
    assert clock.slept.is_set() or isinstance(budget, LocalRateBudget), "acquire neither returned nor waited"
    acquire.cancel()
    await asyncio.gather(acquire, return_exceptions=True)
    return False


Factory = Callable[[WatchedClock], RateBudget]


@pytest.fixture(params=["local", "redis"])
async def budgets(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Budgets of one kind sharing one state: one process, or replicas on one fresh Redis key."""
    if request.param == "local":
        made: list[LocalRateBudget] = []

        def local(clock: WatchedClock) -> RateBudget:
            if not made:
                made.append(LocalRateBudget(max_rate=None, clock=clock))
            return made[0]  # one process: every "replica" is the same budget

        yield local
        return
    client = aioredis.Redis()
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError):
        await client.aclose()
        pytest.skip("no Redis at 127.0.0.1:6379")
    key = f"test:import-watcher:ratelimit:{uuid.uuid4().hex}"
    yield lambda clock: RedisRateBudget(client, key=key, max_rate=None, clock=clock)
    await client.delete(key)
    await client.aclose()


async def _hung_request(budget: RateBudget, sent: asyncio.Event) -> None:
    """A request that leaves and then never ends: no answer, no release (a hung call, a killed replica)."""
    await budget.acquire()
    sent.set()
    await asyncio.Event().wait()


async def test_lost_requests_shrink_only_the_next_window(budgets: Factory) -> None:
    """Four requests that never end take four slots of the next window only; the windows after it are whole."""
    clock = WatchedClock()
    lost, survivor = budgets(clock), budgets(clock)
    probe = window(4, "1", limit=5)  # Limit 5 per 1 s window, 4 left after the probe
    lost.observe(probe, 200)
    hung = []
    for _ in range(4):
        sent = asyncio.Event()
        hung.append(asyncio.create_task(_hung_request(lost, sent)))
        await asyncio.wait_for(sent.wait(), 5)
    per_window = []
    for _ in range(3):
        clock.advance(1.0)
        granted = 0
        while granted <= 5 and await granted_now(survivor, clock):
            granted += 1
            survivor.release()  # failed fast without an answer: it cannot land in a later window
        per_window.append(granted)
    assert [1, 5, 5] == per_window
    for task in hung:
        task.cancel()
    await asyncio.gather(*hung, return_exceptions=True)


async def _answered(budget: RateBudget, answer: asyncio.Event, headers: dict[str, str], status: int) -> None:
    """A request whose answer arrives when `answer` is set; observed in its own task, as the client does."""
    await budget.acquire()
    await answer.wait()
    budget.observe(headers, status)


async def _until_issued(client: aioredis.Redis, key: str, count: int) -> None:
    """Wait (up to 5 s) until the shared state has handed out `count` requests."""
    for _ in range(5000):
        if str(count).encode() == await client.hget(key, "issued"):
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{count} requests never acquired")


async def test_several_pending_readings_merge_by_the_window_rule(redis_client: aioredis.Redis) -> None:
    """Answers pending on two replicas at once end as the longest block, the newest limit and the tighter window."""
    clock = WatchedClock()
    key = f"test:import-watcher:ratelimit:{uuid.uuid4().hex}"
    # One slot per script call: sequence numbers 1 to 5 are the five requests, as the readings say.
    first, second, third = (
        RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock, max_batch=1) for _ in range(3)
    )
    try:
        first.observe(window(9, "60", limit=10), 200)
        await first.flush()
        answers = [asyncio.Event() for _ in range(5)]
        readings = [  # requests 1-3 from the first replica, 4-5 from the second
            (first, window(8, "60", limit=10), 200),  # 8 - 4 sent after it: 4 left
            (first, window(6, "60", limit=20), 200),  # 6 - 3: 3 left; heard last, so the newest Limit
            (first, window(3, "60", limit=10), 200),  # 3 - 2: 1 left, the tightest
            (second, {"Retry-After": "30"}, 429),  # the longest block
            (second, {"Retry-After": "10"}, 429),
        ]
        tasks = []
        for (budget, headers, status), answer in zip(readings, answers, strict=True):
            tasks.append(asyncio.create_task(_answered(budget, answer, headers, status)))
            await _until_issued(redis_client, key, len(tasks))  # in this order: sequence numbers 1 to 5
        for index in (2, 3, 0, 4, 1):  # answers overtake each other: tightest and longest first
            answers[index].set()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await first.flush()
        await second.flush()
        stored = {_text(name): float(value) for name, value in (await redis_client.hgetall(key)).items()}
        assert (START + 30, 20.0, 1.0) == (stored["blocked_until"], stored["limit"], stored["remaining"])
        clock.advance(29.9)
        assert not await granted_now(third, clock)
        clock.advance(0.1)
        assert [True, False] == [await granted_now(third, clock), await granted_now(third, clock)]
    finally:
        await redis_client.delete(key)
