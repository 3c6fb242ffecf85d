"""Scheduled work: digests on APScheduler cron triggers (each with its time zone), sent once per
period across replicas; the scheduler of the daemon's periodic jobs; bounded housekeeping.

A digest fired at T covers [previous fire time, T): the period since the schedule's previous
fire, so consecutive digests neither overlap nor leave gaps. Every replica runs the schedule;
the one that moves the meta key `digest:<name>` from the last period's key to this one (in
the transaction that writes the deliveries) sends it, the others find it sent.

APScheduler is imported when a trigger or the scheduler is first needed, not with this module:
the daemon starts its scheduler after the first polls are under way.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import structlog

from watcher import digests
from watcher.clock import Clock
from watcher.cron import cron_trigger, last_fire_at, previous_fire_at, zone_ok
from watcher.events import iso
from watcher.heartbeat import HEARTBEAT_INTERVAL
from watcher.models import Batch, BatchPhase, Delivery, JobState
from watcher.outcomes import KEY_STATE, Addressee, make_delivery
from watcher.store.base import HOUSEKEEPING_BATCH, StateStore
from watcher.yamlloc import Path_, Problems, named_entries

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    from watcher.accounts import Accounts
    from watcher.daemon import Daemon

log = structlog.get_logger("watcher.schedules")

#: How often the daemon purges what retention lets go (and once at start).
HOUSEKEEPING_INTERVAL = 600.0
#: How often the price of delay (watcher.learned) is worked out again from the jobs running and the budget.
PRICE_INTERVAL = 30.0
#: While a store write has failed, how often a small write checks whether it works again.
STORE_PROBE_INTERVAL = 1.0

DIGEST_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
DIGEST_KEYS = frozenset({"name", "schedule", "timezone", "notify", "skip_empty"})
#: A digest's batches are read a page at a time, up to this many in all.
MAX_DIGEST_BATCHES = 10_000
#: How late APScheduler may still run a digest (a busy loop, a suspended laptop) before skipping it.
DIGEST_MISFIRE_GRACE = 3600


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """One `digests:` entry."""

    name: str
    schedule: str  # five-field cron
    notify: tuple[str, ...]
    timezone: str = "UTC"
    skip_empty: bool = True

    def trigger(self) -> CronTrigger:
        return cron_trigger(self.schedule, ZoneInfo(self.timezone))


def parse_digests(raw: Any, problems: Problems, names: set[str]) -> list[DigestSettings]:
    """Validate `digests:`; every problem located, unusable entries left out."""
    return named_entries(
        raw, "digests", "digest", problems, lambda item, path: _parse_digest(item, path, problems, names)
    )


def _parse_digest(raw: Any, path: Path_, problems: Problems, names: set[str]) -> DigestSettings | None:
    if not isinstance(raw, dict):
        problems.add(path, "expected a mapping with name, schedule and notify")
        return None
    before = len(problems.messages)
    for key in raw:
        if key not in DIGEST_KEYS:
            problems.add((*path, key), f"unknown key (expected one of {', '.join(sorted(DIGEST_KEYS))})")
    name, schedule, zone = raw.get("name"), raw.get("schedule"), raw.get("timezone", "UTC")
    if not isinstance(name, str) or not DIGEST_NAME.fullmatch(name):
        problems.add((*path, "name"), "expected 1 to 64 characters of A-Z a-z 0-9 - _ . :")
    if not isinstance(zone, str) or not zone_ok(zone):
        problems.add((*path, "timezone"), f"unknown time zone {zone!r} (expected an IANA name such as Europe/Berlin)")
    if not isinstance(schedule, str):
        problems.add((*path, "schedule"), 'expected a five-field cron expression such as "0 8 * * 1-5"')
    else:
        try:
            cron_trigger(schedule, UTC)
        except ValueError as exc:
            problems.add((*path, "schedule"), f"invalid cron expression {schedule!r}: {exc}")
    notify = _notify(raw.get("notify"), (*path, "notify"), problems, names)
    skip_empty = raw.get("skip_empty", True)
    if not isinstance(skip_empty, bool):
        problems.add((*path, "skip_empty"), f"expected true or false, got {skip_empty!r}")
    if len(problems.messages) > before:
        return None
    return DigestSettings(str(name), str(schedule), notify, str(zone), bool(skip_empty))


def _notify(raw: Any, path: Path_, problems: Problems, names: set[str]) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        problems.add(path, "expected a list of notifier names")
        return ()
    for item in items:
        if item not in names:
            problems.add(path, f"unknown notifier {item!r} (configured: {', '.join(sorted(names)) or 'none'})")
    return tuple(dict.fromkeys(items))


# --- building and sending -------------------------------------------------------------------


class DigestStore(Protocol):
    """What a digest reads and writes."""

    async def finished_jobs(self, *, since: float, until: float, limit: int = 10_000) -> list[JobState]: ...

    async def dead_deliveries(self, *, since: float, until: float, limit: int = 1000) -> list[Delivery]: ...

    async def list_batches(
        self, *, phase: str | None = None, limit: int | None = None, after: tuple[float, str] | None = None
    ) -> list[Batch]: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> int: ...

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool: ...


async def build_digest(store: DigestStore, *, name: str, since: float, until: float) -> dict[str, Any]:
    """The `watcher.digest` event of [since, until): finished jobs, batches summarised in it,
    dead deliveries, and the API key alert when the key is refused."""
    jobs = await store.finished_jobs(since=since, until=until)
    batches = await _finished_batches(store, since, until)
    dead = await store.dead_deliveries(since=since, until=until)
    alerts = await _key_alerts(store)
    return digests.digest_event(name=name, since=since, until=until, jobs=jobs, batches=batches, dead=dead,
                                alerts=alerts)


async def _finished_batches(store: DigestStore, since: float, until: float) -> list[Batch]:
    found: list[Batch] = []
    after: tuple[float, str] | None = None
    read = 0
    while read < MAX_DIGEST_BATCHES:
        page = await store.list_batches(phase=BatchPhase.FINISHED.value, limit=500, after=after)
        found += [b for b in page if b.finished_at is not None and since <= b.finished_at < until]
        read += len(page)
        if len(page) < 500:
            break
        after = (page[-1].started_at, page[-1].name)
    return found


async def _key_alerts(store: DigestStore) -> list[dict[str, Any]]:
    # The alert outbox rows are not indexed by kind; the key state is one read and says what matters.
    state = await store.get_meta(KEY_STATE)
    if not state or not state.startswith("refused:"):
        return []
    since = float(state.split(":", 1)[1])
    return [{"alert": "key_refused", "message": "SendGrid refuses the API key", "at": iso(since)}]


async def send_digest(
    store: DigestStore, *, event: Mapping[str, Any], notifiers: Mapping[str, Addressee], now: float,
    period_key: str | None,
) -> int:
    """Write one delivery of `event` per notifier; how many were written.

    With `period_key` (a scheduled run), only once across replicas and restarts: the meta key
    `digest:<name>` moves from the previous period's key to this one with the deliveries, in one
    transaction, and a period already sent (or older than the last one sent) writes nothing.
    Without it (`digest --send`), the deliveries are written as they are.
    """
    name = str(event["data"]["digest"])
    key = period_key if period_key is not None else f"at:{now!r}"
    deliveries = [make_delivery(n, dict(event), now, None, "digest", name, key) for n in notifiers.values()]
    if period_key is None:
        return await store.add_deliveries(deliveries)
    meta = f"digest:{name}"
    previous = await store.get_meta(meta)
    if previous is not None and previous >= period_key:  # ISO UTC keys sort by time
        return 0
    if not await store.transition_meta(meta, expected=previous, value=period_key, deliveries=deliveries):
        return 0  # another replica sent it between our read and write
    return len(deliveries)


class DigestJob:
    """One digest's scheduled run: what APScheduler calls, and what a test calls with a fire time."""

    def __init__(
        self, settings: DigestSettings, store: DigestStore, recipients: Mapping[str, Addressee], clock: Clock,
        on_sent: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.recipients = {n: recipients[n] for n in settings.notify if n in recipients}
        self.clock = clock
        self.on_sent = on_sent
        self.trigger = settings.trigger()

    async def __call__(self) -> None:
        fire = last_fire_at(self.trigger, datetime.fromtimestamp(self.clock.now(), UTC))
        if fire is not None:
            await self.run(fire)

    async def run(self, fire: datetime) -> int:
        """Send the digest of the period ending at `fire` (once across replicas); deliveries written."""
        previous = previous_fire_at(self.trigger, fire)
        until = fire.timestamp()
        since = previous.timestamp() if previous is not None else until - 86400.0
        name = self.settings.name
        event = await build_digest(self.store, name=name, since=since, until=until)
        if self.settings.skip_empty and digests.is_empty(event):
            log.info("digest.skipped", digest=name, since=iso(since), until=iso(until), reason="empty")
            return 0
        period = iso(until) or ""
        sent = await send_digest(self.store, event=event, notifiers=self.recipients, now=self.clock.now(),
                                 period_key=period)
        if sent:
            log.info("digest.sent", digest=name, since=iso(since), until=period, notify=list(self.recipients))
            self.on_sent()
        return sent


Job = Callable[[], Awaitable[None]]


def start_scheduler(
    intervals: Sequence[tuple[str, Job, float, Mapping[str, Any]]],
    digest_jobs: Sequence[tuple[str, Job, CronTrigger]],
) -> AsyncIOScheduler:
    """An AsyncIOScheduler running each (name, job, seconds, options) every `seconds` and each
    (name, job, trigger) on its cron trigger, one run at a time, missed runs coalesced."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    scheduler = AsyncIOScheduler()
    for name, job, seconds, options in intervals:
        scheduler.add_job(job, trigger="interval", seconds=seconds, id=name, max_instances=1, coalesce=True,
                          misfire_grace_time=None, **options)
    for name, job, trigger in digest_jobs:
        scheduler.add_job(job, trigger=trigger, id=name, max_instances=1, coalesce=True,
                          misfire_grace_time=DIGEST_MISFIRE_GRACE)
    scheduler.start()
    return scheduler


def start_daemon_scheduler(daemon: Daemon, *, accounts: Accounts, on_sent: Callable[[], None]) -> AsyncIOScheduler:
    """The daemon's periodic work on intervals (housekeeping once at once), each digest and each
    backup on its cron trigger (a backup missed while down once now), each run supervised."""
    periodic = daemon.supervisor.periodic
    intervals: list[tuple[str, Job, float, dict[str, Any]]] = [
        ("refresh", periodic("refresh", daemon.refresh_sources), daemon.refresh_interval, {}),
        ("heartbeat", periodic("heartbeat", daemon.heartbeat), HEARTBEAT_INTERVAL, {}),
        ("store-probe", periodic("store-probe", daemon.probe_store), STORE_PROBE_INTERVAL, {}),
        ("housekeeping", periodic("housekeeping", daemon.housekeeping), HOUSEKEEPING_INTERVAL,
         {"next_run_time": datetime.now(UTC)}),
    ]
    if daemon.learned is not None:  # the price of delay that stretches schedules when the budget is scarce
        intervals.append(("policy-price", periodic("policy-price", daemon.learned.update_price), PRICE_INTERVAL, {}))
    config, store, clock = daemon.config, daemon.store, daemon.clock
    recipients = {r.name: r for r in daemon.recipients()}
    jobs = [DigestJob(d, store, recipients, clock, on_sent) for d in config.digests]
    crons = [(f"digest {job.settings.name}", periodic(f"digest {job.settings.name}", job), job.trigger) for job in jobs]
    scheduler = start_scheduler(intervals, crons)
    if config.backups:
        from watcher.backup_schedule import add_backup_jobs, backup_jobs

        backups = backup_jobs(config.backups, accounts=accounts, store=store, recipients=recipients, clock=clock,
                              policy=config.polling, on_done=on_sent)
        add_backup_jobs(scheduler, backups, wrap=periodic)
    return scheduler


async def housekeep(
    store: StateStore, *, now: float, retention: float, tombstone_retention: float,
    expire: Callable[[], Awaitable[int]],
) -> tuple[int, int, int]:
    """Purge finished jobs past retention and old tombstones, and `expire` what nobody delivered by
    its deadline, in bounded batches with other work let in between; (purged, forgotten, expired)."""
    purged = await _in_batches(functools.partial(store.purge_finished, before=now - retention, now=now))
    forgotten = await _in_batches(functools.partial(store.purge_tombstones, before=now - tombstone_retention))
    expired = await _in_batches(expire)
    if purged or forgotten or expired:
        log.info("daemon.housekeeping", purged_jobs=purged, forgotten_tombstones=forgotten,
                 expired_deliveries=expired)
    return purged, forgotten, expired


async def _in_batches(step: Callable[[], Awaitable[int]]) -> int:
    """Call `step` (one bounded batch) until a batch comes back short; the total."""
    total = 0
    while True:
        done = await step()
        total += done
        if done < HOUSEKEEPING_BATCH:
            return total
        await asyncio.sleep(0)  # other work runs between batches
