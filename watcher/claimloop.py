"""The loop the engine and the outbox share: claim due work from the store, run it in tasks, wait.

A subclass says how to claim (`_claim`, returning how many it took), how much more it
may take (`_room`), when its next piece of work is due (`_next_due_at`) and, if it
holds claimed work outside its tasks, what to give back when the loop ends
(`_after_run`). The loop claims again as soon as a task ends or `wake` is called, at
the latest every second (other processes write to the store too), and backs off
while the store is unavailable.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

import structlog

from watcher.clock import Clock
from watcher.errors import StoreUnavailable

log = structlog.get_logger("watcher.claimloop")

#: The longest the loop waits without looking at the store again.
RECHECK_SECONDS = 1.0


class ClaimLoop(ABC):
    """Claims due work and runs each piece (or a runner over several) in a task of its own."""

    #: Prefix of this loop's log events: "<name>.store_unavailable", "<name>.<crashed>".
    name = "claimloop"
    crashed = "task_crashed"
    #: The subclass's own logger, so these events carry its name.
    loop_log: Any = log

    def __init__(self, *, clock: Clock, limit: int) -> None:
        self.clock = clock
        self._limit = limit  # tasks at once
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due work now (work was added, a task finished)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # --- what a subclass says ---------------------------------------------------------

    @abstractmethod
    async def _claim(self) -> int:
        """Claim what is due and start tasks for it; how many pieces were claimed."""

    @abstractmethod
    async def _next_due_at(self) -> float | None:
        """When the next unclaimed piece of work is due (None: nothing is waiting)."""

    def _room(self) -> int:
        """How many more pieces this loop may claim now."""
        return self._limit - len(self._inflight)

    async def _after_run(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Called once when `run` ends, however it ends."""

    # --- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and start work until `stop` is set; tasks still running are left to `drain`."""
        failures = 0
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    claimed = await self._claim()
                    failures = 0
                except StoreUnavailable as exc:
                    failures += 1
                    self.loop_log.warning(f"{self.name}.store_unavailable", error=str(exc), attempt=failures)
                    await self._wait(stop, min(30.0, 0.5 * 2**failures))
                    continue
                if claimed and self._room() > 0:
                    await asyncio.sleep(0)  # let the new tasks start before claiming more
                    continue
                await self._wait(stop, await self._idle_timeout())
        finally:
            await self._after_run()

    def _start(self, task: asyncio.Task[None]) -> None:
        """Track a task started for claimed work: the loop looks again when it ends."""
        self._inflight.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.loop_log.error(f"{self.name}.{self.crashed}", error=repr(exc))
        self._wake.set()

    async def _idle_timeout(self) -> float:
        if len(self._inflight) >= self._limit:
            return RECHECK_SECONDS
        try:
            due = await self._next_due_at()
        except StoreUnavailable:
            return RECHECK_SECONDS
        if due is None:
            return RECHECK_SECONDS
        return min(RECHECK_SECONDS, max(0.0, due - self.clock.now()))

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until `wake`, `stop` or `seconds` of the clock, whichever comes first."""
        if seconds <= 0 or stop.is_set():
            await asyncio.sleep(0)
            return
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.clock.sleep(seconds)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _finish_tasks(self, grace: float) -> int:
        """Wait up to `grace` seconds for the running tasks, cancel the rest; how many were cancelled."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=grace)
        left = list(self._inflight)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
        return len(left)
