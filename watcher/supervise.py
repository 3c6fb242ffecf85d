"""Loops that never end silently: each runs under a supervisor that logs, counts and restarts it.

A loop (the engine, the outbox, a source's reader) that raises is logged once with its
traceback (`supervisor.loop_crashed`), counted, marked down and started again after a
backoff (0.5 s doubling to 30 s). Periodic jobs report into the same health: down from a
failed run until the next run succeeds. Store health is separate: a write refused with
StoreUnavailable marks the store unavailable until a later store call succeeds.
`/readyz`, the heartbeat and `healthcheck` read both. `nothing_left` is the other end of
readiness: `run --until-idle` stops once it holds; `final_counts` is what the stopped daemon logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from watcher.errors import StoreBroken, StoreUnavailable

if TYPE_CHECKING:
    from watcher.store.base import StateStore

log = structlog.get_logger("watcher.supervise")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
#: A loop that ran this long before crashing starts its backoff from the beginning again.
STABLE_AFTER = 60.0

#: How long readiness waits for the store to answer a ping.
PING_TIMEOUT = 1.0
#: The meta key the store probe writes while the store is marked unavailable.
PROBE_KEY = "watcher.probe"

LoopFactory = Callable[[], Awaitable[None]]


class _Pingable(Protocol):
    async def ping(self) -> None: ...


class _Source(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def started(self) -> bool: ...


class _Busy(Protocol):
    @property
    def in_flight(self) -> int: ...


@dataclass
class LoopHealth:
    """What the supervisor knows of one loop or periodic job."""

    name: str
    up: bool = True
    crashes: int = 0
    last_error: str | None = None


class StoreHealth:
    """Whether the last store writes worked; a refused write marks it until one succeeds."""

    def __init__(self) -> None:
        self.problem: str | None = None

    def failed(self, exc: BaseException) -> None:
        if self.problem is None:
            log.warning("supervisor.store_unavailable", error=str(exc))
        self.problem = str(exc) or type(exc).__name__

    def succeeded(self) -> None:
        if self.problem is not None:
            log.info("supervisor.store_available")
            self.problem = None

    async def probe(self, store: StateStore, marker: str) -> None:
        """While a write has failed, try a small one: the store is ready again once it works."""
        if self.problem is None:
            return
        await store.set_meta(PROBE_KEY, marker)
        self.succeeded()


class Supervisor:
    """Runs loops and periodic jobs, restarting what crashes; keeps health per loop."""

    def __init__(self, *, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self.loops: dict[str, LoopHealth] = {}
        self.store = StoreHealth()

    def down(self) -> list[str]:
        """Names of the loops and periodic jobs that are not running well now."""
        return [name for name, health in self.loops.items() if not health.up]

    async def not_ready_reason(self, store: _Pingable, sources: Sequence[_Source]) -> str | None:
        """Why a started daemon is not ready: a loop down, the store failing, a source not started."""
        down = self.down()
        if down:
            return f"{down[0]} loop down"
        if self.store.problem is not None:
            return "state store unavailable"
        try:
            await asyncio.wait_for(store.ping(), PING_TIMEOUT)
        except StoreBroken:
            return "state store broken"
        except (StoreUnavailable, TimeoutError):
            return "state store unavailable"
        for source in sources:
            if not source.started:
                return f"source {source.name} has not started"
        return None

    @property
    def crashes(self) -> dict[str, int]:
        return {name: health.crashes for name, health in self.loops.items()}

    def start(self, name: str, run: LoopFactory, stop: asyncio.Event) -> asyncio.Task[None]:
        """Run `run()` in a task until `stop` is set, restarting it whenever it raises or returns early."""
        self.loops[name] = LoopHealth(name)
        return asyncio.create_task(self._supervise(name, run, stop), name=f"supervised:{name}")

    async def _supervise(self, name: str, run: LoopFactory, stop: asyncio.Event) -> None:
        health = self.loops[name]
        failures = 0
        while not stop.is_set():
            health.up = True
            began = time.monotonic()
            failure: Exception | None = None
            try:
                await run()
            except Exception as exc:
                failure = exc
            if failure is None and stop.is_set():
                return
            failures = 1 if time.monotonic() - began > STABLE_AFTER else failures + 1
            delay = min(self.maximum, self.initial * 2 ** (failures - 1))
            if failure is None:
                health.up, health.crashes, health.last_error = False, health.crashes + 1, "ended"
                log.error("supervisor.loop_ended", loop=name, restart_in=delay)
            else:
                self._crashed(health, failure, restart_in=delay)
            await _wait(stop, delay)

    def _crashed(self, health: LoopHealth, exc: Exception, **context: float) -> None:
        health.up, health.crashes, health.last_error = False, health.crashes + 1, repr(exc)
        if isinstance(exc, StoreUnavailable):
            self.store.failed(exc)
        log.error("supervisor.loop_crashed", loop=health.name, error=repr(exc), exc_info=exc, **context)

    def periodic(self, name: str, job: LoopFactory) -> LoopFactory:
        """`job` wrapped for the scheduler: its exceptions go into this health, never into the void."""
        health = self.loops.setdefault(name, LoopHealth(name))

        async def run() -> None:
            try:
                await job()
            except StoreUnavailable as exc:
                self.store.failed(exc)
                log.warning("supervisor.periodic_store_unavailable", loop=name, error=str(exc))
            except Exception as exc:
                self._crashed(health, exc)
            else:
                health.up = True

        return run


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Until `stop` is set or `seconds` have passed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def open_when_available(store: StateStore, stop: asyncio.Event) -> bool:
    """Open the store, retrying with backoff while it is unavailable; False when stopped meanwhile."""
    attempt = 0
    while not stop.is_set():
        try:
            await store.open()
        except StoreUnavailable as exc:
            attempt += 1
            delay = min(30.0, 0.5 * 2**attempt)
            log.warning("daemon.store_unavailable", error=str(exc), retry_in=delay)
            await _wait(stop, delay)
            continue
        return True
    return False


async def nothing_left(store: StateStore, sources: Sequence[object], loops: Sequence[_Busy | None]) -> bool:
    """Whether every job is final, every delivery settled, no batch open and nothing in flight or unread."""
    # Queue sources: unread or pending entries are jobs still to come. Asked before the
    # store counts, so an entry stored in between is seen.
    idle_checks = [getattr(source, "idle", None) for source in sources]
    if not all([await check() for check in idle_checks if check is not None]):
        return False
    try:
        # An open batch is summarised once settled: work still to come. Asked before the counts: its
        # summary's deliveries are written with its end, so counts read after it see them.
        if await store.list_batches(phase="open", limit=1):
            return False
        counts = await store.counts()
    except (StoreUnavailable, StoreBroken):
        return False
    if any(loop is not None and loop.in_flight for loop in loops):
        return False
    return counts.watching == 0 and counts.pending_deliveries == 0


async def stop_when_idle(
    stop: asyncio.Event, interval: float, store: StateStore, sources: Sequence[object], loops: Sequence[_Busy | None]
) -> None:
    """`run --until-idle`: set `stop` once `nothing_left` holds, checked every `interval` seconds."""
    while not stop.is_set():
        await asyncio.sleep(interval)
        if await nothing_left(store, sources, loops):
            log.info("daemon.idle")
            stop.set()


async def final_counts(store: StateStore, seconds: float) -> dict[str, Any]:
    """The jobs by state and the deliveries left, for the last log line ({} if the store cannot say in time)."""
    try:
        counts = await asyncio.wait_for(store.counts(), seconds)
    except (StoreUnavailable, StoreBroken, TimeoutError):
        return {}
    return {"jobs": dict(counts.jobs_by_state), "deliveries_left": counts.pending_deliveries}
