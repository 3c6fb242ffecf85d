"""Restore: a verified backup's files imported again, as one batch watched and notified like any import.

Nothing is sent before every file matches its manifest (size and SHA-256) and every file has been
planned (its export columns mapped back to field ids, read-only ones skipped): a tampered or
unmappable backup is refused whole, never half restored. JSON backups are refused: an import
takes CSV, and a backup meant for restoring is a `file_type: csv` one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from watcher.backup_dirs import STAMP, BadBackup, Manifest, verify
from watcher.cli_commands import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, say
from watcher.config import Config
from watcher.models import JobKind, JobRef, validate_batch_name


def restore_batch(directory: Path, manifest: Manifest) -> str:
    """The batch a restore's imports join: `restore:<backup>:<timestamp>`."""
    run = directory.name if STAMP.fullmatch(directory.name) else re.sub(r"[^0-9TZ]", "", manifest.created_at)
    return validate_batch_name(f"restore:{manifest.backup}:{run or 'unknown'}")


def check_restorable(directory: Path, config: Config) -> Manifest:
    """The verified manifest of a CSV backup of a configured account; BadBackup (exit 1) or ValueError (exit 2)."""
    manifest = verify(directory)
    if any(".json" in f.name for f in manifest.files):
        raise ValueError(f"{directory} is a JSON backup: restore imports CSV only (take backups with file_type: csv)")
    if manifest.account not in config.accounts:
        raise ValueError(f"{directory} is a backup of account {manifest.account!r}, which is not configured "
                         f"(configured: {', '.join(config.accounts)})")
    return manifest


async def restore(config: Config, directory: Path, *, list_ids: Sequence[str] = (), wait: bool = False) -> int:
    """The `restore` command: verify, plan every file, import each, track them as one batch; with
    `wait`, follow each import to its end (exit 1 unless every one completed)."""
    from watcher.accounts import Accounts
    from watcher.cli_jobs import follow, track
    from watcher.clock import SystemClock
    from watcher.csvimport import PlanError, plan_import
    from watcher.errors import WatcherError
    from watcher.lifecycle import Lifecycle, import_csv

    try:
        manifest = check_restorable(directory, config)
    except BadBackup as exc:
        say(f"refusing to restore: {exc}")
        return EXIT_RUNTIME
    except ValueError as exc:
        say(str(exc))
        return EXIT_USAGE
    if manifest.contact_count == 0:
        print(f"{directory}: the backup holds no contacts; nothing to restore")
        return EXIT_OK
    batch = restore_batch(directory, manifest)
    started: list[tuple[JobRef, bool]] = []  # each import, and whether the daemon's API took it
    rows = 0
    async with Accounts.open(config, clock=SystemClock(), store_url=config.state.url) as accounts:
        account = accounts.get(manifest.account)
        lifecycle = Lifecycle(account, clock=SystemClock())
        try:
            definitions = await lifecycle.field_definitions()
            plans = [(directory / f.name, plan_import(directory / f.name, definitions, export_file=True))
                     for f in manifest.files]
            for path, plan in plans:
                job = await import_csv(lifecycle, path, plan, list_ids=list_ids)
                print(f"{path.name}: {plan.rows:,} contacts, import {job.job_id} started")
                ref = JobRef(job.job_id, {"restore": manifest.backup}, batch=batch, kind=JobKind.IMPORT,
                             account=manifest.account)
                started.append((ref, await track(config, ref)))
                rows += plan.rows
        except PlanError as exc:
            say(f"refusing to restore {directory}: {exc}")
            return EXIT_RUNTIME
        except WatcherError as exc:
            say(f"restore of {directory} stopped after {len(started)} of {len(manifest.files)} files: {exc}")
            return EXIT_RUNTIME
        print(f"restoring {rows:,} contacts from {directory} as batch {batch}")
        if not wait:
            return EXIT_OK
        codes = [await follow(config, account, ref, via_api=via_api) for ref, via_api in started]
    return max(codes, default=EXIT_OK)
