"""The event bodies every notifier renders: fixed once, identical on every retry.

A finished import is a `contact_import.<outcome>` event, a finished export a
`contact_export.<outcome>` one (DESIGN.md "Outcomes and notifications", "Starting imports,
exports and backups"). A job of a named account carries `data.account` (absent for the
default account, so the default shape stays as documented).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from watcher.models import JobKind, JobState, Outcome, Snapshot

ALERT_EVENT = "watcher.alert"


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with a Z, second precision."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: Any) -> datetime | None:
    """An ISO 8601 time as SendGrid sends it (a trailing Z, or no zone: UTC); None when it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: The event type prefix of each kind of job.
EVENT_PREFIX: dict[JobKind, str] = {JobKind.IMPORT: "contact_import", JobKind.EXPORT: "contact_export"}


def event_type(outcome: Outcome, kind: JobKind = JobKind.IMPORT) -> str:
    return f"{EVENT_PREFIX[kind]}.{outcome.value}"


def outcome_event(
    job: JobState,
    *,
    outcome: Outcome,
    snapshot: Snapshot | None,
    polls: int,
    detected_at: float,
    errors: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The DESIGN.md webhook body for a job's final outcome (an export's: see export_data)."""
    snap = snapshot or Snapshot()
    watch = {"added_at": iso(job.added_at), "detected_at": iso(detected_at), "polls": polls}
    if job.kind is JobKind.EXPORT:
        return {"type": event_type(outcome, job.kind), "timestamp": iso(detected_at),
                "data": export_data(job, outcome, snap, watch)}  # fmt: skip
    data: dict[str, Any] = {
        "job_id": job.id,
        "status": outcome.value,
        "job_type": snap.job_type,
        "results": _clean_results(snap.results),
        "started_at": snap.started_at,
        "finished_at": snap.finished_at,
        "labels": dict(job.labels),
        "watch": watch,
    }
    if errors is not None:
        data["errors"] = dict(errors)
    _tie(data, job)
    return {"type": event_type(outcome), "timestamp": iso(detected_at), "data": data}


def export_data(job: JobState, outcome: Outcome, snap: Snapshot, watch: dict[str, Any]) -> dict[str, Any]:
    """A `contact_export.<outcome>` event's data: `export_id`, `status`, `contact_count`, `urls`
    (the download links, short-lived: until `expires_at`), `expires_at`, `labels`, `watch`; plus
    `started_at`/`finished_at` as for an import, `job_type` (its export_type) when given and
    `message` when SendGrid said why it failed."""
    results = snap.results
    urls = results.get("urls")
    count = results.get("contact_count")
    data: dict[str, Any] = {
        "export_id": job.id,
        "status": outcome.value,
        "contact_count": int(count) if isinstance(count, float) and count.is_integer() else count,
        "urls": [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else [],
        "expires_at": results.get("expires_at"),
        "started_at": snap.started_at,
        "finished_at": snap.finished_at,
        "labels": dict(job.labels),
        "watch": watch,
    }
    if snap.job_type is not None:
        data["job_type"] = snap.job_type  # the export_type, when SendGrid gave one
    if isinstance(message := results.get("message"), str):
        data["message"] = message
    _tie(data, job)
    return data


def _tie(data: dict[str, Any], job: JobState) -> None:
    """The batch (so a receiver can tie each job event to its batch summary) and the named account."""
    if job.batch is not None:
        data["batch"] = job.batch
    if job.account is not None:
        data["account"] = job.account


def alert_event(kind: str, message: str, *, at: float, **details: Any) -> dict[str, Any]:
    """A `watcher.alert` body: something about the watcher itself needs a human."""
    return {
        "type": ALERT_EVENT,
        "timestamp": iso(at),
        "data": {"alert": kind, "message": message, **details},
    }


def delivery_id(*parts: str) -> str:
    """A stable idempotency key (Standard Webhooks `webhook-id`) from what makes a delivery unique."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"msg_{digest}"


def _clean_results(results: Mapping[str, Any]) -> dict[str, Any]:
    # Counts arrive as JSON numbers (sometimes 10.0); whole floats become ints.
    clean: dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, float) and value.is_integer():
            clean[key] = int(value)
        else:
            clean[key] = value
    return clean
