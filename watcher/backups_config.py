"""The `backups:` entries of the configuration: validated before anything runs, every problem located."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from watcher.cron import cron_trigger, zone_ok
from watcher.yamlloc import Path_, Problems, named_entries

#: A backup's name is a directory name under its destination: no colon, no separator, not `.` or `..`.
BACKUP_NAME = re.compile(r"(?!\.)[A-Za-z0-9_.-]{1,64}")
#: List and segment ids go into a request body only, but a typo is better caught here.
SENDGRID_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
BACKUP_KEYS = frozenset({
    "name", "schedule", "timezone", "account", "lists", "segments", "file_type", "destination", "keep", "notify",
})
FILE_TYPES = ("csv", "json")
DEFAULT_KEEP = 7


@dataclass(frozen=True, slots=True)
class BackupSettings:
    """One `backups:` entry: when, what (lists and segments; none = all contacts), where, how many kept."""

    name: str
    schedule: str  # five-field cron
    destination: Path
    timezone: str = "UTC"
    account: str | None = None  # None: the default account
    lists: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    file_type: str = "csv"
    keep: int = DEFAULT_KEEP
    notify: tuple[str, ...] = ()

    def trigger(self) -> CronTrigger:
        return cron_trigger(self.schedule, ZoneInfo(self.timezone))

    @property
    def directory(self) -> Path:
        """Where this backup's dated directories live."""
        return self.destination / self.name


def parse_backups(
    raw: Any, problems: Problems, notifier_names: Collection[str], account_names: Collection[str]
) -> list[BackupSettings]:
    """Validate `backups:`; every problem located, unusable entries left out."""
    return named_entries(
        raw, "backups", "backup", problems,
        lambda item, path: _parse_backup(item, path, problems, notifier_names, account_names),
    )  # fmt: skip


def _parse_backup(
    raw: Any, path: Path_, problems: Problems, notifier_names: Collection[str], account_names: Collection[str]
) -> BackupSettings | None:
    if not isinstance(raw, dict):
        problems.add(path, "expected a mapping with name, schedule and destination")
        return None
    before = len(problems.messages)
    for key in raw:
        if key not in BACKUP_KEYS:
            problems.add((*path, key), f"unknown key (expected one of {', '.join(sorted(BACKUP_KEYS))})")
    name, zone = raw.get("name"), raw.get("timezone", "UTC")
    if not isinstance(name, str) or not BACKUP_NAME.fullmatch(name):
        problems.add((*path, "name"), "expected 1 to 64 characters of A-Z a-z 0-9 - _ . (not starting with a dot)")
    if not isinstance(zone, str) or not zone_ok(zone):
        problems.add((*path, "timezone"), f"unknown time zone {zone!r} (expected an IANA name such as Europe/Berlin)")
    schedule = _schedule(raw.get("schedule"), (*path, "schedule"), problems)
    account = raw.get("account")
    if account is not None and (not isinstance(account, str) or account not in account_names):
        problems.add((*path, "account"),
                     f"unknown account {account!r} (configured: {', '.join(sorted(account_names)) or 'none'})")
    lists = _ids(raw.get("lists"), (*path, "lists"), problems)
    segments = _ids(raw.get("segments"), (*path, "segments"), problems)
    file_type = raw.get("file_type", "csv")
    if file_type not in FILE_TYPES:
        problems.add((*path, "file_type"), f"expected csv or json, got {file_type!r}")
    where = _destination(raw.get("destination"), (*path, "destination"), problems)
    keep = raw.get("keep", DEFAULT_KEEP)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        problems.add((*path, "keep"), f"expected a whole number of backups to keep, at least 1, got {keep!r}")
    notify = _notify(raw.get("notify"), (*path, "notify"), problems, notifier_names)
    if len(problems.messages) > before or where is None:
        return None
    return BackupSettings(str(name), str(schedule), where, str(zone), account, lists, segments, str(file_type),
                          int(keep), notify)


def _destination(raw: Any, path: Path_, problems: Problems) -> Path | None:
    """The destination as an absolute path: `~` and `~user` expanded; relative to the working directory,
    as everywhere in the configuration."""
    if not isinstance(raw, str) or not raw or "\0" in raw:
        problems.add(path, "expected the directory backups are written under")
        return None
    try:
        return Path(raw).expanduser().absolute()
    except RuntimeError:  # ~nosuchuser
        problems.add(path, f"cannot expand {raw.split('/')[0]!r}: no such user, or no home directory")
    except OSError as exc:  # a working directory that is gone
        problems.add(path, f"cannot resolve {raw!r}: {exc.strerror or exc}")
    return None


def _schedule(raw: Any, path: Path_, problems: Problems) -> str | None:
    if not isinstance(raw, str):
        problems.add(path, 'expected a five-field cron expression such as "30 2 * * *"')
        return None
    try:
        cron_trigger(raw, UTC)
    except ValueError as exc:
        problems.add(path, f"invalid cron expression {raw!r}: {exc}")
        return None
    return raw


def _ids(raw: Any, path: Path_, problems: Problems) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(i, str) and SENDGRID_ID.fullmatch(i) for i in raw):
        problems.add(path, "expected a list of ids (1 to 100 characters of A-Z a-z 0-9 - _)")
        return ()
    return tuple(dict.fromkeys(raw))


def _notify(raw: Any, path: Path_, problems: Problems, names: Collection[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        problems.add(path, "expected a list of notifier names")
        return ()
    for item in items:
        if item not in names:
            problems.add(path, f"unknown notifier {item!r} (configured: {', '.join(sorted(names)) or 'none'})")
    return tuple(dict.fromkeys(items))
