"""Backups on their cron triggers in the daemon: once per fire across replicas, a missed fire run once at start.

Every replica schedules every backup; the one that moves the meta key `backup:<name>` from the last
fire it holds to this fire's (ISO UTC, so the keys sort by time) runs it, the others find it taken.
The key moves before the run: a replica that dies mid-run loses that fire (its temporary directory is
removed as stale later) rather than two replicas exporting at once.

At start, a backup whose key holds a fire older than the schedule's latest one missed it while no
daemon ran: that fire runs once, now. A backup no daemon has seen yet (no key) is armed instead, so
adding one to the configuration does not start an export at the next restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from apscheduler.schedulers.base import BaseScheduler

from watcher.backups import BackupResult, BackupStore, run_backup
from watcher.backups_config import BackupSettings
from watcher.clock import Clock
from watcher.cron import last_fire_at
from watcher.events import iso
from watcher.outcomes import Addressee
from watcher.policy import PollPolicy
from watcher.schedules import DIGEST_MISFIRE_GRACE

if TYPE_CHECKING:
    from watcher.accounts import Accounts

log = structlog.get_logger("watcher.backup_schedule")

#: Takes one backup now; what the schedule calls once it holds a fire.
Runner = Callable[[BackupSettings], Awaitable[BackupResult]]
Job = Callable[[], Awaitable[None]]


class ScheduleStore(BackupStore, Protocol):
    async def get_meta(self, key: str) -> str | None: ...

    async def transition_meta(self, key: str, *, expected: str | None, value: str) -> bool: ...


def meta_key(name: str) -> str:
    return f"backup:{name}"


class BackupJob:
    """One backup's schedule: what APScheduler calls at each fire and once at start."""

    def __init__(self, settings: BackupSettings, *, store: ScheduleStore, runner: Runner, clock: Clock,
                 on_done: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.clock = clock
        self.on_done = on_done
        self.trigger = settings.trigger()
        self._lock = asyncio.Lock()  # the fire and the catch-up never overlap in one process

    def latest_fire(self) -> datetime | None:
        return last_fire_at(self.trigger, datetime.fromtimestamp(self.clock.now(), UTC))

    async def __call__(self) -> None:
        fire = self.latest_fire()
        if fire is not None:
            await self.run(fire)

    async def catch_up(self) -> BackupResult | None:
        """At start: run the latest fire once if it was missed; arm a backup seen for the first time."""
        fire = self.latest_fire()
        if fire is None:
            return None
        key = meta_key(self.settings.name)
        held = await self.store.get_meta(key)
        if held is None:
            await self.store.transition_meta(key, expected=None, value=iso(fire.timestamp()) or "")
            return None
        if held >= (iso(fire.timestamp()) or ""):
            return None
        log.info("backup.catching_up", backup=self.settings.name, missed=iso(fire.timestamp()), last=held)
        return await self.run(fire)

    async def run(self, fire: datetime) -> BackupResult | None:
        """Take the backup of `fire` unless it is taken (here, by another replica or before a restart)."""
        async with self._lock:
            key, value = meta_key(self.settings.name), iso(fire.timestamp()) or ""
            held = await self.store.get_meta(key)
            if held is not None and held >= value:
                return None
            if not await self.store.transition_meta(key, expected=held, value=value):
                return None  # another replica took it between our read and write
            result = await self.runner(self.settings)
            if result.deliveries:
                self.on_done()
            return result


def backup_runner(
    accounts: Accounts, *, store: BackupStore, recipients: Mapping[str, Addressee], clock: Clock,
    policy: PollPolicy,
) -> Runner:
    """A Runner taking backups in their accounts, notifying `recipients`, watching with `policy`."""
    from watcher.lifecycle import Lifecycle

    async def take(settings: BackupSettings) -> BackupResult:
        account = accounts.get(settings.account)
        return await run_backup(settings, account=account, lifecycle=Lifecycle(account, clock=clock), clock=clock,
                                store=store, recipients=recipients, policy=policy)

    return take


def backup_jobs(
    backups: Sequence[BackupSettings], *, accounts: Accounts, store: ScheduleStore,
    recipients: Mapping[str, Addressee], clock: Clock, policy: PollPolicy, on_done: Callable[[], None],
) -> list[BackupJob]:
    """The daemon's BackupJob of each configured backup; `on_done` wakes the outbox."""
    runner = backup_runner(accounts, store=store, recipients=recipients, clock=clock, policy=policy)
    return [BackupJob(b, store=store, runner=runner, clock=clock, on_done=on_done) for b in backups]


def add_backup_jobs(
    scheduler: BaseScheduler, jobs: Sequence[BackupJob], wrap: Callable[[str, Job], Job] = lambda _name, job: job
) -> None:
    """Each backup on its cron trigger (one run at a time, late fires coalesced), plus its catch-up now;
    `wrap` supervises each callable (the daemon's Supervisor.periodic)."""
    for job in jobs:
        name = f"backup {job.settings.name}"
        scheduler.add_job(wrap(name, job), trigger=job.trigger, id=name, max_instances=1, coalesce=True,
                          misfire_grace_time=DIGEST_MISFIRE_GRACE)
        scheduler.add_job(wrap(name, _discard(job.catch_up)), trigger="date", id=f"{name} catch-up",
                          run_date=datetime.now(UTC))


def _discard(call: Callable[[], Awaitable[object]]) -> Job:
    async def run() -> None:
        await call()

    return run
