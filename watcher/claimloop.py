"""The loop the engine and the outbox share: claim due work from the store, run it in tasks, wait.

A subclass says how to claim (`_claim`, returning how many it took), how much more it
may take (`_room`), when its next piece of work is due (`_next_due_at`), how to renew
the leases it holds (`_renew`) and, if it holds claimed work outside its tasks, what to
give back when the loop ends (`_after_run`). The loop claims again as soon as a task
ends or `wake` is called, at the latest every second (other processes write to the
store too), and backs off while the store is unavailable.

Every claim is held (id -> lease token) until its record or release. One renewer task
per loop renews everything held in one batched call every third of the lease, so work
that takes longer than the lease (a slow receiver, a rate-budget wait) never lets a
second holder in; a refused renewal is logged once as `<lost_event>`.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import Any

import structlog

from watcher.clock import Clock
from watcher.errors import StoreUnavailable
from watcher.supervise import StoreHealth

log = structlog.get_logger("watcher.claimloop")

#: The longest the loop waits without looking at the store again.
RECHECK_SECONDS = 1.0
#: The longest a release may take at shutdown: a hung store must not hold the exit.
RELEASE_TIMEOUT = 1.0


class ClaimLoop(ABC):
    """Claims due work and runs each piece (or a runner over several) in a task of its own."""

    #: Prefix of this loop's log events: "<name>.store_unavailable", "<name>.<crashed>".
    name = "claimloop"
    crashed = "task_crashed"
    #: Logged once per claim when its lease is found lost (renewal or record refused).
    lost_event = "claimloop.lease_lost"
    #: The key naming the claimed item in that event.
    id_key = "id"
    #: The subclass's own logger, so these events carry its name.
    loop_log: Any = log

    def __init__(self, *, clock: Clock, limit: int, lease: float, store_health: StoreHealth | None = None) -> None:
        self.clock = clock
        self.lease = lease
        self.store_health = store_health or StoreHealth()
        self._limit = limit  # tasks at once
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._stopping = False
        self._held: dict[str, str] = {}  # claimed and not yet recorded or released: id -> token
        self._lost: set[str] = set()  # tokens whose lease was found lost (already logged)
        self._renewer: asyncio.Task[None] | None = None
        self.renewing = True  # off only in tests that show what renewal prevents

    def wake(self) -> None:
        """Look for due work now (work was added, a task finished)."""
        self._wake.set()

    def hurry(self) -> None:
        """Cut a drain short: cancel the work in flight now (its claims are given back)."""
        self._hurry.set()

    async def next_due_at(self) -> float | None:
        """When this loop next has work due: the store's next unclaimed piece, or work it holds."""
        return await self._next_due_at()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def held(self) -> dict[str, str]:
        """The claims held now (id -> token): in flight or claimed but not started."""
        return dict(self._held)

    # --- what a subclass says ---------------------------------------------------------

    @abstractmethod
    async def _claim(self) -> int:
        """Claim what is due and start tasks for it; how many pieces were claimed."""

    @abstractmethod
    async def _next_due_at(self) -> float | None:
        """When the next unclaimed piece of work is due (None: nothing is waiting)."""

    @abstractmethod
    async def _renew(self, leases: Sequence[tuple[str, str]]) -> list[bool]:
        """Renew these (id, token) leases in one store call; the answers in order."""

    def _room(self) -> int:
        """How many more pieces this loop may claim now."""
        return self._limit - len(self._inflight)

    async def _after_run(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Called once when `run` ends, however it ends."""

    # --- holding claims -----------------------------------------------------------------

    def _hold(self, item_id: str, token: str) -> None:
        self._held[item_id] = token

    def _let_go(self, item_id: str, token: str) -> bool:
        """Forget this claim once recorded or released; True when its loss was already logged.

        Only this token's: a stale task finishing after the same id was claimed again (its
        lease had lapsed) must not drop the newer claim from renewal or release it.
        """
        if self._held.get(item_id) == token:
            del self._held[item_id]
        if token in self._lost:
            self._lost.discard(token)
            return True
        return False

    def _lease_lost(self, item_id: str, token: str, bound: Any = None, **context: Any) -> None:
        """Log a refused write once per claim (the renewer may have logged it already)."""
        if self._let_go(item_id, token):
            return
        if bound is None:
            self.loop_log.warning(self.lost_event, **{self.id_key: item_id}, **context)
        else:
            bound.warning(self.lost_event, **context)  # already carries the id

    async def renew_held(self) -> None:
        """Renew every claim held, in one store call; a refused one is logged once and dropped."""
        leases = list(self._held.items())
        if not leases:
            return
        try:
            answers = await self._renew(leases)
        except StoreUnavailable as exc:
            self.store_health.failed(exc)
            self.loop_log.warning(f"{self.name}.renew_failed", error=str(exc), held=len(leases))
            return
        for (item_id, token), ok in zip(leases, answers, strict=True):
            if not ok and self._held.get(item_id) == token:
                del self._held[item_id]
                self._lost.add(token)
                self.loop_log.warning(self.lost_event, **{self.id_key: item_id}, during="renewal")

    async def _renew_forever(self) -> None:
        while True:
            await self.clock.sleep(self.lease / 3)
            if not self.renewing:
                continue
            try:
                await self.renew_held()
            except Exception as exc:  # the renewer must outlive any one failure
                self.loop_log.error(f"{self.name}.renew_crashed", error=repr(exc), exc_info=exc)

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name=f"{self.name}:renew")

    async def _stop_renewer(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None

    # --- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and start work until `stop` is set; tasks still running are left to `drain`."""
        self._stopping = False
        self._start_renewer()
        failures = 0
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    claimed = await self._claim()
                    failures = 0
                except StoreUnavailable as exc:
                    failures += 1
                    self.store_health.failed(exc)
                    self.loop_log.warning(f"{self.name}.store_unavailable", error=str(exc), attempt=failures)
                    await self._wait(stop, min(30.0, 0.5 * 2**failures))
                    continue
                if claimed:
                    self.store_health.succeeded()
                    if self._room() > 0:
                        await asyncio.sleep(0)  # let the new tasks start before claiming more
                        continue
                await self._wait(stop, await self._idle_timeout(nothing_claimed=not claimed))
        finally:
            await self._after_run()

    def _start(self, task: asyncio.Task[None]) -> None:
        """Track a task started for claimed work: the loop looks again when it ends."""
        self._inflight.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.loop_log.error(f"{self.name}.{self.crashed}", error=repr(exc), exc_info=exc)
        self._wake.set()

    async def _idle_timeout(self, *, nothing_claimed: bool = False) -> float:
        if len(self._inflight) >= self._limit:
            return RECHECK_SECONDS
        try:
            due = await self._next_due_at()
        except StoreUnavailable:
            return RECHECK_SECONDS
        if due is None:
            return RECHECK_SECONDS
        wait = min(RECHECK_SECONDS, max(0.0, due - self.clock.now()))
        # Due now, yet the claim just took nothing: what is due is not ours to take (a delivery
        # to a notifier this replica does not know, a live lease seen through a skewed clock).
        # Look again at the next recheck (or on wake), not in a busy loop.
        return RECHECK_SECONDS if wait <= 0 and nothing_claimed else wait

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
        """Wait up to `grace` seconds (or until `hurry`) for the running tasks, cancel the rest;
        how many were cancelled. Leases stay renewed meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._inflight and not self._hurry.is_set() and (left := deadline - loop.time()) > 0:
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait({*self._inflight, hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
        left_over = list(self._inflight)
        for task in left_over:
            task.cancel()
        if left_over:
            await asyncio.gather(*left_over, return_exceptions=True)
        return len(left_over)

    async def _within_release_time(self, steps: Awaitable[None]) -> None:
        """Run a drain's give-back steps within RELEASE_TIMEOUT in all, not each: a hung store
        cannot hold the exit past shutdown_grace + SHUTDOWN_MARGIN (unreleased claims expire)."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await steps
        except TimeoutError:
            self.loop_log.warning(f"{self.name}.release_cut_short", claims_left=len(self._held))

    async def _give_back_all(self, claims: Sequence[tuple[str, str]], release: Any) -> None:
        """Release these (id, token) claims at once: RELEASE_TIMEOUT in all, however many."""
        if claims:
            await asyncio.gather(*(self._give_back(item_id, token, release) for item_id, token in claims))

    async def _give_back(self, item_id: str, token: str, release: Any) -> None:
        """Release one claim with its own token (shielded from cancellation, bounded in time) and forget it."""
        self._let_go(item_id, token)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(asyncio.wait_for(release(item_id, token=token), RELEASE_TIMEOUT))
