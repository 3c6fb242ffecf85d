"""The event bodies every notifier renders: fixed once, identical on every retry."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from watcher.models import JobState, Outcome, Snapshot

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


def event_type(outcome: Outcome) -> str:
    return f"contact_import.{outcome.value}"


def outcome_event(
    job: JobState,
    *,
    outcome: Outcome,
    snapshot: Snapshot | None,
    polls: int,
    detected_at: float,
    errors: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The DESIGN.md webhook body for a job's final outcome."""
    snap = snapshot or Snapshot()
    data: dict[str, Any] = {
        "job_id": job.id,
        "status": outcome.value,
        "job_type": snap.job_type,
        "results": _clean_results(snap.results),
        "started_at": snap.started_at,
        "finished_at": snap.finished_at,
        "labels": dict(job.labels),
        "watch": {"added_at": iso(job.added_at), "detected_at": iso(detected_at), "polls": polls},
    }
    if errors is not None:
        data["errors"] = dict(errors)
    if job.batch is not None:
        data["batch"] = job.batch  # so a receiver can tie each job event to its batch summary
    return {"type": event_type(outcome), "timestamp": iso(detected_at), "data": data}


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
