"""No header makes a budget wait longer than max_wait: the wait is clamped, logged once, and a probe goes first after it."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from tests.test_ratelimit import START, redis_client
from tests.test_ratelimit_windows import Factory, WatchedClock, budgets, granted_now
from watcher.clock import ManualClock
from watcher.ratelimit import DEFAULT_MAX_WAIT, LocalRateBudget, RateBudget, RedisRateBudget

__all__ = ["budgets", "redis_client"]  # the fixtures, re-used

TWENTY_EIGHT_HOURS = 28 * 3600


async def _answered_with(
    budget: RateBudget, sent: asyncio.Event, answer: asyncio.Event, headers: dict[str, str]
) -> None:
    """A request answered 429 with `headers` once `answer` is set, observed and released in its own task."""
    await budget.acquire()
    sent.set()
    await answer.wait()
    budget.observe(headers, 429)
    budget.release()


@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        ({"Retry-After": "99999"}, 99999.0),
        ({"X-RateLimit-Reset": str(int(START) + TWENTY_EIGHT_HOURS)}, float(TWENTY_EIGHT_HOURS)),
    ],
    ids=["retry-after", "reset-28h"],
)
async def test_far_wait_is_clamped_logged_once_then_probed(
    budgets: Factory, headers: dict[str, str], asked: float
) -> None:
    """Three 429s asking for hours block for max_wait, log one line, and then one probe leaves before the rest."""
    clock = WatchedClock()
    budget = budgets(clock)
    budget.observe({}, 200)  # limits known: no cold-start probe
    answer = asyncio.Event()
    requests = []
    for _ in range(3):
        sent = asyncio.Event()
        requests.append(asyncio.create_task(_answered_with(budget, sent, answer, headers)))
        await asyncio.wait_for(sent.wait(), 5)
    with capture_logs() as logs:
        answer.set()
        await asyncio.gather(*requests)
    suspicious = [entry for entry in logs if entry["event"] == "ratelimit.suspicious_wait"]
    assert [(asked, DEFAULT_MAX_WAIT)] == [(e["asked_seconds"], e["clamped_seconds"]) for e in suspicious]
    clock.advance(DEFAULT_MAX_WAIT - 0.1)
    assert not await granted_now(budget, clock)
    clock.advance(0.1)
    assert [True, False] == [await granted_now(budget, clock), await granted_now(budget, clock)]
    budget.observe({}, 200)  # the probe's answer
    assert [True, True] == [await granted_now(budget, clock), await granted_now(budget, clock)]


@pytest.mark.parametrize("max_wait", [30.0, 600.0])
async def test_max_wait_is_the_budget_setting(max_wait: float) -> None:
    """The clamp is the max_wait the budget was built with (the daemon passes polling.max_interval)."""
    clock = WatchedClock()
    budget = LocalRateBudget(max_rate=None, clock=clock, max_wait=max_wait)
    budget.observe({"Retry-After": "99999"}, 429)
    clock.advance(max_wait - 0.1)
    assert not await granted_now(budget, clock)
    clock.advance(0.1)
    assert await granted_now(budget, clock)


async def test_a_wait_within_max_wait_is_not_suspicious() -> None:
    """A Retry-After within max_wait is obeyed to the second, without a log line or a probe."""
    clock = WatchedClock()
    budget = LocalRateBudget(max_rate=None, clock=clock)
    budget.observe({}, 200)
    with capture_logs() as logs:
        budget.observe({"Retry-After": "120"}, 429)
    clock.advance(120)
    assert ([], [True, True]) == (logs, [await granted_now(budget, clock), await granted_now(budget, clock)])


def test_max_wait_must_be_positive() -> None:
    """A budget refuses a max_wait that is not positive."""
    with pytest.raises(ValueError, match="max_wait"):
        LocalRateBudget(max_rate=None, clock=ManualClock(), max_wait=0)
    with pytest.raises(ValueError, match="max_wait"):
        RedisRateBudget("redis://127.0.0.1:1/0", key="k", max_rate=None, clock=ManualClock(), max_wait=-1)
