"""Digests on cron schedules: fire times in a time zone, the period covered, once per period across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import config_text, make_config
from watcher.clock import ManualClock
from watcher.cron import last_fire_at, previous_fire_at
from watcher.errors import ConfigError
from watcher.models import JobRef, Outcome, Snapshot
from watcher.outcomes import Recipient
from watcher.schedules import DigestJob, DigestSettings, start_scheduler
from watcher.store import SqliteStore, StateStore

MORNING = DigestSettings("morning", "0 8 * * 1-5", ("chat",), "Europe/Berlin")
RECIPIENTS = {"chat": Recipient("chat", 3600.0), "hook": Recipient("hook", 3600.0)}


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_the_cron_trigger_fires_at_local_time_in_its_time_zone() -> None:
    """08:00 on weekdays in Berlin: 07:00 UTC in winter, 06:00 UTC in summer, never at weekends."""
    trigger = MORNING.trigger()
    fires, at = [], utc(2026, 12, 4, 12, 0)  # a Friday afternoon
    for _ in range(3):
        at = trigger.get_next_fire_time(None, at)
        fires.append(at.astimezone(UTC))
        at = at.replace(second=1)
    assert [utc(2026, 12, 7, 7), utc(2026, 12, 8, 7), utc(2026, 12, 9, 7)] == fires
    assert utc(2026, 6, 1, 6) == trigger.get_next_fire_time(None, utc(2026, 5, 30)).astimezone(UTC)


def test_a_digest_covers_the_period_since_the_previous_fire() -> None:
    """Monday's digest covers Friday 08:00 to Monday 08:00; a late run still belongs to its own fire."""
    trigger = MORNING.trigger()
    previous = previous_fire_at(trigger, utc(2026, 12, 7, 7))
    assert previous is not None and utc(2026, 12, 4, 7) == previous.astimezone(UTC)
    late = last_fire_at(trigger, utc(2026, 12, 7, 7, 3, 30))
    assert late is not None and utc(2026, 12, 7, 7) == late.astimezone(UTC)
    every_minute = DigestSettings("m", "* * * * *", ("chat",)).trigger()
    minute = previous_fire_at(every_minute, utc(2026, 12, 7, 7, 0))
    assert minute is not None and utc(2026, 12, 7, 6, 59) == minute.astimezone(UTC)


@pytest.mark.parametrize(
    ("weekdays", "expected"),
    [("1-5", "Mon Tue Wed Thu Fri"), ("0", "Sun"), ("7", "Sun"), ("5-7", "Sun Fri Sat"), ("mon,wed", "Mon Wed"),
     ("*/2", "Sun Tue Thu Sat"), ("1-5/2", "Mon Wed Fri"), ("*", "Sun Mon Tue Wed Thu Fri Sat")],
)
def test_weekdays_are_numbered_as_in_cron(weekdays: str, expected: str) -> None:
    """Sunday is 0 or 7 as in crontab(5), not APScheduler 3's Monday = 0."""
    trigger = DigestSettings("w", f"0 8 * * {weekdays}", ("chat",)).trigger()
    at, days = utc(2026, 12, 5, 12), []  # a Saturday
    for _ in range(7):
        at = trigger.get_next_fire_time(None, at)
        days.append((at.weekday(), at.strftime("%a")))
        at = at.replace(second=1)
    assert expected.split() == [name for _, name in sorted(set(days), key=lambda d: (d[0] + 1) % 7)]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[StateStore]]:
    """Two handles on one SQLite file: two replicas."""
    opened: list[StateStore] = [SqliteStore(str(tmp_path / "state.db")) for _ in range(2)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


async def finish(store: StateStore, job_id: str, outcome: Outcome, at: datetime) -> None:
    """A job added an hour before `at` whose outcome was detected at `at`."""
    t = at.timestamp()
    await store.add_job(JobRef(job_id), now=t - 3600, first_poll_at=t - 3600)
    [job] = [j for j in await store.claim_due_jobs(now=t, limit=10, owner="t", lease=30) if j.id == job_id]
    assert job.lease is not None
    assert await store.record_outcome(job_id, token=job.lease.token, now=t, outcome=outcome,
                                      snapshot=Snapshot(outcome.value), polls=3, detected_at=t, deliveries=[])


async def test_scheduled_runs_send_each_period_once_across_replicas(stores: list[StateStore]) -> None:
    """Two replicas run Monday's fire at once: one digest, of Friday 08:00 to Monday 08:00 Berlin time;
    running it again sends nothing; Tuesday's fire, with nothing new, is skipped as empty."""
    first, second = stores
    await finish(first, "fri-1", Outcome.COMPLETED, utc(2026, 12, 4, 9))
    await finish(first, "sun-1", Outcome.FAILED, utc(2026, 12, 6, 20))
    await finish(first, "thu-1", Outcome.COMPLETED, utc(2026, 12, 3, 9))  # the period before
    clock = ManualClock(utc(2026, 12, 7, 7, 0, 1).timestamp())
    jobs = [DigestJob(MORNING, store, RECIPIENTS, clock) for store in (first, second)]
    monday, tuesday = utc(2026, 12, 7, 7), utc(2026, 12, 8, 7)
    assert [0, 1] == sorted(await asyncio.gather(*(job.run(monday) for job in jobs)))
    clock.advance(600)  # a replica restarted later runs the same fire again
    assert 0 == await jobs[1].run(monday)
    assert 0 == await jobs[0].run(tuesday)
    [delivery] = await first.list_deliveries()
    data = delivery.event["data"]
    assert ("chat", "watcher.digest") == (delivery.notifier, delivery.event_type)
    assert ("2026-12-04T07:00:00Z", "2026-12-07T07:00:00Z") == (data["since"], data["until"])
    assert {"failed": 1, "completed": 1} == data["jobs"]
    assert "2026-12-07T07:00:00Z" == await first.get_meta("digest:morning")


async def test_an_empty_period_is_sent_when_skip_empty_is_off(stores: list[StateStore]) -> None:
    """skip_empty: false sends the digest of a quiet period too, saying nothing happened."""
    store = stores[0]
    settings = DigestSettings("hourly", "0 * * * *", ("chat", "hook"), skip_empty=False)
    job = DigestJob(settings, store, RECIPIENTS, ManualClock())
    assert 2 == await job.run(utc(2026, 12, 7, 10))
    data = (await store.list_deliveries())[0].event["data"]
    assert ("2026-12-07T09:00:00Z", {}, {"count": 0, "first": []}) == (data["since"], data["jobs"],
                                                                        data["dead_deliveries"])


async def test_the_scheduler_runs_a_digest_on_its_cron_trigger() -> None:
    """The daemon's scheduler holds each digest on its cron trigger; its next run is the trigger's next fire."""
    async def nothing() -> None:
        return None

    trigger = MORNING.trigger()
    scheduler = start_scheduler([], [("digest morning", nothing, trigger)])
    try:
        job = scheduler.get_job("digest morning")
        expected = trigger.get_next_fire_time(None, datetime.now(UTC))
        assert (expected, trigger) == (job.next_run_time, job.trigger)
    finally:
        scheduler.shutdown(wait=False)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: m, schedule: '0 8 * *', notify: [hook]}", "digests[0].schedule: invalid cron expression"),
        ("{name: m, schedule: '0 8 * * *', timezone: Mars/Base, notify: [hook]}", "digests[0].timezone: unknown time zone"),
        ("{name: m, schedule: '0 8 * * *', notify: [nobody]}", "digests[0].notify: unknown notifier 'nobody'"),
        ("{name: m, schedule: '0 8 * * *', notify: [hook], skip_empty: maybe}", "digests[0].skip_empty: expected true or false"),
        ("{name: 'bad name!', schedule: '0 8 * * *', notify: [hook]}", "digests[0].name: expected 1 to 64"),
    ],
)
def test_digest_settings_are_validated_with_their_line(tmp_path: Path, entry: str, message: str) -> None:
    """Every digest problem is reported with its file and line."""
    text = config_text("https://api.sendgrid.com", "memory://", hook_url="https://h.example/x") + f"digests:\n  - {entry}\n"
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, text)
    [problem] = info.value.problems
    assert f":{text.count(chr(10))}: {message}" in problem


async def test_a_repeated_hour_sends_one_digest(stores: list[StateStore]) -> None:
    """On the night Berlin repeats 02:00-03:00, APScheduler fires "30 2 * * *" at 00:30 and 01:30 UTC:
    one digest, covering the day before; the next night's covers the 25 hours since the first fire."""
    store = stores[0]
    settings = DigestSettings("nightly", "30 2 * * *", ("chat",), "Europe/Berlin", skip_empty=False)
    clock = ManualClock(utc(2026, 10, 25, 0, 30, 1).timestamp())
    job = DigestJob(settings, store, RECIPIENTS, clock)
    await job()
    clock.advance(3600)  # 01:30:01 UTC, the second 02:30
    await job()
    [digest] = await store.list_deliveries()
    assert ("2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z") == (digest.event["data"]["since"],
                                                                digest.event["data"]["until"])
    clock.advance(86400)  # 01:30:01 UTC the next night, 02:30 in winter time
    await job()
    assert ["2026-10-25T00:30:00Z"] == [d.event["data"]["since"] for d in await store.list_deliveries()
                                        if d.event["data"]["until"] == "2026-10-26T01:30:00Z"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("digests:\n  - {name: m, schedule: '0 8 * * *', notify: [hook]}\n"
         "  - {name: m, schedule: '0 9 * * *', notify: [hook]}\n", "digests[1].name: digest 'm' is defined twice"),
        ("digests: {name: m}\n", "digests: expected a list of digests"),
        ("backups: nightly\n", "backups: expected a list of backups"),
    ],
)  # fmt: skip
def test_digests_and_backups_are_lists_of_distinct_names(tmp_path: Path, section: str, message: str) -> None:
    text = config_text("https://api.sendgrid.com", "memory://", hook_url="https://h.example/x") + section
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, text)
    assert [message] == [p.split(": ", 1)[1] for p in info.value.problems]
