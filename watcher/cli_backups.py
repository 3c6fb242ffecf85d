"""The `backup`, `backups` and `restore` commands.

`backup` always runs in the foreground, where its destination is: it starts the export, waits for
it, writes the backup and queues its notification in the state store's outbox (a running daemon
delivers it). `--wait` is accepted for symmetry with `import` and `restore` and changes nothing.
A NAME is needed only when several backups are configured. A manual run does not count as a
scheduled fire: the schedule's next run still happens.

`restore` verifies every file of the backup against its manifest first and refuses on any mismatch;
only CSV backups can be restored (an import takes CSV; a JSON backup is refused, take a csv one).
Each file is planned (the export's columns mapped back to field ids) before the first is sent, then
imported as one batch, `restore:<backup>:<timestamp>`, tracked and notified like any import.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.cli_commands import EXIT_OK, EXIT_RUNTIME, say
from watcher.config import Config

if TYPE_CHECKING:
    from watcher.backup_dirs import Manifest
    from watcher.backups_config import BackupSettings

COMMANDS: frozenset[str] = frozenset({"backup", "backups", "restore"})


def add_parsers(with_config: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser."""
    backup = with_config("backup", "take a configured backup now, in the foreground; exit 1 if it fails")
    backup.add_argument("backup_name", nargs="?", metavar="NAME",
                        help="which backup (needed when several are configured)")
    backup.add_argument("--wait", action="store_true", help="accepted for symmetry: a backup always runs to its end")
    with_config("backups", "list the backups kept, each verified against its manifest")
    restore = with_config("restore", "verify a backup and import its contacts again, as one watched batch")
    restore.add_argument("backup_dir", metavar="BACKUP_DIR", help="a backup directory (holding manifest.json)")
    restore.add_argument("--list", action="append", default=[], metavar="ID", dest="list_ids",
                         help="also add every restored contact to this list (repeatable)")
    restore.add_argument("--wait", action="store_true", help="follow the imports until they end; exit 1 unless all "
                                                             "completed")


def run(command: str, config: Config, args: argparse.Namespace) -> int:
    """Run one of COMMANDS; returns the exit code."""
    if command == "backup":
        return asyncio.run(_backup(config, choose(config, args.backup_name)))
    if command == "backups":
        return list_backups(config)
    from watcher.backup_restore import restore

    return asyncio.run(restore(config, Path(args.backup_dir), list_ids=tuple(args.list_ids), wait=args.wait))


def choose(config: Config, name: str | None) -> BackupSettings:
    """The backup NAME names, or the only one; ValueError (exit 2) saying what is configured."""
    names = [b.name for b in config.backups]
    if not names:
        raise ValueError("no backups configured (add a `backups:` entry)")
    if name is None and len(names) > 1:
        raise ValueError(f"several backups are configured ({', '.join(names)}): name one")
    for settings in config.backups:
        if name is None or settings.name == name:
            return settings
    raise ValueError(f"unknown backup {name!r} (configured: {', '.join(names)})")


async def _backup(config: Config, settings: BackupSettings) -> int:
    from watcher.accounts import Accounts
    from watcher.backups import run_backup
    from watcher.cli_commands import opened
    from watcher.clock import SystemClock
    from watcher.lifecycle import Lifecycle

    clock = SystemClock()
    recipients = {n.name: n for n in config.notifiers}
    async with opened(config) as store, Accounts.open(config, clock=clock, store=store) as accounts:
        account = accounts.get(settings.account)
        result = await run_backup(settings, account=account, lifecycle=Lifecycle(account, clock=clock), clock=clock,
                                  store=store, recipients=recipients, policy=config.polling)
    if result.manifest is None:
        say(f"backup {settings.name} failed: {result.reason}")
        return EXIT_RUNTIME
    print(f"backup {settings.name}: {result.path} ({describe(result.manifest)}; manifest sha256 {result.sha256})")
    return EXIT_OK


def describe(manifest: Manifest) -> str:
    count = "unknown number of" if manifest.contact_count is None else f"{manifest.contact_count:,}"
    files = len(manifest.files)
    return f"{count} contacts, {size_text(manifest.size)}, {files} file{'s' if files != 1 else ''}"


def size_text(size: int) -> str:
    value, unit = float(size), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def list_backups(config: Config) -> int:
    """One line per kept backup, newest first per backup: name, time, contacts, size, files, verified."""
    from watcher.backup_dirs import BadBackup, complete_backups, verify

    if not config.backups:
        raise ValueError("no backups configured (add a `backups:` entry)")
    bad = 0
    for settings in config.backups:
        kept = complete_backups(settings.directory)
        if not kept:
            print(f"{settings.name}: no backups in {settings.directory}")
        for path in reversed(kept):
            try:
                manifest = verify(path)
            except BadBackup as exc:
                bad += 1
                print(f"{settings.name}  {path.name}  NOT VERIFIED: {exc}")
                continue
            print(f"{settings.name}  {path.name}  {describe(manifest)}  verified  {path}")
    return EXIT_RUNTIME if bad else EXIT_OK

