"""The job view shared by `status --json`, `GET /jobs` and the status page."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from watcher.events import iso
from watcher.models import Delivery, JobState
from watcher.store.base import StateStore


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
        "results": dict(snapshot.results) if snapshot else {},
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


async def job_views(store: StateStore, jobs: Sequence[JobState]) -> list[dict[str, Any]]:
    """Views of several jobs with one outbox query."""
    by_job: dict[str, list[Delivery]] = defaultdict(list)
    if jobs:
        for delivery in await store.list_deliveries([j.id for j in jobs]):
            if delivery.job_id is not None:
                by_job[delivery.job_id].append(delivery)
    return [job_view(job, by_job.get(job.id, [])) for job in jobs]


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
