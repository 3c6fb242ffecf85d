"""The `watcher.digest` event: what happened in a period, as a pure function of what the store holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from watcher.batches import SEVERITY_ORDER, batch_status, merge_errors
from watcher.events import iso
from watcher.models import Batch, Delivery, JobState

DIGEST_EVENT = "watcher.digest"
MAX_SLOWEST = 5
MAX_DEAD_LISTED = 5
MAX_ALERTS = 10


def digest_event(
    *,
    name: str,
    since: float,
    until: float,
    jobs: Sequence[JobState],
    batches: Sequence[Batch],
    dead: Sequence[Delivery],
    alerts: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The DESIGN.md `watcher.digest` body for the period [since, until).

    `data`: `digest` (its name), `since`, `until`, `jobs` {outcome: count}, `batches`
    {status: count}, `top_reasons` (merged from the jobs' errors files, top 5), `slowest`
    [{job_id, seconds, outcome}] (added to detected, top 5), `dead_deliveries` {count, first:
    [{notifier, job_id, error}] (first 5)}, `alerts` [{alert, message, at}] (first 10, of
    `watcher.alert` events or their `data`).
    """
    finished = [job for job in jobs if job.outcome is not None]
    outcomes = Counter(job.outcome.value for job in finished if job.outcome is not None)
    statuses = Counter(batch_status(batch.outcomes) for batch in batches)
    data: dict[str, Any] = {
        "digest": name,
        "since": iso(since),
        "until": iso(until),
        "jobs": {o: outcomes[o] for o in SEVERITY_ORDER if outcomes[o]},
        "batches": {s: statuses[s] for s in SEVERITY_ORDER if statuses[s]},
        "top_reasons": merge_errors(job.errors for job in finished)["top_reasons"],
        "slowest": slowest(finished),
        "dead_deliveries": {
            "count": len(dead),
            "first": [
                {"notifier": d.notifier, "job_id": d.job_id, "error": d.last_error} for d in dead[:MAX_DEAD_LISTED]
            ],
        },
        "alerts": [_alert(alert) for alert in alerts[:MAX_ALERTS]],
    }
    return {"type": DIGEST_EVENT, "timestamp": iso(until), "data": data}


def is_empty(event: Mapping[str, Any]) -> bool:
    """True when the digest has nothing to say: no jobs, batches, dead deliveries or alerts."""
    data = event.get("data")
    if not isinstance(data, Mapping):
        return True
    dead = data.get("dead_deliveries")
    dead_count = dead.get("count", 0) if isinstance(dead, Mapping) else 0
    return not (data.get("jobs") or data.get("batches") or dead_count or data.get("alerts"))


def slowest(jobs: Sequence[JobState], limit: int = MAX_SLOWEST) -> list[dict[str, Any]]:
    """The `limit` jobs that took longest from being added to their outcome being seen."""
    timed = [(job.detected_at - job.added_at, job) for job in jobs if job.detected_at is not None]
    timed.sort(key=lambda item: (-item[0], item[1].id))
    return [
        {"job_id": job.id, "seconds": max(0, round(seconds)), "outcome": job.outcome.value if job.outcome else None}
        for seconds, job in timed[:limit]
    ]


def _alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    # Accept a whole watcher.alert event (data + timestamp) or just its data.
    data = alert.get("data")
    body = data if isinstance(data, Mapping) else alert
    return {"alert": body.get("alert"), "message": body.get("message"), "at": alert.get("timestamp", body.get("at"))}
