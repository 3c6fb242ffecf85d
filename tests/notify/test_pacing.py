"""The per-destination pacer: spacing, bursts, holds from every rate-limit hint, one pacer per destination."""

from __future__ import annotations

import asyncio

import pytest

from watcher.clock import ManualClock
from watcher.errors import RetryableDeliveryError
from watcher.notify.pacing import Pacer, destination_key, forget_pacers, pacer_for
from watcher.ratelimit.signals import MAX_WAIT


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(10):
        await asyncio.sleep(0)


async def started(pacer: Pacer) -> asyncio.Task[None]:
    task = asyncio.create_task(pacer.wait())
    await settle()
    return task


async def test_sends_are_spaced_at_the_rate() -> None:
    """At 2 per second without burst, the second send waits half a second."""
    clock = ManualClock()
    pacer = Pacer(2.0, clock=clock)
    await pacer.wait()
    second = await started(pacer)
    assert not second.done()
    clock.advance(0.49)
    await settle()
    assert not second.done()
    clock.advance(0.01)
    await settle()
    assert second.done()


async def test_a_burst_goes_at_once_then_the_rate_applies() -> None:
    """With burst 3 at 1 per second, three sends go at once and the fourth waits one second."""
    clock = ManualClock()
    pacer = Pacer(1.0, 3, clock=clock)
    for _ in range(3):
        await asyncio.wait_for(pacer.wait(), 0.1)
    fourth = await started(pacer)
    assert not fourth.done()
    assert pacer.delay() == pytest.approx(1.0)
    clock.advance(1.0)
    await settle()
    assert fourth.done()


async def test_a_hold_stops_waiting_and_later_sends() -> None:
    """A hold delays a send already waiting and any later one; a shorter hold never shortens it."""
    clock = ManualClock()
    pacer = Pacer(100.0, 10, clock=clock)
    pacer.hold(5.0)
    assert pacer.hold(1.0) == pytest.approx(5.0)
    waiting = await started(pacer)
    clock.advance(4.9)
    await settle()
    assert not waiting.done()
    clock.advance(0.1)
    await settle()
    assert waiting.done()


def test_retry_after_header_of_a_429_becomes_a_hold() -> None:
    """`Retry-After: 2` on a 429 holds every send for two seconds."""
    clock = ManualClock()
    pacer = Pacer(1.0, clock=clock)
    assert pacer.observe(429, {"retry-after": "2"}) == pytest.approx(2.0)
    assert clock.now() + 2.0 == pytest.approx(pacer.hold_until)


def test_a_body_retry_after_wins_over_the_headers() -> None:
    """Discord's JSON `retry_after` (fractional seconds) is used before `Retry-After` (whole seconds)."""
    pacer = Pacer(1.0, clock=ManualClock())
    assert pacer.observe(429, {"Retry-After": "1"}, retry_after=0.529) == pytest.approx(0.529)


def test_no_requests_remaining_holds_until_the_bucket_resets() -> None:
    """`X-RateLimit-Remaining: 0` with `X-RateLimit-Reset-After: 1.5` on a success holds 1.5 s."""
    pacer = Pacer(10.0, clock=ManualClock())
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1.500"}
    assert pacer.observe(200, headers) == pytest.approx(1.5)


def test_an_epoch_reset_is_used_when_reset_after_is_absent() -> None:
    """Without `Reset-After`, the epoch `X-RateLimit-Reset` says when the bucket refills."""
    clock = ManualClock()
    pacer = Pacer(10.0, clock=clock)
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(clock.now() + 3)}
    assert pacer.observe(200, headers) == pytest.approx(3.0)


def test_requests_left_mean_no_hold() -> None:
    """An answer with requests remaining and no 429 leaves the pacer alone."""
    pacer = Pacer(10.0, clock=ManualClock())
    assert pacer.observe(200, {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset-After": "2"}) is None
    assert 0.0 == pacer.hold_until


def test_a_bare_429_holds_a_short_default_window() -> None:
    """A 429 without any hint still pauses (one second), never an immediate retry."""
    pacer = Pacer(10.0, clock=ManualClock())
    assert pacer.observe(429, {}) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "-5"}, None, 1.0),
        ({"Retry-After": "nan"}, float("nan"), 1.0),
        ({"Retry-After": "9" * 400}, None, MAX_WAIT),
        ({}, float("inf"), 1.0),
        ({}, 10**9, MAX_WAIT),
    ],
)
def test_hostile_hints_are_clamped(headers: dict[str, str], body: float | None, expected: float) -> None:
    """Garbage, negative, NaN and huge hints never crash and never wait beyond MAX_WAIT."""
    pacer = Pacer(10.0, clock=ManualClock())
    assert pacer.observe(429, headers, retry_after=body) == pytest.approx(expected)


async def test_a_long_hold_goes_back_to_the_outbox() -> None:
    """A hold longer than `max_wait` raises RetryableDeliveryError with the wait, instead of sitting on a lease."""
    pacer = Pacer(10.0, clock=ManualClock())
    pacer.hold(120.0)
    with pytest.raises(RetryableDeliveryError) as caught:
        await pacer.wait(max_wait=30.0)
    assert caught.value.retry_after == pytest.approx(120.0)


async def test_turns_are_taken_one_at_a_time_and_see_the_previous_answer() -> None:
    """A second send starts only after the first one's answer was observed, so its hint applies."""
    clock = ManualClock()
    pacer = Pacer(100.0, 10, clock=clock)
    order: list[str] = []

    async def first() -> None:
        async with pacer.turn():
            order.append("first sent")
            await settle()
            pacer.observe(429, {"Retry-After": "3"})

    async def second() -> None:
        async with pacer.turn():
            order.append("second sent")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    while pacer.hold_until == 0.0:
        await asyncio.sleep(0)
    await settle()
    assert ["first sent"] == order
    clock.advance(3.0)
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert ["first sent", "second sent"] == order


def test_a_shut_destination_refuses_for_a_while() -> None:
    """After `shut`, the reason is given until the time is up, then sends are allowed again."""
    clock = ManualClock()
    pacer = Pacer(1.0, clock=clock)
    pacer.shut("webhook deleted", 60.0)
    assert "webhook deleted" == pacer.shut_reason()
    clock.advance(60.0)
    assert pacer.shut_reason() is None


def test_one_pacer_per_destination() -> None:
    """Every caller naming one destination shares its pacer; another destination has its own."""
    forget_pacers()
    clock = ManualClock()
    one = pacer_for(destination_key("discord", "hook-1"), 2.5, 5, clock=clock)
    assert one is pacer_for(destination_key("discord", "hook-1"), 2.5, 5, clock=clock)
    assert one is not pacer_for(destination_key("discord", "hook-2"), 2.5, 5, clock=clock)
    assert "hook-1" not in destination_key("discord", "hook-1")


def test_a_pacer_needs_a_rate() -> None:
    """A zero, negative or infinite rate, or a burst below one, is a programming error."""
    for rate, burst in ((0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)):
        with pytest.raises(ValueError, match="positive finite rate"):
            Pacer(rate, burst)
