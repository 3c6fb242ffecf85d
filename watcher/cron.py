"""Cron schedules: five-field crontabs read as standard cron does, in a time zone, and the fire
times a late or missed run belongs to. Digests and backups (watcher.schedules, watcher.backup_schedule)
run on these triggers; APScheduler is imported when a trigger is first made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

# Spans searched, shortest first, for a schedule's previous fire time: each search steps
# through the fires in its span, so a per-minute schedule costs two steps, a yearly one a few.
_LOOKBACK = tuple(timedelta(days=d) for d in (1 / 720, 1 / 12, 2, 8, 32, 367, 8 * 366))


_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def cron_trigger(schedule: str, timezone: Any) -> CronTrigger:
    """A five-field crontab as standard cron reads it (ValueError when it is not one).

    APScheduler 3's `from_crontab` numbers weekdays from Monday = 0, so "1-5" would run
    Tuesday to Saturday; the weekday field is rewritten as day names (0 and 7 = Sunday) first.
    Unlike Vixie cron, a day of month and a day of week both restricted must both match.
    """
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"expected five fields (minute hour day month weekday), got {len(fields)}")
    fields[4] = _weekdays(fields[4])
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(" ".join(fields), timezone=timezone)


def _weekdays(field: str) -> str:
    """A crontab weekday field (numbers with Sunday = 0 or 7, names, lists, ranges, steps) as day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, slash, step_text = part.partition("/")
        if slash and (not step_text.isdigit() or int(step_text) == 0):
            raise ValueError(f"invalid step in the weekday field {field!r}")
        step = int(step_text) if slash else 1
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            first, last = span.split("-", 1)
            low, high = _day(first), _day(last)
        else:
            low = _day(span)
            high = 6 if slash else low
        if high < low:
            raise ValueError(f"a weekday range must go forwards, got {span!r}")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_CRON_DAYS[day] for day in sorted(days))


def _day(text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text.lower()[:3] in _CRON_DAYS and len(text) == 3:
        return _CRON_DAYS.index(text.lower())
    raise ValueError(f"unknown weekday {text!r} (0-7 or sun-sat)")


def zone_ok(zone: str) -> bool:
    try:
        ZoneInfo(zone)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def previous_fire_at(trigger: CronTrigger, fire: datetime) -> datetime | None:
    """The schedule's last fire time strictly before `fire` (None: none within eight years); a
    repeated hour's second fire counts as its first (`first_occurrence`)."""
    for span in _LOOKBACK:
        last: datetime | None = None
        at = trigger.get_next_fire_time(None, fire - span)
        while at is not None and at < fire:
            last = at
            # One second later in UTC: wall-clock arithmetic drops the `fold` of an hour a DST change
            # repeats, and the trigger would hand back the same fire forever.
            following = trigger.get_next_fire_time(None, at.astimezone(UTC) + timedelta(seconds=1))
            # Never step back (a trigger bug must not hang us); compared in UTC, as datetimes of one zone
            # compare by wall clock, and both 02:30s of a repeated hour would look equal.
            if following is not None and following.astimezone(UTC) <= at.astimezone(UTC):
                break
            at = following
        if last is not None:
            return first_occurrence(trigger, last)
    return None


def first_occurrence(trigger: CronTrigger, fire: datetime) -> datetime:
    """The fire a run at `fire` belongs to. When autumn repeats an hour, APScheduler fires a schedule
    set to a time in it twice; cron runs such a job once (unless its hour field is `*`: an hourly job
    runs in both hours), and so do backups and digests: the repeat belongs to the first occurrence,
    which the once-per-fire key then finds taken."""
    if next(str(field) for field in trigger.fields if field.name == "hour") == "*":
        return fire
    local = fire.astimezone(trigger.timezone)
    first = local.replace(fold=0)
    return first if first.astimezone(UTC) < local.astimezone(UTC) else fire


def last_fire_at(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The schedule's latest fire time at or before `now`: the fire a late-running job belongs to."""
    return previous_fire_at(trigger, now + timedelta(microseconds=1))
