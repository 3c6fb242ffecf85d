"""The request budget of one process: `LocalRateBudget`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from watcher.clock import Clock
from watcher.ratelimit.budget import _TICKET, MAX_EARLY, SAME_WINDOW, WAIT_SLICE
from watcher.ratelimit.signals import DEFAULT_WINDOW, read_signal


class LocalRateBudget:
    """The budget of one process: O(1) per request, FIFO waiters, no tasks."""

    def __init__(self, *, max_rate: float | None, clock: Clock) -> None:
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be positive or None")
        self._clock = clock
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._early = min(self._interval, MAX_EARLY)
        # asyncio.Lock wakes waiters in FIFO order and survives cancellation.
        self._gate = asyncio.Lock()
        self._next_at = 0.0  # GCRA theoretical arrival time
        self._blocked_until = 0.0
        self._limit: float | None = None
        self._remaining: float | None = None  # set only together with _reset_at
        self._reset_at: float | None = None
        self._window = DEFAULT_WINDOW
        self._issued = 0
        self._seen = 0  # newest request whose answer gave a window estimate
        self._in_flight = 0
        # Until a first answer shows whether and how SendGrid limits us, one request
        # at a time finds out: a blind burst of max_concurrency would earn 429s.
        self._probing = True
        self._answered = asyncio.Event()
        self._queued = 0  # callers holding or waiting for the gate
        self._id = id(self)

    def __repr__(self) -> str:
        return f"LocalRateBudget(remaining={self._remaining}, in_flight={self._in_flight})"

    @property
    def remaining(self) -> float | None:
        return self._remaining

    @property
    def in_flight(self) -> int:
        """Requests acquired and not released yet."""
        return self._in_flight

    async def acquire(self) -> None:
        now = self._clock.now()
        if self._may_skip_gate(now):
            self._take(now)
            return
        self._queued += 1
        try:
            async with self._gate:
                while True:
                    if self._probing and self._in_flight:
                        self._answered.clear()  # only the gate holder waits on it
                        await self._answered.wait()
                        continue
                    delay = self._delay(self._clock.now())
                    if delay <= 0:
                        break
                    await self._clock.sleep(min(delay, WAIT_SLICE))
                self._take(self._clock.now())
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
        if self._probing:
            return not self._queued and not self._in_flight and self._delay(now) <= 0
        if self._delay(now) > 0:
            return False
        if not self._queued:
            return True
        if self._interval:
            return False  # max_rate spaces every request: a queued caller is owed the next slot
        return self._remaining is None or self._remaining - self._queued >= 1

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._answered.set()  # a probe that failed lets the next caller probe

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        now = self._clock.now()
        signal = read_signal(headers, status, now)
        self._probing = False
        self._answered.set()
        if signal.limit is not None:
            self._limit = signal.limit
        if signal.blocked_until is not None:
            self._blocked_until = max(self._blocked_until, signal.blocked_until)
        if signal.remaining is None:
            return
        reset_at = signal.reset_at
        if reset_at is None:
            known = self._reset_at
            reset_at = known if known is not None and known > now else now + DEFAULT_WINDOW
        if reset_at <= now:
            return  # an answer from a window that is already over
        seq, later = self._position()
        self._learn(reset_at, max(0.0, signal.remaining - later), seq)

    def _learn(self, reset_at: float, remaining: float, seq: int) -> None:
        """Fold one answer's estimate of the window into ours."""
        current = self._reset_at
        if current is None or self._remaining is None or reset_at - current >= SAME_WINDOW:
            if current is not None and reset_at - current >= SAME_WINDOW:
                self._window = reset_at - current  # a later window: measure its length
            self._remaining, self._reset_at = remaining, reset_at
        elif current - reset_at < SAME_WINDOW:
            # Same window: answers overtaking each other can each miss a request the
            # other counted, so the lowest estimate is the safe one.
            self._remaining = min(self._remaining, remaining)
        elif seq > self._seen:
            self._remaining, self._reset_at = remaining, reset_at  # our guess ran long
        self._seen = max(self._seen, seq)

    def _position(self) -> tuple[int, int]:
        """(sequence number, requests sent after it) of the request this task answers."""
        ticket = _TICKET.get()
        if ticket is not None and ticket[0] == id(self) and ticket[1] <= self._issued:
            return ticket[1], self._issued - ticket[1]
        # Observed outside the acquiring task: assume the oldest request in flight.
        later = max(0, self._in_flight - 1)
        return self._issued - later, later

    def _delay(self, now: float) -> float:
        """Seconds before the next request may leave (<= 0: now)."""
        self._roll_window(now)
        delay = self._blocked_until - now
        if self._remaining is not None and self._remaining < 1 and self._reset_at is not None:
            delay = max(delay, self._reset_at - now)
        if self._interval:
            delay = max(delay, self._next_at - self._early - now)
        return delay

    def _roll_window(self, now: float) -> None:
        if self._reset_at is None or now < self._reset_at:
            return
        if self._limit is None:
            self._remaining = self._reset_at = None
            self._probing = True
            return
        # A fresh window holds `limit`, less the requests still in flight: those that
        # reach SendGrid after its reset count there. Guess the window's end until told.
        self._remaining = max(0.0, self._limit - self._in_flight)
        self._reset_at += self._window
        if self._reset_at <= now:
            self._reset_at = now + self._window

    def _take(self, now: float) -> None:
        self._issued += 1
        self._in_flight += 1
        _TICKET.set((self._id, self._issued))
        if self._interval:
            self._next_at = max(self._next_at, now) + self._interval
        if self._remaining is not None:
            self._remaining -= 1
