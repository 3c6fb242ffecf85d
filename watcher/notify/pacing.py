"""Pacing per destination: every HTTP chat notifier sends at its service's documented rate.

A `Pacer` spaces sends to one destination (a token bucket of `burst` sends refilled at
`rate` per second) and turns every rate-limit hint an answer carries (`Retry-After`, a body's
`retry_after`, `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset-After`/`-Reset`) into a
hold that every waiting and later send respects. Sends go one at a time through `turn()`:
the next send starts only after the previous answer was observed, so a hint is never
read too late to matter (chat services allow a few sends a second; nothing is lost).

Every notifier instance sending to one destination shares one pacer (`pacer_for`), so two
notifiers naming one webhook do not double its rate. Pacing is per process: replicas each
pace themselves, and a 429 caused by another replica is honoured through its hint.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from multidict import CIMultiDict, CIMultiDictProxy

from watcher.clock import Clock, SystemClock
from watcher.errors import RetryableDeliveryError
from watcher.ratelimit.signals import DEFAULT_WINDOW, MAX_WAIT, reset_seconds, retry_after_seconds

#: Longest a send waits in the pacer; beyond it the delivery goes back to the outbox with
#: `retry_after`, so a long hold never sits on a delivery lease.
DEFAULT_MAX_WAIT = 30.0

_CASE_INSENSITIVE = (CIMultiDictProxy, CIMultiDict)


class Pacer:
    """Spaces sends to one destination and honours its rate-limit hints."""

    def __init__(self, rate: float, burst: int = 1, *, clock: Clock | None = None) -> None:
        if not (rate > 0 and math.isfinite(rate)) or burst < 1:
            raise ValueError("a pacer needs a positive finite rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.clock: Clock = clock or SystemClock()
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = 0.0  # theoretical arrival time of the next send (GCRA)
        self._hold_until = 0.0
        self._shut_until = 0.0
        self._shut_reason = ""
        self._turn: asyncio.Lock | None = None
        self._turn_loop: asyncio.AbstractEventLoop | None = None

    @property
    def hold_until(self) -> float:
        """Epoch seconds before which nothing is sent (0 when there is no hold)."""
        return self._hold_until

    def delay(self) -> float:
        """Seconds until the next send may start, counting the spacing and any hold."""
        now = self.clock.now()
        start = max(now, self._hold_until, self._tat - self._tolerance)
        return start - now

    async def wait(self, max_wait: float | None = None) -> None:
        """Wait for the next send's slot and take it; RetryableDeliveryError past `max_wait`."""
        while (delay := self.delay()) > 0:
            if max_wait is not None and delay > max_wait:
                raise RetryableDeliveryError(f"paused by the destination's rate limit for {delay:.1f}s", delay)
            await self.clock.sleep(delay)
        now = self.clock.now()
        self._tat = max(self._tat, now) + self._interval

    @asynccontextmanager
    async def turn(self, max_wait: float | None = DEFAULT_MAX_WAIT) -> AsyncIterator[None]:
        """`wait()`, then keep every other send out until the block (send, then `observe`) ends."""
        async with self._lock():
            await self.wait(max_wait)
            yield

    def _lock(self) -> asyncio.Lock:
        # An asyncio.Lock belongs to one event loop; a process that runs another loop later
        # (tests, `notify-test` after the daemon) gets a fresh one instead of a RuntimeError.
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn_loop is not loop:
            self._turn, self._turn_loop = asyncio.Lock(), loop
        return self._turn

    def hold(self, seconds: float) -> float:
        """Nothing is sent for `seconds` from now (at most MAX_WAIT); a hold is never shortened.

        Returns the seconds from now until the (possibly longer, earlier) hold ends.
        """
        now = self.clock.now()
        if math.isfinite(seconds) and seconds > 0:
            self._hold_until = max(self._hold_until, now + min(seconds, MAX_WAIT))
        return max(0.0, self._hold_until - now)

    def shut(self, reason: str, seconds: float) -> None:
        """The destination refused us for good (a deleted webhook): refuse sends for `seconds`.

        Every request to a dead destination is an invalid request (Discord bans an address
        after 10,000 in 10 minutes), so a burst of deliveries fails here instead of there.
        """
        self._shut_reason = reason
        self._shut_until = max(self._shut_until, self.clock.now() + seconds)

    def shut_reason(self) -> str | None:
        """Why sends are refused right now (see `shut`), None when they are not."""
        return self._shut_reason if self.clock.now() < self._shut_until else None

    def observe(self, status: int, headers: Mapping[str, str], *, retry_after: float | None = None) -> float | None:
        """Read an answer's rate-limit hints into a hold; the seconds to wait, None without a hint.

        `retry_after` is a hint from the body (Discord's JSON `retry_after`), preferred over
        the headers. A 429 or 503 without any hint holds for a short default window.
        """
        if not isinstance(headers, _CASE_INSENSITIVE):
            headers = CIMultiDict(headers)
        now = self.clock.now()
        wait = _clean(retry_after)
        if wait is None and status in (429, 503):
            wait = retry_after_seconds(headers.get("Retry-After"), now)
        if wait is None and _exhausted(headers.get("X-RateLimit-Remaining")):
            wait = reset_seconds(headers.get("X-RateLimit-Reset-After"), now)
            if wait is None:
                wait = reset_seconds(headers.get("X-RateLimit-Reset"), now)
        if wait is None and status == 429:
            wait = DEFAULT_WINDOW
        if wait is None:
            return None
        return self.hold(wait) if wait > 0 else 0.0


def _clean(seconds: float | None) -> float | None:
    """A body's hint in seconds within [0, MAX_WAIT]; None when absent or not a real number."""
    if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, float(seconds)), MAX_WAIT)


def _exhausted(value: str | None) -> bool:
    """`X-RateLimit-Remaining` says no request is left in this window."""
    if value is None:
        return False
    try:
        return float(value.strip()) < 1
    except ValueError:
        return False


# --- one pacer per destination ----------------------------------------------------

_PACERS: dict[str, Pacer] = {}


def destination_key(*parts: str) -> str:
    """A registry key for a destination; hashed so the registry never holds a token in clear."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def pacer_for(key: str, rate: float, burst: int = 1, *, clock: Clock | None = None) -> Pacer:
    """The one pacer of a destination, made on first use; later callers share it as it is.

    A pacer made under another clock (tests) is replaced rather than shared.
    """
    pacer = _PACERS.get(key)
    if pacer is None or (clock is not None and pacer.clock is not clock):
        pacer = _PACERS[key] = Pacer(rate, burst, clock=clock)
    return pacer


def forget_pacers() -> None:
    """Drop every registered pacer (tests, and a daemon restart within one process)."""
    _PACERS.clear()
