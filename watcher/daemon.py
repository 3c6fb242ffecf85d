"""Wires every part together, owns the tasks, signals and an orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from watcher.clock import Clock, SystemClock
from watcher.config import Config, FileSourceSettings, RedisSourceSettings
from watcher.engine import Engine
from watcher.errors import ConfigError, StoreUnavailable
from watcher.notify.base import Notifier
from watcher.notify.outbox import Backoff, Outbox
from watcher.notify.registry import build_notifiers
from watcher.outcomes import ErrorsInfo, Recipient
from watcher.ratelimit import LocalRateBudget, RateBudget, RedisRateBudget
from watcher.sendgrid import SendGridClient
from watcher.sources.base import Intake, JobSource
from watcher.sources.file import FileSource
from watcher.store import RedisStore, open_store
from watcher.store.base import StateStore

if TYPE_CHECKING:
    from watcher.server import WatcherServer

log = structlog.get_logger("watcher.daemon")
T = TypeVar("T")

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_STALE = 30.0


def heartbeat_path(config: Config) -> Path:
    """Where this config's daemon writes its heartbeat (per container, for `healthcheck`)."""
    if config.heartbeat_file is not None:
        return config.heartbeat_file
    key = hashlib.sha256(str(config.path or "default").encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"import-watcher-{key}.heartbeat"


class Daemon:
    """One watcher process. `run()` returns the exit code."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        owner: str | None = None,
        store: StateStore | None = None,
        delivery_backoff: Backoff | None = None,
        lease: float | None = None,
        refresh_interval: float = 2.0,
        idle_check_interval: float = 0.1,
        extra_notifiers: Mapping[str, Notifier] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.store = store or open_store(config.state.url)
        self.delivery_backoff = delivery_backoff
        self.lease = lease or config.state.lease
        self.refresh_interval = refresh_interval
        self.idle_check_interval = idle_check_interval
        self.notifiers: dict[str, Notifier] = build_notifiers(config)
        self.notifiers.update(extra_notifiers or {})
        self.stop_event = asyncio.Event()
        self.sources: list[JobSource] = []
        self.engine: Engine | None = None
        self.outbox: Outbox | None = None
        self.intake: Intake | None = None
        self.budget: RateBudget | None = None
        self.client: SendGridClient | None = None
        self.ready = False
        self.on_started: list[Callable[[Daemon], Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self.server: WatcherServer | None = None  # the HTTP API, when `server:` is configured

    # --- lifecycle -----------------------------------------------------------------

    async def run(self, *, until_idle: bool = False, install_signals: bool = True) -> int:
        """Run until stopped (SIGTERM/SIGINT) or, with until_idle, until nothing is left to do."""
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            await self._open_store(stack)
            await self._start_components(stack)
            if install_signals:
                self._install_signals(stack)
            tasks = [
                asyncio.create_task(self._require(self.engine).run(self.stop_event), name="engine"),
                asyncio.create_task(self._require(self.outbox).run(self.stop_event), name="outbox"),
            ]
            if until_idle:
                tasks.append(asyncio.create_task(self._stop_when_idle(), name="until-idle"))
            for callback in self.on_started:
                await _maybe_await(callback(self))
            log.info("daemon.started", owner=self.owner, notifiers=list(self.notifiers), until_idle=until_idle)
            await self.stop_event.wait()
            await self._shutdown(tasks, started)
        return 0

    @staticmethod
    def _require(part: T | None) -> T:
        if part is None:
            raise RuntimeError("daemon component used before start")
        return part

    def stop(self) -> None:
        self.stop_event.set()

    async def _open_store(self, stack: contextlib.AsyncExitStack) -> None:
        attempt = 0
        while True:
            try:
                await self.store.open()
                break
            except StoreUnavailable as exc:
                attempt += 1
                delay = min(30.0, 0.5 * 2**attempt)
                log.warning("daemon.store_unavailable", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
        stack.push_async_callback(self.store.close)

    async def _start_components(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        self._session = aiohttp.ClientSession()
        stack.push_async_callback(self._session.close)
        self.budget = self._make_budget()
        if isinstance(self.budget, RedisRateBudget):
            stack.push_async_callback(self.budget.aclose)
        self.client = SendGridClient(config.sendgrid, session=self._session, budget=self.budget, clock=self.clock)
        for notifier in self.notifiers.values():
            await notifier.start(self._session)
            stack.push_async_callback(notifier.close)
        self.outbox = Outbox(
            store=self.store, notifiers=self.notifiers, clock=self.clock, owner=self.owner,
            lease=self.lease, backoff=self.delivery_backoff,
        )
        self.engine = Engine(
            store=self.store, client=self.client, policy=config.polling, clock=self.clock,
            owner=self.owner,
            recipients=[Recipient(n.name, n.delivery_deadline) for n in self.notifiers.values()],
            routes=config.routes, errors_fetcher=self._fetch_errors,
            max_concurrency=config.sendgrid.max_concurrency, lease=self.lease,
            on_deliveries=self.outbox.wake,
        )
        self.intake = Intake(self.store, config.polling, self.clock, tuple(self.notifiers))
        self.intake.on_added.append(self.engine.wake)
        spread = await self.store.spread_overdue(now=self.clock.now(), window=min(config.polling.max_interval, 60.0))
        if spread:
            log.info("daemon.resumed", overdue_jobs=spread)
        await self._start_sources(stack)
        self._start_scheduler(stack)
        self.ready = True
        await self._start_server(stack)

    def _make_budget(self) -> RateBudget:
        # --- shared budget follows the Redis store (fix from the queue-source work) ---
        # The state URL may carry `?prefix=`, which redis-py rejects on connect (every poll
        # crashed): use the URL and prefix the store parsed, so the budget also lives in the
        # store's namespace ("import-watcher:ratelimit" with the default prefix, as before).
        if isinstance(self.store, RedisStore):
            return RedisRateBudget(
                self.store.url, key=f"{self.store.prefix}:ratelimit", max_rate=self.config.sendgrid.max_rate,
                clock=self.clock,
            )
        # --- end of shared budget fix ---
        return LocalRateBudget(max_rate=self.config.sendgrid.max_rate, clock=self.clock)

    async def _start_sources(self, stack: contextlib.AsyncExitStack) -> None:
        intake = self._require(self.intake)
        for spec in self.config.sources:
            source: JobSource
            if isinstance(spec, FileSourceSettings):
                source = FileSource(spec.path, intake)
            elif isinstance(spec, RedisSourceSettings):
                from watcher.sources.redis import RedisStreamSource

                source = RedisStreamSource(spec, intake)
            else:  # pragma: no cover - config only builds the two
                raise ConfigError([f"unknown source {spec!r}"])
            await source.start()
            stack.push_async_callback(source.close)
            self.sources.append(source)

    def _start_scheduler(self, stack: contextlib.AsyncExitStack) -> None:
        scheduler = AsyncIOScheduler()
        periodic = {"max_instances": 1, "coalesce": True, "trigger": "interval"}
        scheduler.add_job(self.refresh_sources, seconds=self.refresh_interval, id="refresh", **periodic)
        scheduler.add_job(self.heartbeat, seconds=HEARTBEAT_INTERVAL, id="heartbeat", **periodic)
        scheduler.add_job(self.housekeeping, hours=1, id="housekeeping", **periodic)
        scheduler.start()
        self._scheduler = scheduler
        stack.callback(scheduler.shutdown, wait=False)
        self.heartbeat_sync()

    # --- HTTP server (watcher/server.py) -------------------------------------------------

    async def _start_server(self, stack: contextlib.AsyncExitStack) -> None:
        """Serve the HTTP API when `server:` is set; it closes when `stack` unwinds, after the drain."""
        if self.config.server is None:
            return
        from watcher.server import WatcherServer

        self.server = WatcherServer(self, self.config.server)
        await self.server.start(stack)

    # --- end of HTTP server ---------------------------------------------------------------

    def _install_signals(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
            stack.callback(loop.remove_signal_handler, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.refresh_sources(force=True)))
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        log.info("daemon.stopping", signal=sig.name)
        self.stop_event.set()

    async def _shutdown(self, tasks: list[asyncio.Task[None]], started: float) -> None:
        self.ready = False
        grace = self.config.shutdown_grace
        await asyncio.wait(tasks, timeout=grace)
        engine, outbox = self._require(self.engine), self._require(self.outbox)
        polls_cut, deliveries_cut = await asyncio.gather(engine.drain(grace), outbox.drain(grace))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        counts = await _safe_counts(self.store)
        log.info(
            "daemon.stopped",
            uptime_s=round(time.monotonic() - started, 1),
            polls=sum(engine.stats.polls.values()),
            outcomes=engine.stats.outcomes,
            deliveries={f"{n}:{r}": c for (n, r), c in outbox.stats.results.items()},
            cancelled_polls=polls_cut,
            cancelled_deliveries=deliveries_cut,
            **counts,
        )

    # --- periodic work ---------------------------------------------------------------

    async def refresh_sources(self, force: bool = False) -> None:
        for source in self.sources:
            try:
                if isinstance(source, FileSource):
                    await source.refresh(force=force)
                else:
                    await source.refresh()
            except Exception as exc:
                log.error("source.refresh_failed", source=source.name, error=repr(exc))

    async def heartbeat(self) -> None:
        self.heartbeat_sync()

    def heartbeat_sync(self) -> None:
        path = heartbeat_path(self.config)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(f"{time.time():.3f} {self.owner}\n", encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            log.warning("daemon.heartbeat_failed", error=str(exc))

    async def housekeeping(self) -> None:
        try:
            purged = await self.store.purge_finished(before=self.clock.now() - self.config.state.retention)
        except StoreUnavailable:
            return
        if purged:
            log.info("daemon.purged", jobs=purged)

    async def _stop_when_idle(self) -> None:
        """--until-idle: stop once every job is final and every delivery settled."""
        while not self.stop_event.is_set():
            await asyncio.sleep(self.idle_check_interval)
            # --- queue sources (watcher/sources/redis.py): unread or pending entries are jobs
            # still to come. Asked before the store counts, so an entry stored in between is seen.
            idle_checks = [getattr(source, "idle", None) for source in self.sources]
            if not all([await check() for check in idle_checks if check is not None]):
                continue
            # --- end of queue sources ---
            try:
                counts = await self.store.counts()
            except StoreUnavailable:
                continue
            busy = self.engine is not None and self.engine.in_flight
            busy = busy or (self.outbox is not None and self.outbox.in_flight)
            if counts.watching == 0 and counts.pending_deliveries == 0 and not busy:
                log.info("daemon.idle")
                self.stop_event.set()

    async def _fetch_errors(self, url: str) -> ErrorsInfo:
        from watcher.notify.errors_file import summarize_errors_file

        summary = await summarize_errors_file(self._require(self._session), url)
        return ErrorsInfo(summary.summary, summary.sample_csv)


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value


async def _safe_counts(store: StateStore) -> dict[str, Any]:
    try:
        counts = await store.counts()
    except StoreUnavailable:
        return {}
    return {"jobs": dict(counts.jobs_by_state), "deliveries_left": counts.pending_deliveries}
