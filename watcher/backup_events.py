"""The `backup.succeeded` and `backup.failed` event bodies, and their deliveries to a backup's notifiers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from watcher.events import iso
from watcher.models import Delivery
from watcher.outcomes import Addressee, make_delivery

BACKUP_SUCCEEDED = "backup.succeeded"
BACKUP_FAILED = "backup.failed"


def backup_succeeded_event(
    *, backup: str, path: str, files: int, size: int, contact_count: int | None, sha256: str, at: float
) -> dict[str, Any]:
    """DESIGN.md's `backup.succeeded`: where it is, how many files and bytes, how many contacts, and the
    SHA-256 of its manifest (which holds each file's own)."""
    data = {"backup": backup, "path": path, "files": files, "bytes": size, "contact_count": contact_count,
            "sha256": sha256}
    return {"type": BACKUP_SUCCEEDED, "timestamp": iso(at), "data": data}


def backup_failed_event(*, backup: str, reason: str, at: float) -> dict[str, Any]:
    """DESIGN.md's `backup.failed`: which backup, and why, in one line."""
    return {"type": BACKUP_FAILED, "timestamp": iso(at), "data": {"backup": backup, "reason": reason}}


def backup_deliveries(
    event: dict[str, Any], *, notify: Sequence[str], recipients: Mapping[str, Addressee], now: float, run: str
) -> list[Delivery]:
    """One delivery per notifier the backup names; `run` (the backup's timestamp) keys them, so a
    repeated write of one run's outcome is skipped by the store."""
    name = str(event["data"]["backup"])
    kind = str(event["type"])
    return [make_delivery(recipients[n], event, now, None, "backup", name, run, kind)
            for n in notify if n in recipients]
