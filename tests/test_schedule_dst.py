"""Cron schedules across daylight-saving changes: finding a schedule's previous fire never hangs,
and a time the autumn change repeats runs once, as cron runs it.

A backup or digest on "30 2 * * *" in a zone that repeats 02:00-03:00 in autumn is fired twice that
night by APScheduler; stepping from the second fire by wall-clock time lost the repeated hour's
`fold`, and the trigger handed back the same fire forever (the event loop froze, SIGTERM included).
The second fire belongs to the first (its key is taken): one backup, one digest. An hourly
schedule (hour field `*`) runs in both hours, as in cron.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from watcher.cron import cron_trigger, last_fire_at, previous_fire_at


def _within(seconds: float, call):  # type: ignore[no-untyped-def]
    """`call()` in a thread: its result, or a failure if it has not returned in time (a hang)."""
    box: list[object] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"still running after {seconds} s"
    return box[0]


@pytest.mark.parametrize(("zone", "now", "expected"), [
    # Berlin falls back at 01:00 UTC on 2026-10-25: 02:30 comes at 00:30 UTC and again at 01:30 UTC;
    # the second belongs to the first.
    ("Europe/Berlin", "2026-10-25T01:31:00+00:00", "2026-10-25T00:30:00+00:00"),
    ("Europe/Berlin", "2026-10-25T12:00:00+00:00", "2026-10-25T00:30:00+00:00"),
    ("Europe/Berlin", "2026-10-26T12:00:00+00:00", "2026-10-26T01:30:00+00:00"),
    # New York falls back at 06:00 UTC on 2026-11-01: 01:30 comes at 05:30 UTC and again at 06:30 UTC.
    ("America/New_York", "2026-11-01T07:00:00+00:00", "2026-11-01T05:30:00+00:00"),
    # Spring forward: 02:30 does not exist in Berlin on 2026-03-29; APScheduler fires it an hour
    # later by the wall clock (01:30 UTC), the daemon's scheduler included, so that is the last fire.
    ("Europe/Berlin", "2026-03-29T12:00:00+00:00", "2026-03-29T01:30:00+00:00"),
])
def test_the_last_fire_across_a_dst_change_is_found_at_once(zone: str, now: str, expected: str) -> None:
    hour = "1" if zone == "America/New_York" else "2"
    trigger = cron_trigger(f"30 {hour} * * *", zone)
    found = _within(5, lambda: last_fire_at(trigger, datetime.fromisoformat(now)))
    assert datetime.fromisoformat(expected) == found.astimezone(UTC)


def test_the_fire_before_the_repeated_one_is_the_first_of_the_night() -> None:
    trigger = cron_trigger("30 2 * * *", "Europe/Berlin")
    second = datetime.fromisoformat("2026-10-25T01:30:00+00:00")
    found = _within(5, lambda: previous_fire_at(trigger, second))
    assert datetime.fromisoformat("2026-10-25T00:30:00+00:00") == found.astimezone(UTC)


@pytest.mark.parametrize(("schedule", "expected"), [
    ("30 * * * *", "2026-10-25T01:30:00+00:00"),  # hourly: both 02:30s run, as in cron
    ("30 */2 * * *", "2026-10-25T00:30:00+00:00"),  # every other hour names its hours: once
])
def test_only_a_schedule_naming_its_hours_runs_a_repeated_time_once(schedule: str, expected: str) -> None:
    trigger = cron_trigger(schedule, "Europe/Berlin")
    found = last_fire_at(trigger, datetime.fromisoformat("2026-10-25T01:31:00+00:00"))
    assert found is not None and datetime.fromisoformat(expected) == found.astimezone(UTC)
