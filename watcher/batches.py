"""The batch summary and stuck-warning events: pure functions of stored jobs and the time given.

Every replica that builds the summary of one batch from the same stored jobs builds the same
event and the same summary id, so racing replicas write identical deliveries (only one wins).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from watcher.events import iso, outcome_event
from watcher.models import Batch, JobState, Outcome

BATCH_FINISHED = "contact_import.batch_finished"
STUCK = "contact_import.stuck"

#: Worst first: a batch's status is the first of these that any of its jobs ended with
#: (an export's failure is as bad as an import's failed; ready as good as completed).
SEVERITY_ORDER: tuple[str, ...] = (
    Outcome.FAILED.value,
    Outcome.FAILURE.value,
    Outcome.ERRORED.value,
    Outcome.TIMED_OUT.value,
    Outcome.NOT_FOUND.value,
    Outcome.COMPLETED.value,
    Outcome.READY.value,
)
_CLEAN = frozenset({Outcome.COMPLETED, Outcome.READY})
TOTAL_KEYS = ("requested_count", "created_count", "updated_count", "deleted_count", "errored_count")
MAX_NOT_COMPLETED = 20
MAX_TOP_REASONS = 5
MAX_STUCK_LISTED = 100


def batch_status(outcomes: Mapping[str, int]) -> str:
    """The worst outcome with a count above zero (failed > failure > errored > timed_out > not_found >
    completed > ready)."""
    for outcome in SEVERITY_ORDER:
        if outcomes.get(outcome, 0) > 0:
            return outcome
    return Outcome.COMPLETED.value


def summary_id(batch_name: str, summaries_so_far: int) -> str:
    """The id of the batch's next summary: the same on every replica that races to write it."""
    digest = hashlib.sha256("\x1f".join(("batch_finished", batch_name, str(summaries_so_far))).encode())
    return f"sum_{digest.hexdigest()[:32]}"


def uncovered_jobs(batch: Batch, jobs: Sequence[JobState]) -> list[JobState]:
    """The jobs the next summary covers: all of them at first, those joined since the last summary after.

    A job added before the last summary was final when it was written (a join in between makes
    `finish_batch` fail), so everything added at or after `finished_at` is new.
    """
    if batch.summaries == 0 or batch.finished_at is None:
        return list(jobs)
    return [job for job in jobs if job.added_at >= batch.finished_at]


def batch_event(
    batch: Batch, jobs: Sequence[JobState], *, now: float, summary_id: str, public_url: str | None
) -> dict[str, Any]:
    """The DESIGN.md `contact_import.batch_finished` body for `jobs` (the ones this summary covers).

    `continues` is always present: null for a first summary, else the previous summary's id.
    `url` is present only when `public_url` is set. `errors.unavailable_jobs` appears (only when
    above zero) to say how many jobs' errors files could not be read into `rows`/`top_reasons`.
    `summary_id` (from `summary_id()`) is carried as `data.summary_id`, beyond DESIGN.md's list:
    without it a receiver could not match a later summary's `continues` to this one.
    """
    ordered = sorted(jobs, key=lambda job: (job.added_at, job.id))
    outcomes = Counter(job.outcome.value for job in ordered if job.outcome is not None)
    ends = [job.detected_at for job in ordered if job.detected_at is not None]
    data: dict[str, Any] = {
        "batch": batch.name,
        "summary_id": summary_id,
        "status": batch_status(outcomes),
        "jobs": len(ordered),
        "outcomes": {o: outcomes[o] for o in SEVERITY_ORDER if outcomes[o]},
        "totals": totals(ordered),
        "errors": merge_errors(job.errors for job in ordered),
        "not_completed": not_completed(ordered),
        "labels": common_labels(ordered),
        "started_at": iso(min((job.added_at for job in ordered), default=batch.started_at)),
        "finished_at": iso(max(ends, default=now)),
        "continues": batch.last_summary_id if batch.summaries > 0 else None,
    }
    if public_url:
        data["url"] = f"{public_url.rstrip('/')}/batches/{batch.name}"
    return {"type": BATCH_FINISHED, "timestamp": iso(now), "data": data}


def totals(jobs: Iterable[JobState]) -> dict[str, int]:
    """SendGrid's five counters summed over the jobs' last snapshots; missing ones count 0."""
    summed = dict.fromkeys(TOTAL_KEYS, 0)
    for job in jobs:
        results = job.snapshot.results if job.snapshot else {}
        for key in TOTAL_KEYS:
            summed[key] += _count(results.get(key))
    return summed


def merge_errors(summaries: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Rows summed and reasons merged across errors-file summaries, the top 5 by count."""
    rows, unavailable = 0, 0
    reasons: Counter[str] = Counter()
    for summary in summaries:
        if not summary:
            continue
        if "unavailable" in summary:
            unavailable += 1
            continue
        rows += _count(summary.get("rows"))
        for item in summary.get("top_reasons") or ():
            if isinstance(item, Mapping):
                reasons[str(item.get("reason", ""))] += _count(item.get("count"))
    merged: dict[str, Any] = {"rows": rows, "top_reasons": top_reasons(reasons)}
    if unavailable:
        merged["unavailable_jobs"] = unavailable
    return merged


def top_reasons(reasons: Mapping[str, int], limit: int = MAX_TOP_REASONS) -> list[dict[str, Any]]:
    """The `limit` most common reasons, ties broken by reason so every replica agrees."""
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [{"reason": reason, "count": count} for reason, count in ranked]


def not_completed(jobs: Sequence[JobState], limit: int = MAX_NOT_COMPLETED) -> list[dict[str, Any]]:
    """The first `limit` jobs (in the order given) that did not complete cleanly (nor exports end ready)."""
    listed: list[dict[str, Any]] = []
    for job in jobs:
        if job.outcome in _CLEAN:
            continue
        results = job.snapshot.results if job.snapshot else {}
        outcome = job.outcome.value if job.outcome else "pending"
        listed.append({"job_id": job.id, "outcome": outcome, "errored_count": _count(results.get("errored_count"))})
        if len(listed) >= limit:
            break
    return listed


def common_labels(jobs: Sequence[JobState]) -> dict[str, str]:
    """The labels every job has with the same value."""
    if not jobs:
        return {}
    common = dict(jobs[0].labels)
    for job in jobs[1:]:
        common = {key: value for key, value in common.items() if job.labels.get(key) == value}
    return common


def stuck_event(job: JobState, *, now: float) -> dict[str, Any]:
    """A `contact_import.stuck` body: the job's outcome-event data, `status: "pending"`, `pending_for`."""
    return {"type": STUCK, "timestamp": iso(now), "data": _stuck_data(job, now)}


def stuck_batch_event(batch_name: str, jobs: Sequence[JobState], *, now: float) -> dict[str, Any]:
    """One `contact_import.stuck` body for several stuck jobs of one batch found together.

    `data`: `batch`, `status: "pending"`, `count` (all stuck jobs), `pending_for` (the longest),
    `labels` (common to them) and `jobs`: the first 100 in (added_at, id) order, each the `data`
    a single stuck event would carry. A receiver tells it from a single warning by `data.jobs`.
    """
    ordered = sorted(jobs, key=lambda job: (job.added_at, job.id))
    listed = [_stuck_data(job, now) for job in ordered[:MAX_STUCK_LISTED]]
    data: dict[str, Any] = {
        "batch": batch_name,
        "status": "pending",
        "count": len(ordered),
        "pending_for": max((_pending_for(job, now) for job in ordered), default=0),
        "labels": common_labels(ordered),
        "jobs": listed,
    }
    return {"type": STUCK, "timestamp": iso(now), "data": data}


def _stuck_data(job: JobState, now: float) -> dict[str, Any]:
    # outcome_event builds the outcome data a receiver already parses; its outcome is replaced.
    data: dict[str, Any] = outcome_event(
        job, outcome=Outcome.COMPLETED, snapshot=job.snapshot, polls=job.polls, detected_at=now
    )["data"]
    data["status"] = "pending"
    data.setdefault("job_id", job.id)  # an export's data names it export_id: every warning has a job_id
    data["pending_for"] = _pending_for(job, now)
    if job.batch is not None:
        data["batch"] = job.batch
    return data


def _pending_for(job: JobState, now: float) -> int:
    return max(0, round(now - job.added_at))


def _count(value: Any) -> int:
    # Counts arrive as JSON numbers (sometimes 10.0); anything else counts as nothing.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0  # a stored NaN or Infinity must not crash the summary (int() raises on both)
    return int(value)
