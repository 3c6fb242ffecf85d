"""What the chat fakes share: a virtual clock, rate windows, scripted answers, a server."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from watcher.clock import Clock
from watcher.errors import RetryableDeliveryError
from watcher.models import Delivery
from watcher.notify.base import Notifier


class VirtualClock:
    """Time that moves only when someone sleeps: a paced burst of minutes runs in milliseconds."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)


class SlidingWindow:
    """At most `limit` admissions in any `window` seconds (per key)."""

    def __init__(self, limit: int, window: float, clock: Clock) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._seen: dict[str, deque[float]] = {}

    def admit(self, key: str) -> float | None:
        """None when admitted (and counted); else the seconds until a slot frees up."""
        now = self.clock.now()
        seen = self._seen.setdefault(key, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) >= self.limit:
            return seen[0] + self.window - now
        seen.append(now)
        return None


class TokenBucket:
    """`burst` tokens refilled at `rate` a second (GCRA), per key."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tat: dict[str, float] = {}

    def admit(self, key: str) -> float | None:
        """None when admitted; else the seconds until the next token."""
        now = self.clock.now()
        interval = 1.0 / self.rate
        tat = max(self._tat.get(key, now), now)
        earliest = tat - (self.burst - 1) * interval
        if earliest > now + 1e-9:  # a float's rounding must not refuse an exactly paced send
            return earliest - now
        self._tat[key] = tat + interval
        return None


@dataclass
class ScriptedAnswer:
    """An answer a test forces before the fake's own rules apply (outages, odd statuses)."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.body, headers=self.headers)


@dataclass
class FakeService:
    """Counters and recordings every fake keeps."""

    clock: Clock = field(default_factory=VirtualClock)
    script: list[ScriptedAnswer] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    throttled: int = 0

    def scripted(self) -> web.Response | None:
        return self.script.pop(0).response() if self.script else None


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, as services send them."""
    return str(max(1, math.ceil(seconds)))


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start `app` on 127.0.0.1 at a free port: its runner (to clean up) and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[str]:
    """`serve` for a `with` block: the base URL inside, the server stopped after."""
    runner, base = await serve(app)
    try:
        yield base
    finally:
        await runner.cleanup()


async def deliver_burst(notifier: Notifier, deliveries: list[Delivery], clock: Clock, rounds: int = 5) -> int:
    """Send all at once, then retry the retryable failures after their delay, as the outbox would.

    Returns how many sends failed retryably on the way; a permanent failure is raised.
    """
    failures = 0
    pending = deliveries
    for _ in range(rounds):
        results = await asyncio.gather(*(notifier.send(d) for d in pending), return_exceptions=True)
        retry = [d for d, r in zip(pending, results, strict=True) if isinstance(r, RetryableDeliveryError)]
        if fatal := [r for r in results if isinstance(r, BaseException) and not isinstance(r, RetryableDeliveryError)]:
            raise fatal[0]
        failures += len(retry)
        if not retry:
            return failures
        waits = [r.retry_after or 1.0 for r in results if isinstance(r, RetryableDeliveryError)]
        await clock.sleep(max(waits))
        pending = retry
    raise AssertionError(f"{len(pending)} deliveries still failing after {rounds} rounds")
