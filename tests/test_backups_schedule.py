"""Backups on their cron schedule: a fire taken once across replicas, a missed fire run once at start, the config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import config_text, make_config
from watcher.accounts import Accounts
from watcher.backup_dirs import complete_backups, stamp
from watcher.backup_schedule import BackupJob, add_backup_jobs, backup_runner
from watcher.backups import BackupResult
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.errors import ConfigError
from watcher.store import SqliteStore
from watcher.testing.fake_sendgrid import FakeSendGrid


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSendGrid]:
    async with FakeSendGrid() as fake:
        fake.set_lifecycle(export_seconds=0.0)  # ready at the first poll: the test clock never has to move
        fake.add_contacts([{"email": "ada@example.com", "first_name": "Ada"}])
        yield fake


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[SqliteStore]]:
    """Two handles on one SQLite file: two replicas."""
    opened = [SqliteStore(str(tmp_path / "state.db")) for _ in range(2)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


def config_for(tmp_path: Path, base_url: str, schedule: str = "30 2 * * *", timezone: str = "Europe/Berlin") -> Config:
    extra = f"""\
    backups:
      - name: nightly
        schedule: "{schedule}"
        timezone: {timezone}
        destination: {tmp_path / "backups"}
        notify: [hook]
    """
    text = config_text(base_url, f"sqlite:///{tmp_path}/state.db", hook_url="https://hooks.example.com/x", extra=extra)
    return make_config(tmp_path, text)


class ReadBeforeTheOtherWrote:
    """A replica's store whose first meta read is from before another replica took the fire."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._stale = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_meta(self, key: str) -> str | None:
        if self._stale:
            self._stale = False
            return None
        return await self._store.get_meta(key)


async def run_jobs(config: Config, stores: list[SqliteStore], clock: ManualClock, call: str) -> list[BackupResult | None]:
    """Each replica's BackupJob `call`ed at once (`__call__`: the cron fire; `catch_up`: the start)."""
    async with Accounts.open(config, clock=clock) as accounts:
        recipients = {n.name: n for n in config.notifiers}
        jobs = [BackupJob(config.backups[0], store=store, clock=clock,
                          runner=backup_runner(accounts, store=store, recipients=recipients, clock=clock,
                                               policy=config.polling)) for store in stores]
        if call == "fire":
            await asyncio.gather(*(job() for job in jobs))
            return []
        return list(await asyncio.gather(*(job.catch_up() for job in jobs)))


async def test_a_cron_fire_takes_one_backup_across_replicas(
    tmp_path: Path, fake: FakeSendGrid, stores: list[SqliteStore]
) -> None:
    """At 02:30 Berlin time (01:30 UTC in winter) both replicas fire; one backup is taken, and firing
    again for the same time takes none."""
    config = config_for(tmp_path, fake.base_url)
    clock = ManualClock(utc(2026, 12, 7, 1, 30, 2).timestamp())
    await run_jobs(config, stores, clock, "fire")
    home = tmp_path / "backups" / "nightly"
    assert [home / stamp(clock.now())] == complete_backups(home)
    assert "2026-12-07T01:30:00Z" == await stores[0].get_meta("backup:nightly")
    assert 1 == len(fake.exports.exports)
    late = ReadBeforeTheOtherWrote(stores[1])  # read the key before the first replica moved it
    await run_jobs(config, [late], clock, "fire")  # type: ignore[list-item]
    assert 1 == len(fake.exports.exports)
    clock.advance(60)
    await run_jobs(config, stores, clock, "fire")
    assert 1 == len(complete_backups(home)) and 1 == len(fake.exports.exports)
    [delivery] = await stores[0].list_deliveries()
    assert "backup.succeeded" == delivery.event_type


async def test_a_fire_missed_while_down_runs_once_at_start(
    tmp_path: Path, fake: FakeSendGrid, stores: list[SqliteStore]
) -> None:
    """The last fire taken was two days ago: the start (of two replicas) runs the latest missed fire once,
    not once per missed fire nor per replica; a later start runs nothing."""
    config = config_for(tmp_path, fake.base_url, schedule="0 3 * * *", timezone="UTC")
    await stores[0].set_meta("backup:nightly", "2026-12-05T03:00:00Z")
    clock = ManualClock(utc(2026, 12, 7, 9, 0).timestamp())
    results = await run_jobs(config, stores, clock, "catch_up")
    assert 1 == sum(r is not None for r in results)
    assert "2026-12-07T03:00:00Z" == await stores[0].get_meta("backup:nightly")
    clock.advance(3600)
    assert [None, None] == await run_jobs(config, stores, clock, "catch_up")
    assert 1 == len(fake.exports.exports)


async def test_a_backup_never_seen_is_armed_not_run_at_start(
    tmp_path: Path, fake: FakeSendGrid, stores: list[SqliteStore]
) -> None:
    """No fire recorded yet (the backup was just configured): the start runs nothing, and records the
    latest fire so one missed from now on is caught up."""
    config = config_for(tmp_path, fake.base_url, schedule="0 3 * * *", timezone="UTC")
    clock = ManualClock(utc(2026, 12, 7, 9, 0).timestamp())
    assert [None, None] == await run_jobs(config, stores[:1], clock, "catch_up") * 2
    assert "2026-12-07T03:00:00Z" == await stores[0].get_meta("backup:nightly")
    assert {} == fake.exports.exports


async def test_the_scheduler_holds_each_backup_on_its_cron_trigger_and_a_catch_up(tmp_path: Path) -> None:
    """add_backup_jobs puts the backup on its trigger (next run: the trigger's next fire) and its catch-up now."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    config = config_for(tmp_path, "https://api.sendgrid.com")
    job = BackupJob(config.backups[0], store=None, runner=None, clock=ManualClock())  # type: ignore[arg-type]
    scheduler = AsyncIOScheduler()
    scheduler.start(paused=True)
    try:
        add_backup_jobs(scheduler, [job])
        cron, catch_up = scheduler.get_job("backup nightly"), scheduler.get_job("backup nightly catch-up")
        assert (job.trigger, job.trigger.get_next_fire_time(None, datetime.now(UTC))) == (cron.trigger,
                                                                                        cron.next_run_time)
        assert catch_up is not None and catch_up.next_run_time <= datetime.now(UTC)
    finally:
        scheduler.shutdown(wait=False)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: b, schedule: '0 8 * *', destination: /tmp/b}", "backups[0].schedule: invalid cron expression"),
        ("{name: b, schedule: '0 8 * * *', timezone: Mars/Base, destination: /tmp/b}",
         "backups[0].timezone: unknown time zone"),
        ("{name: b, schedule: '0 8 * * *', destination: /tmp/b, notify: [nobody]}",
         "backups[0].notify: unknown notifier 'nobody'"),
        ("{name: b, schedule: '0 8 * * *', destination: /tmp/b, account: other}",
         "backups[0].account: unknown account 'other'"),
        ("{name: b, schedule: '0 8 * * *', destination: /tmp/b, keep: 0}", "backups[0].keep: expected a whole"),
        ("{name: b, schedule: '0 8 * * *', destination: /tmp/b, file_type: xml}", "backups[0].file_type: expected"),
        ("{name: '..', schedule: '0 8 * * *', destination: /tmp/b}", "backups[0].name: expected 1 to 64"),
        ("{name: b, schedule: '0 8 * * *'}", "backups[0].destination: expected the directory"),
        ("{name: b, schedule: '0 8 * * *', destination: ~nosuchuser-iw/x}",
         "backups[0].destination: cannot expand '~nosuchuser-iw': no such user, or no home directory"),
        ("{name: b, schedule: '0 8 * * *', destination: /tmp/b, lists: [a/b]}", "backups[0].lists: expected"),
        ("{name: b, schedule: '0 8 * * *', destination: /tmp/b, every: day}", "backups[0].every: unknown key"),
    ],
)
def test_backup_settings_are_validated_with_their_line(tmp_path: Path, entry: str, message: str) -> None:
    """Every backup problem is reported with its file and line."""
    text = config_text("https://api.sendgrid.com", "memory://", hook_url="https://h.example/x") + f"backups:\n  - {entry}\n"
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, text)
    assert any(message in problem and ":" in problem.split(message)[0] for problem in info.value.problems), (
        info.value.problems)


def test_two_backups_of_one_name_are_refused(tmp_path: Path) -> None:
    """Names are directories: a second backup of the same name is an error."""
    entry = "  - {name: b, schedule: '0 8 * * *', destination: /tmp/b}\n"
    text = config_text("https://api.sendgrid.com", "memory://") + "backups:\n" + entry * 2
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, text)
    assert any("backups[1].name: backup 'b' is defined twice" in p for p in info.value.problems)


async def test_a_repeated_hour_takes_one_backup(tmp_path: Path, fake: FakeSendGrid, stores: list[SqliteStore]) -> None:
    """Berlin repeats 02:00-03:00 on 2026-10-25: "30 2 * * *" is fired at 00:30 and again at 01:30 UTC.
    The second fire belongs to the first: one backup that night, and a restart after it catches nothing up."""
    config = config_for(tmp_path, fake.base_url)
    clock = ManualClock(utc(2026, 10, 25, 0, 30, 2).timestamp())
    await run_jobs(config, stores[:1], clock, "fire")
    clock.advance(3600)
    await run_jobs(config, stores[:1], clock, "fire")
    assert [None] == await run_jobs(config, stores[1:], clock, "catch_up")
    assert 1 == len(fake.exports.exports)
    assert "2026-10-25T00:30:00Z" == await stores[0].get_meta("backup:nightly")
