"""Slots taken in batches from the shared Redis budget: fewer round trips, never more requests than the rule grants."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.test_ratelimit import START, redis_client, window
from tests.test_ratelimit_windows import WatchedClock, granted_now
from watcher.ratelimit import RedisRateBudget
from watcher.ratelimit.shared import SLOT_HOLD, _text

__all__ = ["redis_client"]  # the fixture, re-used


class _Counted:
    """The budget's script, counting its calls (each is one EVALSHA round trip)."""

    def __init__(self, script: Any) -> None:
        self.script, self.calls = script, 0

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.script(**kwargs)


@pytest.fixture
async def key(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    name = f"test:import-watcher:ratelimit:{uuid.uuid4().hex}"
    yield name
    await redis_client.delete(name)


def _counted(budget: RedisRateBudget) -> _Counted:
    counted = _Counted(budget._script)
    budget._script = counted  # type: ignore[assignment]
    return counted


async def _stored(client: aioredis.Redis, key: str) -> dict[str, float]:
    return {_text(name): float(value) for name, value in (await client.hgetall(key)).items()}


async def test_a_busy_replica_takes_its_slots_in_batches(redis_client: aioredis.Redis, key: str) -> None:
    """200 requests in a row cost a handful of script calls, not 200; each request still holds its own slot."""
    clock = WatchedClock()
    budget = RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock)
    calls = _counted(budget)
    for _ in range(200):
        await budget.acquire()
        budget.observe({}, 200)
        budget.release()
    await budget.flush()
    stored = await _stored(redis_client, key)
    assert calls.calls <= 15, calls.calls  # 1, 2, 4, ... 32, then 32 a call: 11 acquiring calls, + flushes
    # Every request used a slot of its own; the only ones open are those still held, unused.
    assert stored["issued"] >= 200 and stored["open"] == stored["issued"] - 200


async def test_replicas_together_never_exceed_the_window(redis_client: aioredis.Redis, key: str) -> None:
    """Three replicas racing for a window of 40: the slots taken are exactly 40, the requests sent at most
    that; nobody sends more before the reset, and a full window opens after it."""
    clock = WatchedClock()
    replicas = [RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock) for _ in range(3)]
    replicas[0].observe(window(40, "60", limit=40), 200)
    await replicas[0].flush()
    rng = random.Random(15)
    sent, refused_in_a_row = 0, 0
    while refused_in_a_row < 6:  # releases without answers: only the window's remaining holds them back
        budget = rng.choice(replicas)
        if await granted_now(budget, clock):
            sent, refused_in_a_row = sent + 1, 0
            budget.release()
        else:
            refused_in_a_row += 1
    stored = await _stored(redis_client, key)
    assert 40 == stored["issued"] and 0 == stored["remaining"]
    assert 30 <= sent <= 40  # the rest are slots other replicas held when it ran out
    clock.advance(SLOT_HOLD)  # held slots lapse: they went out of the window, not back into it
    assert not any([await granted_now(budget, clock) for budget in replicas])
    clock.advance(60.0)  # the window ends: a full one (nothing is still in flight)
    assert await granted_now(replicas[1], clock)
    assert 39 == (await _stored(redis_client, key))["remaining"]


async def test_unused_slots_lapse_and_go_back(redis_client: aioredis.Redis, key: str) -> None:
    """Slots a replica took and did not use lapse after SLOT_HOLD, finished: the next window counts none of them."""
    clock = WatchedClock()
    budget = RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock)
    for _ in range(8):  # batches of 1, 2, 4, then 8: 7 slots held
        await budget.acquire()
        budget.observe({}, 200)
        budget.release()
    await budget.flush()
    stored = await _stored(redis_client, key)
    assert 15 == stored["issued"] and 7 == stored["open"]
    clock.advance(SLOT_HOLD)
    await budget.acquire()  # the held slots lapsed: a new call, which sends them back
    stored_after = await _stored(redis_client, key)
    assert stored_after["issued"] > stored["issued"]
    assert 1 == stored_after["open"]  # only the request in flight is open


async def test_a_block_drops_the_slots_held(redis_client: aioredis.Redis, key: str) -> None:
    """A 429 seen by a replica holding slots: no request leaves on them; everyone waits out the block."""
    clock = WatchedClock()
    budget = RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock)
    other = RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock)
    for _ in range(4):
        await budget.acquire()
        budget.observe({}, 200)
        budget.release()
    assert (await _stored(redis_client, key))["issued"] > 4  # slots held
    await budget.acquire()
    budget.observe({"Retry-After": "20"}, 429)
    budget.release()
    assert not await granted_now(budget, clock)
    assert not await granted_now(other, clock)
    clock.advance(20.0)
    assert await granted_now(other, clock)
    assert START + 20 == (await _stored(redis_client, key))["blocked_until"]


async def test_the_probe_is_one_slot(redis_client: aioredis.Redis, key: str) -> None:
    """Before any answer one request probes: a batch does not let a second one out, on any replica."""
    clock = WatchedClock()
    first = RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock)
    second = RedisRateBudget(redis_client, key=key, max_rate=None, clock=clock)
    await first.acquire()
    assert not await granted_now(first, clock)
    assert not await granted_now(second, clock)
    first.observe({}, 200)
    first.release()
    await asyncio.sleep(0.05)  # the first answer is written at once, by a task of its own
    assert await granted_now(second, clock)
