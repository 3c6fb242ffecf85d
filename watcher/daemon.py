"""Wires every part together, owns the tasks, signals and an orderly shutdown.

Shutdown (SIGTERM/SIGINT, or `stop()`): readiness goes to 503 at once, no new work is
claimed, in-flight polls and deliveries get `shutdown_grace` to finish, the rest are
cancelled and their claims given back (a restart resumes them at once), then the
server, sources, notifiers and store close within SHUTDOWN_MARGIN more. A second
signal cancels the in-flight work at once (claims still given back).

Start: polling begins from the store once the overdue backlog is spread; what the first
poll does not need comes beside it: the sources read their files, the scheduler starts,
and modules only some set-ups use are imported when used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import structlog

from watcher.accounts import Accounts
from watcher.batchloop import BatchLoop
from watcher.clock import Clock, SystemClock
from watcher.config import Config, FileSourceSettings, RedisSourceSettings
from watcher.engine import Engine
from watcher.errors import ConfigError, StoreBroken, StoreUnavailable
from watcher.heartbeat import beat, heartbeat_path, remove_heartbeat
from watcher.learned import LearnedSchedules
from watcher.metrics import WatcherMetrics
from watcher.net import OutboundPolicy, configured_session
from watcher.notify.base import Notifier
from watcher.notify.outbox import Backoff, Outbox
from watcher.notify.registry import build_notifiers
from watcher.outcomes import ErrorsInfo, Recipient, default_batch_choice
from watcher.ratelimit import RateBudget
from watcher.schedules import housekeep, start_daemon_scheduler
from watcher.sendgrid import SendGridClient
from watcher.sources.base import Intake, JobSource
from watcher.sources.file import FileSource
from watcher.store import open_store
from watcher.store.base import StateStore
from watcher.supervise import Supervisor, final_counts, open_when_available, stop_when_idle

if TYPE_CHECKING:
    from watcher.server import WatcherServer

log = structlog.get_logger("watcher.daemon")
T = TypeVar("T")

#: Beyond shutdown_grace, the time the server, sources, notifiers and store get to close.
SHUTDOWN_MARGIN = 2.0
#: After a restart, overdue jobs are spread over at most this long (polling.max_interval if shorter).
SPREAD_WINDOW = 60.0


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
        supervisor: Supervisor | None = None,
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
        self.supervisor = supervisor or Supervisor()
        self.metrics = WatcherMetrics()
        self.stop_event = asyncio.Event()
        self.sources: list[JobSource] = []
        self.engine: Engine | None = None
        self.outbox: Outbox | None = None
        self.batch_loop: BatchLoop | None = None
        self.intake: Intake | None = None
        self.accounts: Accounts | None = None
        self.learned: LearnedSchedules | None = None
        self.budget: RateBudget | None = None  # the default account's, as are `client` and the metrics
        self.client: SendGridClient | None = None
        self.started = False
        self.on_started: list[Callable[[Daemon], Any]] = []
        self.heartbeat_path = heartbeat_path(config)
        self._session: aiohttp.ClientSession | None = None
        self._answered = OutboundPolicy()
        self._answered_session: aiohttp.ClientSession | None = None
        self._close_by: float | None = None  # loop time by which everything must be closed
        self.server: WatcherServer | None = None  # the HTTP API, when `server:` is configured

    # --- status, as the server, the metrics and the heartbeat read it ----------------

    @property
    def loop_crashes(self) -> Mapping[str, int]:
        return self.supervisor.crashes

    async def not_ready_reason(self) -> str | None:
        """Why this daemon should not get traffic now (None: ready)."""
        if self.stop_event.is_set():
            return "shutting down"
        if not self.started:
            return "starting"
        return await self.supervisor.not_ready_reason(self.store, self.sources)

    # --- lifecycle -----------------------------------------------------------------

    async def run(self, *, until_idle: bool = False, install_signals: bool = True) -> int:
        """Run until stopped (SIGTERM/SIGINT) or, with until_idle, until nothing is left to do."""
        began = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            if install_signals:
                self._install_signals(stack)
            if not await self._open_store(stack):
                return 0  # stopped before the store could be opened
            await self._start_components(stack)
            tasks = self._start_loops(until_idle)
            for source in self.sources:  # every job in a file is in the store already, but for new ones:
                if isinstance(source, FileSource):  # polling starts at once, the file is read beside it
                    source.begin()
                    source.on_started.append(self.heartbeat)  # the heartbeat tells the readiness at once
            self.started = True
            stack.callback(remove_heartbeat, self.heartbeat_path)
            await self.heartbeat()
            for callback in self.on_started:
                await _maybe_await(callback(self))
            accounts, outbox = self._require(self.accounts), self._require(self.outbox)
            stack.callback(start_daemon_scheduler(self, accounts=accounts, on_sent=outbox.wake).shutdown, wait=False)
            log.info("daemon.started", owner=self.owner, notifiers=list(self.notifiers), until_idle=until_idle)
            await self.stop_event.wait()
            await self._shutdown(tasks, began)
        return 0

    @staticmethod
    def _require(part: T | None) -> T:
        if part is None:
            raise RuntimeError("daemon component used before start")
        return part

    def stop(self) -> None:
        """Ask the run to end. The store hurries at once, not when the shutdown task next runs: a write
        started in between would otherwise wait BUSY_TIMEOUT_MS for another process's lock with the
        event loop blocked (seen in CI: 5.2 s to exit where the grace and margin allow 4)."""
        self.store.hurry()
        self.stop_event.set()

    def close_time_left(self) -> float:
        """Seconds a component may still take to close (SHUTDOWN_MARGIN before the shutdown began)."""
        if self._close_by is None:
            return SHUTDOWN_MARGIN
        return max(0.1, self._close_by - asyncio.get_running_loop().time())

    def _on_close(self, stack: contextlib.AsyncExitStack, name: str, close: Callable[[], Awaitable[Any]]) -> None:
        """Close `name` when `stack` unwinds, within the time the shutdown has left."""

        async def bounded() -> None:
            try:
                await asyncio.wait_for(close(), self.close_time_left())
            except (Exception, TimeoutError) as exc:
                log.warning("daemon.close_failed", part=name, error=repr(exc))

        stack.push_async_callback(bounded)

    async def _open_store(self, stack: contextlib.AsyncExitStack) -> bool:
        """Open the store, retrying while it is unavailable; False when stopped meanwhile."""
        if not await open_when_available(self.store, self.stop_event):
            return False
        self._on_close(stack, "store", self.store.close)
        return True

    async def _start_components(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        self._session = configured_session()
        self._on_close(stack, "session", self._session.close)
        # URLs that arrive in answers (the errors file) go through a session that checks every hop,
        self._answered = OutboundPolicy.of(config.sendgrid)  # made when first needed (few runs need it)
        self._on_close(stack, "answered-URL session", lambda: _close(self._answered_session))
        self.accounts = await self._open_accounts(stack)
        default = self.accounts.get(None)
        self.client, self.budget = default.client, default.budget
        for notifier in self.notifiers.values():
            await notifier.start(self._session)
            self._on_close(stack, f"notifier {notifier.name}", notifier.close)
        health = self.supervisor.store
        self.outbox = Outbox(
            store=self.store, notifiers=self.notifiers, clock=self.clock, owner=self.owner,
            lease=self.lease, backoff=self.delivery_backoff, store_health=health,
        )
        self.batch_loop = BatchLoop(
            store=self.store, clock=self.clock, owner=self.owner, settle=config.batches.settle,
            recipients=self.recipients(), routes=config.routes, lease=self.lease, store_health=health,
            public_url=config.server.public_url if config.server else None, on_deliveries=self.outbox.wake,
        )
        self.learned = learned = LearnedSchedules(
            self.store, policy=config.polling, max_rate=config.sendgrid.max_rate, clock=self.clock,
            shared_rate=default.budget_is_shared)
        await learned.load()
        self.engine = Engine(
            store=self.store, client=self.client, clients=self.accounts.clients, default_account=self.accounts.default,
            learned=learned,
            policy=config.polling, clock=self.clock,
            owner=self.owner, recipients=self.recipients(), routes=config.routes, errors_fetcher=self._fetch_errors,
            max_concurrency=config.sendgrid.max_concurrency, lease=self.lease,
            on_deliveries=self.outbox.wake, store_health=health, on_batch_outcome=self.batch_loop.batch_changed,
        )
        self.metrics.hook_into(self)
        self.intake = Intake(self.store, config.polling, self.clock, tuple(self.notifiers), self.accounts.names,
                             learned=learned)
        self.intake.on_added.append(self.engine.wake)
        await self._spread_overdue()
        await self._start_sources(stack)
        await self._start_server(stack)

    def recipients(self) -> list[Recipient]:
        """Every notifier as routing sees it, with its `batches:` choice (a type's default for
        notifiers given in code rather than in the configuration)."""
        configured = {n.name: n.batches for n in self.config.notifiers}
        return [
            Recipient(n.name, n.delivery_deadline, configured.get(n.name) or default_batch_choice(n.type_name))
            for n in self.notifiers.values()
        ]

    async def _open_accounts(self, stack: contextlib.AsyncExitStack) -> Accounts:
        """Each account's session, budget (shared in the store's Redis when it is Redis) and client."""
        accounts = Accounts.open(self.config, clock=self.clock, store=self.store)
        await accounts.__aenter__()
        self._on_close(stack, "accounts", accounts.aclose)
        return accounts

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
            if not isinstance(source, FileSource):  # a file is read beside the first polls (run)
                await source.start()
            self._on_close(stack, f"source {source.name}", source.close)
            self.sources.append(source)

    def _start_loops(self, until_idle: bool) -> list[asyncio.Task[None]]:
        """The engine, the outbox, the batch loop and each source's own loop (if it has one), supervised."""
        stop, supervisor = self.stop_event, self.supervisor
        tasks = [
            supervisor.start("engine", functools.partial(self._require(self.engine).run, stop), stop),
            supervisor.start("outbox", functools.partial(self._require(self.outbox).run, stop), stop),
            supervisor.start("batches", functools.partial(self._require(self.batch_loop).run, stop), stop),
        ]
        for source in self.sources:
            run = getattr(source, "run", None)
            if callable(run):
                tasks.append(supervisor.start(f"source {source.name}", functools.partial(run, stop), stop))
        if until_idle:
            idle = stop_when_idle(stop, self.idle_check_interval, self.store, self.sources, (self.engine, self.outbox))
            tasks.append(asyncio.create_task(idle, name="until-idle"))
        return tasks

    async def _spread_overdue(self) -> None:
        """After a restart, spread the overdue jobs over the next minute, before the first claim: claiming
        first (the spread beside the polls) made outcomes burstier and broke the replicas' resend bound."""
        window = min(self.config.polling.max_interval, SPREAD_WINDOW)
        try:
            spread = await self.store.spread_overdue(now=self.clock.now(), window=window)
        except (StoreUnavailable, StoreBroken) as exc:  # the backlog is polled as the budget allows
            log.warning("daemon.spread_failed", error=str(exc))
            return
        if spread:
            log.info("daemon.resumed", overdue_jobs=spread)

    async def _start_server(self, stack: contextlib.AsyncExitStack) -> None:
        """Serve the HTTP API when `server:` is set; it closes when `stack` unwinds, after the drain."""
        if self.config.server is None:
            return
        from watcher.server import WatcherServer

        self.server = WatcherServer(self, self.config.server)
        await self.server.start(stack)

    # --- signals and shutdown ----------------------------------------------------------

    def _install_signals(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
            stack.callback(loop.remove_signal_handler, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.refresh_sources(force=True)))
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if not self.stop_event.is_set():
            log.info("daemon.stopping", signal=sig.name, grace=self.config.shutdown_grace)
            self.stop()
            return
        log.warning("daemon.stopping_now", signal=sig.name)
        if self._close_by is not None:
            self._close_by = min(self._close_by, asyncio.get_running_loop().time() + SHUTDOWN_MARGIN)
        for loop in (self.engine, self.outbox, self.batch_loop):
            if loop is not None:
                loop.hurry()

    async def _shutdown(self, tasks: list[asyncio.Task[None]], began: float) -> None:
        grace = self.config.shutdown_grace
        self._close_by = asyncio.get_running_loop().time() + grace + SHUTDOWN_MARGIN
        self.store.hurry()  # no write may now wait long for another process: the exit stays bounded
        await self.heartbeat()
        engine, outbox = self._require(self.engine), self._require(self.outbox)
        polls_cut, deliveries_cut, _ = await asyncio.gather(
            engine.drain(grace), outbox.drain(grace), self._require(self.batch_loop).drain(grace)
        )
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=self.close_time_left())
        counts = await final_counts(self.store, min(1.0, self.close_time_left()))
        log.info(
            "daemon.stopped",
            uptime_s=round(time.monotonic() - began, 1),
            polls=sum(engine.stats.polls.values()),
            outcomes=engine.stats.outcomes,
            deliveries={f"{n}:{r}": c for (n, r), c in outbox.stats.results.items()},
            cancelled_polls=polls_cut,
            cancelled_deliveries=deliveries_cut,
            loop_crashes=sum(self.supervisor.crashes.values()),
            poll_crashes=engine.stats.crashes,
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
        """Rewrite the heartbeat with the readiness now (only once fully started)."""
        if not self.started:
            return
        beat(self.heartbeat_path, owner=self.owner, reason=await self.not_ready_reason())

    async def probe_store(self) -> None:
        """While a write has failed, try a small one: the store is ready again once it works."""
        await self.supervisor.store.probe(self.store, f"{self.clock.now():.3f} {self.owner}")

    async def housekeeping(self) -> None:
        """Purge what retention lets go, declare dead what nobody delivered (watcher.schedules.housekeep)."""
        state = self.config.state
        await housekeep(self.store, now=self.clock.now(), retention=state.retention,
                        tombstone_retention=state.tombstone_retention, expire=self._require(self.outbox).expire)
        if self.learned is not None:
            await self.learned.load()  # other replicas' samples too

    async def _fetch_errors(self, url: str) -> ErrorsInfo:
        from watcher.notify.errors_file import summarize_errors_file

        if self._answered_session is None:
            self._answered_session = self._answered.make_session()
        summary = await summarize_errors_file(self._answered_session, url, policy=self._answered)
        return ErrorsInfo(summary.summary, summary.sample_csv)


async def _close(session: aiohttp.ClientSession | None) -> None:
    if session is not None:
        await session.close()


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value

