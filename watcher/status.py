"""The job view shared by `status --json`, `GET /jobs` and the status page, and the API's paging cursor."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from watcher.errors import InvalidJobId
from watcher.events import iso
from watcher.models import Delivery, JobState, StoreCounts, Tombstone, validate_job_id
from watcher.store.base import StateStore

#: What a cursor's time may look like: repr() of a non-negative float, nothing else.
_CURSOR_TIME = re.compile(r"\d{1,20}(\.\d{1,20})?(e[+-]\d{1,3})?")
MAX_CURSOR = 200


def job_view(job: JobState, deliveries: Iterable[Delivery]) -> dict[str, Any]:
    """One job as users see it (DESIGN.md `status --json`)."""
    snapshot = job.snapshot
    return {
        "id": job.id,
        "state": job.state,
        "polls": job.polls,
        "labels": dict(job.labels),
        "notify": list(job.notify) if job.notify is not None else None,
        "added_at": iso(job.added_at),
        "next_poll_at": iso(job.next_poll_at) if job.outcome is None else None,
        "status": snapshot.status if snapshot else None,
        "job_type": snapshot.job_type if snapshot else None,
        "results": _finite(dict(snapshot.results)) if snapshot else {},
        "finished_at": snapshot.finished_at if snapshot else None,
        "detected_at": iso(job.detected_at),
        "deliveries": [
            {
                "notifier": d.notifier,
                "state": d.state.value,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "next_attempt_at": iso(d.next_attempt_at) if d.state.value == "pending" else None,
            }
            for d in deliveries
        ],
    }


def _finite(value: Any) -> Any:
    # NaN and Infinity are not JSON: a stored count that became one is shown as unknown, never emitted.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


async def job_views(store: StateStore, jobs: Sequence[JobState]) -> list[dict[str, Any]]:
    """Views of several jobs with one outbox query that never reads the stored event bodies."""
    by_job: dict[str, list[Delivery]] = defaultdict(list)
    if jobs:
        for delivery in await store.list_deliveries([j.id for j in jobs], with_events=False):
            if delivery.job_id is not None:
                by_job[delivery.job_id].append(delivery)
    return [job_view(job, by_job.get(job.id, [])) for job in jobs]


def tombstone_view(tombstone: Tombstone) -> dict[str, Any]:
    """A stopped or purged job as `POST /jobs` answers for it: `state` is the tombstone's reason."""
    return {"id": tombstone.id, "state": tombstone.reason.value, "since": iso(tombstone.at)}


def summary_view(counts: StoreCounts) -> dict[str, dict[str, int]]:
    """`GET /summary`: jobs and deliveries per state, every state present."""
    return {"jobs": dict(counts.jobs_by_state), "deliveries": dict(counts.deliveries_by_state)}


def encode_cursor(added_at: float, job_id: str) -> str:
    """The opaque cursor of the page that starts after this place in (added_at, id) order."""
    text = f"{float(added_at)!r}:{job_id}".encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(added_at, id) from a cursor this module made; ValueError for anything else."""
    bogus = ValueError("`after` is not a cursor this server gave out")
    if not cursor.isascii() or len(cursor) > MAX_CURSOR:
        raise bogus
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        at_text, _, job_id = raw.decode("ascii").partition(":")
        validate_job_id(job_id)
    except (binascii.Error, UnicodeDecodeError, InvalidJobId):
        raise bogus from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != cursor:
        raise bogus  # only the one spelling this module writes
    added_at = float(at_text) if _CURSOR_TIME.fullmatch(at_text) else math.nan
    if not math.isfinite(added_at) or f"{added_at!r}" != at_text:
        raise bogus
    return added_at, job_id


def status_table(views: Sequence[dict[str, Any]]) -> str:
    """A plain-text table for `import-watcher status`."""
    rows = [("JOB", "STATE", "POLLS", "NEXT POLL / DETECTED", "DELIVERIES")]
    for v in views:
        when = v["next_poll_at"] or v["detected_at"] or "-"
        deliveries = ", ".join(f"{d['notifier']}={d['state']}({d['attempts']})" for d in v["deliveries"]) or "-"
        rows.append((v["id"], v["state"], str(v["polls"]), when, deliveries))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4] for row in rows
    )
