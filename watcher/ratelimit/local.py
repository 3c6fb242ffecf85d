"""The request budget of one process: `LocalRateBudget`, the window rule of `window.py` in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from watcher.clock import Clock
from watcher.ratelimit import window
from watcher.ratelimit.bounded import DEFAULT_MAX_WAIT, BoundedWaits
from watcher.ratelimit.budget import _TICKET, MAX_EARLY, WAIT_SLICE
from watcher.ratelimit.signals import read_signal


class LocalRateBudget:
    """The budget of one process: O(1) per request, FIFO waiters, no tasks."""

    def __init__(self, *, max_rate: float | None, clock: Clock, max_wait: float = DEFAULT_MAX_WAIT) -> None:
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be positive or None")
        self._clock = clock
        interval = 1.0 / max_rate if max_rate else 0.0
        self._params = window.Params(interval=interval, early=min(interval, MAX_EARLY))
        self._state = window.WindowState()
        self._bounded = BoundedWaits(max_wait, key="local")
        # asyncio.Lock wakes waiters in FIFO order and survives cancellation.
        self._gate = asyncio.Lock()
        self._in_flight = 0
        self._answered = asyncio.Event()  # set by every answer and release: a probe may have ended
        self._queued = 0  # callers holding or waiting for the gate
        self._id = id(self)

    def __repr__(self) -> str:
        return f"LocalRateBudget(remaining={self.remaining}, in_flight={self._in_flight})"

    @property
    def remaining(self) -> float | None:
        return self._state.remaining

    @property
    def in_flight(self) -> int:
        """Requests acquired and not released yet."""
        return self._in_flight

    @property
    def max_wait(self) -> float:
        """The longest wait any header can impose."""
        return self._bounded.max_wait

    async def acquire(self) -> None:
        if self._may_skip_gate(self._clock.now()):
            self._take()
            return
        self._queued += 1
        try:
            async with self._gate:
                while True:
                    wait, probe_out = self._delay(self._clock.now())
                    if wait <= 0:
                        break
                    if probe_out:
                        self._answered.clear()  # only the gate holder waits on it
                        await self._answered.wait()
                    else:
                        await self._clock.sleep(min(wait, WAIT_SLICE))
                self._take()
        finally:
            self._queued -= 1

    def _may_skip_gate(self, now: float) -> bool:
        """Whether a caller may leave at once, without queueing on the gate.

        The gate (asyncio.Lock) hands itself on to one waiter per event-loop iteration,
        so once callers had queued (behind the first probe, say), every later caller
        joined the queue and requests left one per iteration for as long as the load
        lasted. A caller that may leave now, and leaves enough budget for every queued
        caller, goes straight out: it never takes a slot a queued caller could use, so
        callers waiting for budget still leave in the order they arrived.
        """
        if self._delay(now)[0] > 0:
            return False
        if not self._queued:
            return True
        if not self._state.known or self._params.interval:
            return False  # a queued caller is owed the probe, or the next max_rate slot
        remaining = self._state.remaining
        return remaining is None or remaining - self._queued >= 1

    def _delay(self, now: float) -> tuple[float, bool]:
        self._state = window.roll(self._state, now)
        return window.delay(self._state, now, self._params)

    def _take(self) -> None:
        self._state, answer = window.take(self._state, self._clock.now(), self._params)
        self._in_flight += 1
        _TICKET.set((self._id, answer.seq))

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._state = window.finish(self._state, self._seq())
        self._answered.set()  # a probe that failed lets the next caller probe

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        now = self._clock.now()
        seq = self._seq()
        later = 0 if seq is not None else max(0, self._in_flight - 1)
        seen = self._bounded.observation(read_signal(headers, status, now), seq, later, now)
        self._state = window.learn(self._state, seen, now, self._params)
        self._answered.set()

    def _seq(self) -> int | None:
        """The sequence number of the request this task acquired last, if it was ours."""
        ticket = _TICKET.get()
        if ticket is not None and ticket[0] == self._id and ticket[1] <= self._state.issued:
            return ticket[1]
        return None
