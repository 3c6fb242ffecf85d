"""LocalRateBudget lets a caller skip the waiting line only when that costs no waiting caller anything."""

from __future__ import annotations

import asyncio

from tests.test_ratelimit import clock, done, settle, start, window
from watcher.clock import ManualClock
from watcher.ratelimit import LocalRateBudget

__all__ = ["clock"]  # the fixture, re-used


async def test_spare_budget_lets_a_caller_pass_a_waiting_line(clock: ManualClock) -> None:
    """With no limit known, a new caller leaves at once even while callers still queue behind the probe."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    queued = start(budget, 3)  # one probe in flight, two queued behind it
    await settle()
    assert 1 == done(queued)
    budget.observe({}, 200)  # the probe's answer: no limits advertised
    await budget.acquire()  # returns without waiting for the two to leave first
    assert (1, 2) == (done(queued), budget.in_flight)
    await settle()
    assert (3, 4) == (done(queued), budget.in_flight)


async def test_no_spare_budget_keeps_arrival_order(clock: ManualClock) -> None:
    """When the window has no slot to spare beyond the queued callers, a new caller queues behind them."""
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe(window(0, "10", limit=2), 200)
    order: list[str] = []

    async def caller(name: str) -> None:
        await budget.acquire()
        order.append(name)

    first = [asyncio.create_task(caller(name)) for name in ("a", "b")]
    await settle()
    clock.advance(10)  # a new window of 2: exactly the two queued callers' slots
    late = asyncio.create_task(caller("late"))
    await settle()
    assert ["a", "b"] == order
    assert not late.done()
    budget.release()
    budget.release()  # both answered: the next window is whole
    clock.advance(10)
    await settle()
    assert ["a", "b", "late"] == order
    await asyncio.gather(*first, late)
