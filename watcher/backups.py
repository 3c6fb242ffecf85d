"""One backup run: start an export, watch it, download its files, write them with a manifest, rotate, notify.

The export is watched with the poll policy every job has (`policy.decide`: proportional waits, the
404 grace, transient backoff, the deadline), except that a refused key ends the run at once: a
backup has no later to wait for. Its download URLs expire (S3 presigned links): one that has
expired is replaced by re-reading the export, which hands out fresh ones, a few times at most.

Files go into a hidden temporary directory of this run's own, fsynced, which is renamed into place with
the manifest in it (see watcher.backup_dirs); any failure, a full disk included, removes it (and nothing
else: a run of the same second keeps its files) and reports `backup.failed` with its reason. Each file is
capped at MAX_FILE_BYTES. Rotation runs only after a success, so a failing schedule never eats the backups
it has; housekeeping (rotation, stale temporary directories) failing is logged and never costs the run
its notification.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from watcher import backup_dirs as dirs
from watcher.backup_dirs import BackupFile, Manifest
from watcher.backup_events import backup_deliveries, backup_failed_event, backup_succeeded_event
from watcher.backups_config import BackupSettings
from watcher.clock import Clock
from watcher.csvimport import is_gzip
from watcher.errors import ImportNotFound, KeyRefused, TryLater, WatcherError
from watcher.events import iso
from watcher.models import EXPORT_TERMINAL_STATUSES, Delivery, JobKind, JobState, Outcome, Snapshot
from watcher.net import BodyTooLarge, OutboundRefused
from watcher.outcomes import Addressee
from watcher.policy import Finish, NotFound, Observation, PollPolicy, Seen, Transient, decide

log = structlog.get_logger("watcher.backups")

#: How often expired download URLs are replaced by fresh ones in one run before it gives up.
MAX_URL_REFRESHES = 3
#: A temporary directory older than this (past the export deadline) belongs to no running backup.
STALE_AFTER = 86400.0
#: The running backups' temporary directories in this process: never removed as stale.
_RUNNING: set[Path] = set()
#: The most one downloaded export file may hold: the import limit (a larger file could not be restored).
MAX_FILE_BYTES = 5_000_000_000
T = TypeVar("T")


class ExportReader(Protocol):
    """What a backup reads about its export (SendGridClient)."""

    async def get_export(self, export_id: str) -> Snapshot: ...


class BackupAccount(Protocol):
    """The account a backup runs in (watcher.accounts.Account)."""

    @property
    def name(self) -> str: ...

    @property
    def client(self) -> ExportReader: ...


class ExportLifecycle(Protocol):
    """Starting an export and downloading its files (watcher.lifecycle.Lifecycle)."""

    async def start_export(
        self, *, list_ids: Sequence[str] = (), segment_ids: Sequence[str] = (), file_type: str = "csv"
    ) -> str: ...

    async def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> tuple[int, str]:
        """The file at `url` written to `dest` and synced: (bytes, sha256 hex)."""


class BackupStore(Protocol):
    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> int: ...


class BackupFailed(WatcherError):
    """A backup run could not complete; the message is the `reason` people read."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    """How one run went: the backup's directory and manifest, or why it failed."""

    backup: str
    run: str  # its UTC timestamp: the directory's name
    path: Path | None = None
    manifest: Manifest | None = None
    sha256: str | None = None  # of manifest.json
    reason: str | None = None
    deliveries: int = 0
    removed: tuple[Path, ...] = ()  # backups rotation deleted

    @property
    def ok(self) -> bool:
        return self.reason is None


async def run_backup(
    settings: BackupSettings,
    *,
    account: BackupAccount,
    lifecycle: ExportLifecycle,
    clock: Clock,
    store: BackupStore,
    recipients: Mapping[str, Addressee],
    now: float | None = None,
    policy: PollPolicy | None = None,
    draw: Callable[[], float] = random.random,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> BackupResult:
    """Take one backup now (`now` names it; default: the clock), rotate, and queue its notification."""
    started = clock.now() if now is None else now
    policy = policy or PollPolicy()
    run = dirs.stamp(started)
    directory = settings.directory
    bound = log.bind(backup=settings.name, run=run, account=account.name)
    try:
        path, manifest, digest = await _take(settings, account, lifecycle, clock, policy, draw, started, run,
                                             max_file_bytes)
    except BackupFailed as exc:
        result = BackupResult(settings.name, run, reason=str(exc))
        event = backup_failed_event(backup=settings.name, reason=str(exc), at=clock.now())
        bound.warning("backup.failed", reason=str(exc))
    else:
        removed = _housekeeping(bound, "rotate", lambda: tuple(dirs.rotate(directory, settings.keep))) or ()
        result = BackupResult(settings.name, run, path, manifest, digest, removed=removed)
        event = backup_succeeded_event(backup=settings.name, path=str(path), files=len(manifest.files),
                                       size=manifest.size, contact_count=manifest.contact_count, sha256=digest,
                                       at=clock.now())
        bound.info("backup.succeeded", path=str(path), files=len(manifest.files), bytes=manifest.size,
                   contact_count=manifest.contact_count, rotated=[p.name for p in removed])
    deliveries = backup_deliveries(event, notify=settings.notify, recipients=recipients, now=clock.now(), run=run)
    written = await store.add_deliveries(deliveries) if deliveries else 0
    _housekeeping(bound, "remove_stale", lambda: dirs.remove_stale(
        directory, now=started, older_than=STALE_AFTER + policy.deadline, running=_RUNNING))
    return dataclasses.replace(result, deliveries=written)


def _housekeeping(bound: Any, step: str, action: Callable[[], T]) -> T | None:
    """`action()`, or None with a warning when it fails: tidying never fails the run that tidies."""
    try:
        return action()
    except Exception as exc:  # any failure: the backup itself is written and must be notified
        bound.warning("backup.housekeeping_failed", step=step, error=f"{type(exc).__name__}: {exc}")
        return None


async def _take(
    settings: BackupSettings, account: BackupAccount, lifecycle: ExportLifecycle, clock: Clock,
    policy: PollPolicy, draw: Callable[[], float], started: float, run: str, max_file_bytes: int,
) -> tuple[Path, Manifest, str]:
    try:
        export_id = await lifecycle.start_export(list_ids=settings.lists, segment_ids=settings.segments,
                                                 file_type=settings.file_type)
    except (WatcherError, ValueError) as exc:
        raise BackupFailed(f"SendGrid did not start the export: {exc}") from None
    snapshot = await watch_export(account.client, export_id, clock=clock, policy=policy, draw=draw)
    final = settings.directory / run
    if final.exists():
        raise BackupFailed(f"{final} already exists (another backup of the same second)")
    try:
        tmp = dirs.make_tmp_dir(settings.directory, run)  # this run's own: the only one it ever removes
    except OSError as exc:
        raise BackupFailed(f"cannot write {settings.directory}{_disk_full(exc)}: {exc.strerror or exc}") from None
    _RUNNING.add(tmp)
    try:
        files = await _download_all(account.client, lifecycle, export_id, snapshot, tmp, settings.file_type,
                                    max_file_bytes)
        manifest = Manifest(settings.name, export_id, account.name, iso(started) or "",
                            _contact_count(snapshot), tuple(files))
        digest = dirs.write_manifest(tmp, manifest)
        dirs.fsync_dir(tmp)
        _rename(tmp, final)  # the one step that makes it a backup
        dirs.fsync_dir(settings.directory)
    except BaseException as exc:
        dirs.discard(tmp)
        if isinstance(exc, OSError):
            raise BackupFailed(f"cannot write {tmp}{_disk_full(exc)}: {exc.strerror or exc}") from None
        raise
    finally:
        _RUNNING.discard(tmp)
    return final, manifest, digest


def _rename(tmp: Path, final: Path) -> None:
    """Rename the complete temporary directory to its final name; a backup already there (a run of the
    same second finished first) is never replaced: rename cannot replace a directory that holds files."""
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise BackupFailed(f"{final} already exists (another backup of the same second)") from None
        raise


def _disk_full(exc: OSError) -> str:
    return " (disk full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""


async def watch_export(
    client: ExportReader, export_id: str, *, clock: Clock, policy: PollPolicy, draw: Callable[[], float]
) -> Snapshot:
    """Poll the export until it is ready (its snapshot); BackupFailed when it fails, times out or
    the key is refused."""
    added = clock.now()
    job = JobState(export_id, {}, None, added_at=added, next_poll_at=added + policy.initial_delay,
                   kind=JobKind.EXPORT)
    while True:
        await clock.sleep(job.next_poll_at - clock.now())
        seen = await _observe(client, export_id)
        if isinstance(seen, Seen):
            outcome = EXPORT_TERMINAL_STATUSES.get(seen.snapshot.normalized_status or "")
            if outcome is Outcome.READY:
                return seen.snapshot
            if outcome is not None:
                message = seen.snapshot.results.get("message") or "no reason given"
                raise BackupFailed(f"the export {export_id} failed: {message}")
        decision = decide(policy, job, seen, clock.now(), draw())
        if isinstance(decision, Finish):
            raise BackupFailed(f"the export {export_id} ended {decision.outcome.value} "
                               f"(status {_status(decision.snapshot)}) without being ready")
        job = dataclasses.replace(job, next_poll_at=decision.next_poll_at, polls=decision.polls,
                                  transient_errors=decision.transient_errors, snapshot=decision.snapshot)


async def _observe(client: ExportReader, export_id: str) -> Observation:
    try:
        return Seen(await client.get_export(export_id))
    except ImportNotFound:
        return NotFound()
    except KeyRefused as exc:
        raise BackupFailed(str(exc)) from None
    except TryLater as exc:
        return Transient(exc.retry_after)


def _status(snapshot: Snapshot | None) -> str:
    return (snapshot.status if snapshot else None) or "unknown"


def _contact_count(snapshot: Snapshot) -> int | None:
    count = snapshot.results.get("contact_count")
    return count if isinstance(count, int) and not isinstance(count, bool) else None


async def _download_all(
    client: ExportReader, lifecycle: ExportLifecycle, export_id: str, snapshot: Snapshot, into: Path,
    file_type: str, max_file_bytes: int,
) -> list[BackupFile]:
    """Download every URL of the ready export into `into`, in order; expired URLs are replaced by
    re-reading the export, at most MAX_URL_REFRESHES times."""
    from watcher.lifecycle import UrlExpired

    urls = _urls(snapshot, export_id)
    files: list[BackupFile] = []
    refreshes = 0
    while len(files) < len(urls):
        index = len(files)
        part = into / f".part-{index + 1:03d}"
        try:
            size, digest = await lifecycle.download(urls[index], part, max_bytes=max_file_bytes)
        except UrlExpired:
            part.unlink(missing_ok=True)
            refreshes += 1
            if refreshes > MAX_URL_REFRESHES:
                raise BackupFailed(f"the export {export_id}'s download URLs kept expiring "
                                   f"({MAX_URL_REFRESHES} refreshes)") from None
            urls = await _fresh_urls(client, export_id, len(urls))
            continue
        except BodyTooLarge:
            raise BackupFailed(f"file {index + 1} of the export {export_id} is larger than {max_file_bytes:,} "
                               "bytes, the most a backup downloads") from None
        except (WatcherError, ValueError, OutboundRefused) as exc:
            raise BackupFailed(f"downloading file {index + 1} of the export {export_id} failed: {exc}"
                               f"{_full(into)}") from None
        name = f"contacts-{index + 1:03d}.{file_type}{'.gz' if is_gzip(part) else ''}"
        os.rename(part, into / name)  # written and synced by download; the directory is synced at the end
        files.append(BackupFile(name, size, digest))
    return files


async def _fresh_urls(client: ExportReader, export_id: str, expected: int) -> list[str]:
    try:
        snapshot = await client.get_export(export_id)
    except (WatcherError, ValueError) as exc:
        raise BackupFailed(f"re-reading the export {export_id} for fresh URLs failed: {exc}") from None
    if snapshot.normalized_status != "ready":
        raise BackupFailed(f"the export {export_id} is {_status(snapshot)} when re-read for fresh URLs")
    urls = _urls(snapshot, export_id)
    if len(urls) != expected:
        raise BackupFailed(f"the export {export_id} answered {len(urls)} URLs when re-read, {expected} before")
    return urls


def _urls(snapshot: Snapshot, export_id: str) -> list[str]:
    urls = snapshot.results.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        refused = snapshot.results.get("urls_refused")
        why = f" ({refused} refused by the outbound policy)" if refused else ""
        raise BackupFailed(f"the export {export_id} is ready without download URLs{why}")
    return list(urls)


def _full(directory: Path) -> str:
    """" (disk full)" when the file system of `directory` has no space left: a failed download's likely cause."""
    try:
        return " (disk full)" if os.statvfs(directory).f_bavail == 0 else ""
    except OSError:
        return ""


