"""The request budget obeys max_rate, X-RateLimit-* and Retry-After, alone or shared via Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate

import pytest
import redis.asyncio as aioredis

from watcher.clock import ManualClock
from watcher.errors import StoreUnavailable
from watcher.ratelimit import (
    MAX_WAIT,
    LocalRateBudget,
    RateBudget,
    RateSignal,
    RedisRateBudget,
    read_signal,
    reset_seconds,
    retry_after_seconds,
)

START = 1_800_000_000.0  # ManualClock's default start, a whole epoch second


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


async def settle() -> None:
    """Let every runnable task run (the local budget does no I/O)."""
    for _ in range(100):
        await asyncio.sleep(0)


def start(budget: RateBudget, count: int) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(budget.acquire()) for _ in range(count)]


def done(tasks: list[asyncio.Task[None]]) -> int:
    return sum(task.done() and not task.cancelled() for task in tasks)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def window(remaining: int, reset: str, limit: int | None = None) -> dict[str, str]:
    headers = {"X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": reset}
    if limit is not None:
        headers["X-RateLimit-Limit"] = str(limit)
    return headers


# --- reading headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (str(int(START) + 30), 30.0),
        ("30", 30.0),
        ("0", 0.0),
        (str(int(START) - 5), 0.0),
        ("999999999", MAX_WAIT),
        ("soon", None),
        ("-3", None),
        ("nan", None),
        (None, None),
    ],
)
def test_reset_seconds(value: str | None, seconds: float | None) -> None:
    """X-RateLimit-Reset above 10^9 is an epoch, otherwise a delta; nonsense is ignored."""
    assert seconds == reset_seconds(value, START)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("12", 12.0),
        (" 1.5 ", 1.5),
        (formatdate(START + 45, usegmt=True), 45.0),
        (formatdate(START - 45, usegmt=True), 0.0),
        ("86400000", MAX_WAIT),
        ("9" * 400, MAX_WAIT),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_WAIT),
        ("Sat, 15 Jan 2027 08:00:45 -0000", 45.0),
        ("tomorrow", None),
        ("-5", None),
        ("nan", None),
        ("inf", None),
        ("1e400", None),
        ("1_000", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    """Retry-After is delta seconds or an HTTP date, within [0, MAX_WAIT]; anything else is no value."""
    assert seconds == retry_after_seconds(value, START)


def test_read_signal_ignores_header_case() -> None:
    """Header names match in any case."""
    headers = {"x-RATELIMIT-limit": "10", "X-Ratelimit-Remaining": "4", "x-ratelimit-reset": "3"}
    assert RateSignal(10.0, 4.0, START + 3, None) == read_signal(headers, 200, START)


def test_read_signal_retry_after_wins() -> None:
    """On a 429 with Retry-After, the window headers of that answer are not used."""
    headers = {"Retry-After": "2", **window(0, "60", 10)}
    assert RateSignal(10.0, None, None, START + 2, asked=2.0) == read_signal(headers, 429, START)


# --- LocalRateBudget -------------------------------------------------------------


async def test_first_request_probes_the_limits(clock: ManualClock) -> None:
    """Until a first answer arrives, one request at a time is in flight."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    tasks = start(budget, 5)
    await settle()
    assert 1 == done(tasks)
    budget.release()  # the probe failed without an answer: the next caller probes
    await settle()
    assert 2 == done(tasks)
    budget.observe(window(2, "10"), 200)  # the probe's answer: 2 left after it
    await settle()
    assert (4, 0.0) == (done(tasks), budget.remaining)
    await cancel_all(tasks)


async def test_no_limit_headers_no_wait(clock: ManualClock) -> None:
    """An answer without rate-limit headers leaves only max_rate to limit requests."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe({"Content-Type": "application/json"}, 200)
    tasks = start(budget, 50)
    await settle()
    assert 50 == done(tasks)
    assert (None, 50) == (budget.remaining, budget.in_flight)


@pytest.mark.parametrize("reset", [str(int(START) + 10), "10"], ids=["epoch", "delta"])
async def test_remaining_zero_blocks_until_reset(clock: ManualClock, reset: str) -> None:
    """With Remaining 0, no request leaves before the reset, in either Reset form."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe({"x-ratelimit-remaining": "0", "X-RATELIMIT-RESET": reset}, 200)
    tasks = start(budget, 1)
    await settle()
    clock.advance(9.9)
    await settle()
    assert 0 == done(tasks)
    clock.advance(0.1)
    await settle()
    assert 1 == done(tasks)


async def test_requests_in_flight_count_against_remaining(clock: ManualClock) -> None:
    """With Remaining 5 and 32 callers, 5 leave now and 5 more when the window resets."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe(window(5, "10", limit=5), 200)
    tasks = start(budget, 32)
    await settle()
    assert (5, 0.0) == (done(tasks), budget.remaining)
    for _ in range(5):
        budget.release()  # answered; otherwise they might land in the next window
    clock.advance(10)
    await settle()
    assert (10, 0.0) == (done(tasks), budget.remaining)
    for task in tasks:
        task.cancel()


async def _request(budget: RateBudget, answered: asyncio.Event, headers: dict[str, str]) -> None:
    """One request as the client makes it: acquire, wait for the answer, observe, release."""
    await budget.acquire()
    await answered.wait()
    budget.observe(headers, 200)
    budget.release()


async def test_answers_out_of_order(clock: ManualClock) -> None:
    """An answer counts the requests sent after it, and the lowest estimate of a window wins."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe(window(10, "60"), 200)
    events = [asyncio.Event() for _ in range(3)]
    # The server saw 9 and 8 left after the first two; another client of the same
    # key spent 5 before the third, so only 2 remained after it.
    remaining = [9, 8, 2]
    tasks = [
        asyncio.create_task(_request(budget, event, window(left, "60")))
        for left, event in zip(remaining, events, strict=True)
    ]
    await settle()
    assert 7.0 == budget.remaining
    events[0].set()  # the oldest answer: 9 left then, 2 requests sent since
    await settle()
    assert 7.0 == budget.remaining
    events[2].set()  # the newest answer
    await settle()
    assert 2.0 == budget.remaining
    events[1].set()  # overtaken: it would say 7, above what we know
    await settle()
    assert (2.0, 0) == (budget.remaining, budget.in_flight)
    await asyncio.gather(*tasks)


async def test_new_window_restores_the_budget(clock: ManualClock) -> None:
    """An answer from a later window replaces the estimate; one from an ended window is ignored."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe(window(0, "5"), 200)
    clock.advance(5)
    budget.observe(window(0, str(int(START) + 5)), 200)  # late answer, window over
    budget.observe(window(8, "5"), 200)
    tasks = start(budget, 10)
    await settle()
    assert (8, 0.0) == (done(tasks), budget.remaining)
    for task in tasks:
        task.cancel()


@pytest.mark.parametrize("retry_after", ["30", formatdate(START + 30, usegmt=True)])
async def test_retry_after_blocks_everyone(clock: ManualClock, retry_after: str) -> None:
    """A 429 with Retry-After (seconds or HTTP date) holds every request until then."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe({"Retry-After": retry_after}, 429)
    tasks = start(budget, 3)
    clock.advance(29.5)
    await settle()
    assert 0 == done(tasks)
    clock.advance(0.5)
    await settle()
    assert 3 == done(tasks)


async def test_retry_after_wins_over_reset(clock: ManualClock) -> None:
    """A short Retry-After is honoured even when the same answer shows an empty window."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe({"Retry-After": "2", **window(0, "60", 10)}, 429)
    tasks = start(budget, 1)
    clock.advance(2)
    await settle()
    assert 1 == done(tasks)


async def test_bare_429_waits_for_the_reset(clock: ManualClock) -> None:
    """A 429 without Retry-After blocks until X-RateLimit-Reset."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe({"X-RateLimit-Reset": "4"}, 429)
    tasks = start(budget, 1)
    clock.advance(3.9)
    await settle()
    assert 0 == done(tasks)
    clock.advance(0.1)
    await settle()
    assert 1 == done(tasks)


async def test_max_rate_spaces_requests(clock: ManualClock) -> None:
    """max_rate=2 lets one request leave every half second (50 ms early at most)."""
    budget = LocalRateBudget(max_rate=2, clock=clock)
    budget.observe({}, 200)  # no limits advertised: no probing
    tasks = start(budget, 4)
    counts = []
    for step in (0.0, 0.4, 0.05, 0.45, 0.05, 0.5):
        clock.advance(step)
        await settle()
        counts.append(done(tasks))
    assert [1, 1, 2, 2, 3, 4] == counts


async def test_waiters_are_served_in_order(clock: ManualClock) -> None:
    """Waiting callers leave in the order they arrived."""
    budget = LocalRateBudget(max_rate=10, clock=clock)
    budget.observe({}, 200)  # no limits advertised: no probing
    order: list[int] = []

    async def caller(n: int) -> None:
        await budget.acquire()
        order.append(n)

    tasks = [asyncio.create_task(caller(n)) for n in range(5)]
    for _ in range(5):
        await settle()
        clock.advance(0.1)
    await asyncio.gather(*tasks)
    assert [0, 1, 2, 3, 4] == order


async def test_cancelled_waiter_takes_nothing(clock: ManualClock) -> None:
    """Cancelling a waiting caller neither spends budget nor blocks the next one."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe(window(0, "10", limit=1), 200)
    first, second = start(budget, 2)
    await settle()
    first.cancel()
    await settle()
    clock.advance(10)
    await settle()
    assert (True, True, 0.0) == (first.cancelled(), second.done(), budget.remaining)
    assert 1 == budget.in_flight


async def test_hostile_reset_is_capped(clock: ManualClock) -> None:
    """A reset years away blocks for max_wait at most."""
    budget = LocalRateBudget(max_rate=None, clock=clock, max_wait=60)
    budget.observe(window(0, str(int(START) + 10**8)), 200)
    tasks = start(budget, 1)
    clock.advance(59.9)
    await settle()
    assert 0 == done(tasks)
    clock.advance(0.1)
    await settle()
    assert 1 == done(tasks)


# --- RedisRateBudget -------------------------------------------------------------


class FixedWindow:
    """A stand-in for SendGrid's counter: each request answered with what is left after it."""

    def __init__(self, *, limit: int, reset: str) -> None:
        self.limit, self.reset, self.served = limit, reset, 0

    async def request(self, budget: RateBudget) -> None:
        await budget.acquire()
        self.served += 1
        budget.observe(window(max(0, self.limit - self.served), self.reset, self.limit), 200)
        budget.release()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis()
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError):
        await client.aclose()
        pytest.skip("no Redis at 127.0.0.1:6379")
    yield client
    await client.aclose()


@pytest.fixture
async def shared(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Callable[..., RedisRateBudget]]:
    """Budgets on one fresh key, deleted afterwards."""
    key = f"test:import-watcher:ratelimit:{uuid.uuid4().hex}"

    def make(max_rate: float | None = None) -> RedisRateBudget:
        return RedisRateBudget(redis_client, key=key, max_rate=max_rate, clock=clock)

    yield make
    await redis_client.delete(key)


async def settle_io(check: Callable[[], bool] | None = None) -> None:
    """Let Redis round trips finish: until `check` holds, or a fixed short while."""
    for _ in range(30):
        await asyncio.sleep(0.005)
        if check is not None and check():
            return


async def settled_count(tasks: list[asyncio.Task[None]], expected: int) -> int:
    """Acquires done once `expected` are (up to 2 s), after a moment more to catch any extra."""
    for _ in range(400):
        if done(tasks) >= expected:
            break
        await asyncio.sleep(0.005)
    await settle_io()
    return done(tasks)


async def test_redis_replicas_share_remaining(shared: Callable[..., RedisRateBudget], clock: ManualClock) -> None:
    """Two replicas on one key together send no more than Remaining before the reset."""
    first, second = shared(), shared()
    first.observe(window(5, "10", limit=5), 200)
    await first.flush()
    server = FixedWindow(limit=5, reset=str(int(START) + 10))
    tasks = [asyncio.create_task(server.request(budget)) for budget in (first, second) for _ in range(10)]
    assert 5 == await settled_count(tasks, 5)
    await first.flush()  # every answer is in: none of the 5 lands in the next window
    await second.flush()
    clock.advance(10)
    assert (10, 0.0) == (await settled_count(tasks, 10), second.remaining)
    await cancel_all(tasks)


async def test_redis_replicas_share_max_rate(shared: Callable[..., RedisRateBudget], clock: ManualClock) -> None:
    """Two replicas with max_rate=2 together send one request per half second."""
    first, second = shared(max_rate=2), shared(max_rate=2)
    first.observe({}, 200)  # the server sends no limits
    await first.flush()
    tasks = start(first, 3) + start(second, 3)
    counts = []
    for expected in (1, 2, 3):
        counts.append(await settled_count(tasks, expected))
        clock.advance(0.5)
    assert [1, 2, 3] == counts
    await cancel_all(tasks)


async def test_redis_observation_rides_on_acquire(shared: Callable[..., RedisRateBudget], clock: ManualClock) -> None:
    """What a replica observed reaches the others with its next acquire."""
    first, second = shared(), shared()
    first.observe(window(3, "10"), 200)
    await first.acquire()
    tasks = start(second, 5)
    assert (2, 0.0) == (await settled_count(tasks, 2), second.remaining)
    await cancel_all(tasks)


async def test_redis_retry_after_blocks_every_replica(
    shared: Callable[..., RedisRateBudget], clock: ManualClock
) -> None:
    """A 429's Retry-After seen by one replica holds the others too."""
    first, second = shared(), shared()
    first.observe({"Retry-After": "5"}, 429)  # written at once by a short task
    await settle_io()
    tasks = start(second, 2)
    await settle_io()
    assert 0 == done(tasks)
    clock.advance(5)
    assert 2 == await settled_count(tasks, 2)


async def test_redis_replicas_probe_once(shared: Callable[..., RedisRateBudget], clock: ManualClock) -> None:
    """Before any answer, one request among all replicas finds out the limits."""
    first, second = shared(), shared()
    probe = start(first, 1)
    await settle_io(lambda: done(probe) == 1)
    tasks = start(first, 3) + start(second, 3)
    await settle_io()
    clock.advance(0.05)
    await settle_io()
    assert (1, 0) == (done(probe), done(tasks))
    first.observe(window(4, "10"), 200)  # the probe's answer reaches Redis at once
    clock.advance(0.05)
    assert 4 == await settled_count(tasks, 4)
    await cancel_all(tasks)


async def test_redis_down_is_store_unavailable(clock: ManualClock) -> None:
    """With Redis unreachable the budget raises StoreUnavailable instead of ignoring the limit."""
    budget = RedisRateBudget("redis://127.0.0.1:1/0", key="k", max_rate=None, clock=clock)
    budget.observe(window(3, "10"), 200)
    with pytest.raises(StoreUnavailable):
        await budget.acquire()
    with pytest.raises(StoreUnavailable):
        await budget.flush()  # what it observed is kept for the next attempt
    await budget.aclose()
