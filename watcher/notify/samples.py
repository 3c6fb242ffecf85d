"""Realistic sample events of every kind, built by the real builders (notify-test, `check`, tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from watcher.backup_events import backup_failed_event, backup_succeeded_event
from watcher.batches import batch_event as build_batch_event
from watcher.batches import stuck_batch_event, stuck_event, summary_id
from watcher.digests import digest_event
from watcher.events import ALERT_EVENT, alert_event, outcome_event
from watcher.models import Batch, BatchPhase, Delivery, JobKind, JobState, Outcome, Snapshot

ALERT = "alert"
SAMPLE_AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC).timestamp()
SAMPLE_JOB = "0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11"
SAMPLE_BATCH = "nightly-2026-11-27"
SAMPLE_URL = "https://watcher.example.com"
_SAMPLE_CSV = "email,first_name,error\nnot-an-email,Ann,invalid email\n,Bob,missing field\n"
_SAMPLE_ERRORED = {Outcome.ERRORED: 10, Outcome.FAILED: 1000}
_LABELS = {"team": "growth", "list": "newsletter"}

#: Every alert kind the watcher sends, with a sample message and details as the sender builds them.
ALERT_SAMPLES: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "key_refused": ("SendGrid refused the API key (HTTP 401): authorization required", {}),
    "key_accepted": ("SendGrid accepts the API key again", {}),
    "delivery_dead": (
        "notification msg_0b5f1c9e to team-slack is dead after 12 attempts: HTTP 500",
        {
            "notifier": "team-slack",
            "job_id": SAMPLE_JOB,
            "delivery_id": "msg_0b5f1c9e",
            "event_type": "contact_import.failed",
        },
    ),
}

#: How an import ends; an export ends `ready`, `failure`, `timed_out` or `not_found` (EXPORT_SAMPLES).
IMPORT_OUTCOMES = (Outcome.COMPLETED, Outcome.ERRORED, Outcome.FAILED, Outcome.TIMED_OUT, Outcome.NOT_FOUND)
#: A contact export's outcomes, by sample name.
EXPORT_SAMPLES: Mapping[str, Outcome] = {
    f"export {o.value}": o for o in (Outcome.READY, Outcome.FAILURE, Outcome.TIMED_OUT, Outcome.NOT_FOUND)
}
SAMPLE_EXPORT = "5e1f9a7c-3b2d-4c6e-8f10-7a9b0c1d2e3f"
SAMPLE_BACKUP = "nightly"
BACKUP_SAMPLES = ("backup succeeded", "backup failed")
#: Sample events without `data.job_id` (many jobs, exports, backups): per-job templates may not fit them.
SUMMARY_SAMPLES = ("batch_finished", "stuck batch", "digest", *EXPORT_SAMPLES, *BACKUP_SAMPLES)


def sample_events() -> list[tuple[str, dict[str, Any]]]:
    """A fresh sample of every outcome, every alert kind, a batch summary, stuck warnings, a digest,
    every export outcome and both backup outcomes."""
    samples = [(outcome.value, sample_event(outcome.value)) for outcome in IMPORT_OUTCOMES]
    samples += [(f"alert {kind}", sample_alert(kind)) for kind in ALERT_SAMPLES]
    names = ("batch_finished", "stuck", "stuck batch", "digest", *EXPORT_SAMPLES, *BACKUP_SAMPLES)
    samples += [(name, sample_event(name)) for name in names]
    return samples


def sample_alert(kind: str = "key_refused") -> dict[str, Any]:
    """A `watcher.alert` event of one of the ALERT_SAMPLES kinds."""
    message, details = ALERT_SAMPLES[kind]
    return alert_event(kind, message, at=SAMPLE_AT, **details)


def sample_event(outcome: str = "errored") -> dict[str, Any]:
    """A realistic event: an Outcome value, `alert`, `batch_finished`, `stuck`, `stuck batch`, `digest`,
    an EXPORT_SAMPLES or BACKUP_SAMPLES name (`ready` and `failure`, which only exports have, are exports)."""
    if outcome in EXPORT_SAMPLES or outcome in {Outcome.READY.value, Outcome.FAILURE.value}:
        return sample_export(EXPORT_SAMPLES.get(outcome) or Outcome(outcome))
    if outcome in BACKUP_SAMPLES:
        return sample_backup(succeeded=outcome == "backup succeeded")
    if outcome in {ALERT, ALERT_EVENT}:
        return sample_alert("key_refused")
    if outcome == "batch_finished":
        return sample_batch_event()
    if outcome == "stuck":
        return stuck_event(sample_job(SAMPLE_JOB, added=SAMPLE_AT - 7200), now=SAMPLE_AT)
    if outcome == "stuck batch":
        jobs = [sample_job(f"{SAMPLE_BATCH}-{i:02}", added=SAMPLE_AT - 7300 + i) for i in range(12)]
        return stuck_batch_event(SAMPLE_BATCH, jobs, now=SAMPLE_AT)
    if outcome == "digest":
        return sample_digest()
    result = Outcome(outcome)  # ValueError names an unknown outcome
    job = sample_job(SAMPLE_JOB, added=SAMPLE_AT - 900)
    errors = _errors(result)
    snapshot = _snapshot(result)
    event = outcome_event(job, outcome=result, snapshot=snapshot, polls=7, detected_at=SAMPLE_AT, errors=errors)
    if errors:
        event["errors_sample_csv"] = _SAMPLE_CSV
    return event


def sample_export(outcome: Outcome = Outcome.READY) -> dict[str, Any]:
    """A `contact_export.<outcome>` event from the real builder; a ready one carries two presigned file URLs."""
    ready = outcome is Outcome.READY
    base = f"https://sendgrid-exports.example.com/{SAMPLE_EXPORT}"
    results: dict[str, Any] = {
        "contact_count": 48213,
        "urls": [f"{base}/part-{i}.csv.gz?X-Amz-Expires=259200&X-Amz-Signature=sample{i}" for i in (1, 2)],
        "expires_at": "2026-11-30T10:00:00Z",
    }
    snapshot = Snapshot(status=outcome.value, job_type="contacts_export", results=results if ready else {},
                        started_at="2026-11-27T09:52:30Z", finished_at="2026-11-27T09:58:45Z" if ready else None)
    job = replace(sample_job(SAMPLE_EXPORT, added=SAMPLE_AT - 900), kind=JobKind.EXPORT)
    return outcome_event(job, outcome=outcome, snapshot=None if outcome is Outcome.NOT_FOUND else snapshot,
                         polls=7, detected_at=SAMPLE_AT)


def sample_backup(*, succeeded: bool = True) -> dict[str, Any]:
    """A `backup.succeeded` of two files, or a `backup.failed` with its reason, from the real builders."""
    if not succeeded:
        return backup_failed_event(backup=SAMPLE_BACKUP, reason=f"export {SAMPLE_EXPORT} failed at SendGrid",
                                   at=SAMPLE_AT)
    return backup_succeeded_event(
        backup=SAMPLE_BACKUP, path=f"/var/lib/import-watcher/backups/{SAMPLE_BACKUP}/20261127T100000Z", files=2,
        size=3_482_113, contact_count=48213,
        sha256="9b1f0c3a5e7d2b4c6a8e0f1d3b5c7a9e2f4d6b8c0a1e3f5d7b9c2a4e6f8d0b1c", at=SAMPLE_AT,
    )


def sample_job(job_id: str, *, added: float, outcome: Outcome | None = None, batch: str | None = None) -> JobState:
    """A job as the store keeps it; with an outcome, also its snapshot and errors summary."""
    final = outcome is not None
    return JobState(
        id=job_id,
        labels=_LABELS,
        notify=None,
        added_at=added,
        next_poll_at=SAMPLE_AT,
        polls=7,
        snapshot=_snapshot(outcome) if outcome else Snapshot(status="pending", job_type="upsert"),
        outcome=outcome,
        detected_at=SAMPLE_AT - 60 if final else None,
        batch=batch,
        errors=_errors(outcome) if outcome else None,
    )


def sample_batch_event() -> dict[str, Any]:
    """A nightly sync of 34 jobs: 31 completed, 2 with errors, 1 failed."""
    outcomes = [Outcome.COMPLETED] * 31 + [Outcome.ERRORED, Outcome.FAILED, Outcome.ERRORED]
    jobs = [
        sample_job(f"{SAMPLE_BATCH}-{i:02}", added=SAMPLE_AT - 3600 + i, outcome=o, batch=SAMPLE_BATCH)
        for i, o in enumerate(outcomes)
    ]
    tally: dict[str, int] = {}
    for o in outcomes:
        tally[o.value] = tally.get(o.value, 0) + 1
    batch = Batch(
        name=SAMPLE_BATCH,
        phase=BatchPhase.OPEN,
        jobs=len(jobs),
        final=len(jobs),
        outcomes=tally,
        started_at=SAMPLE_AT - 3600,
        quiet_since=SAMPLE_AT - 60,
    )
    return build_batch_event(batch, jobs, now=SAMPLE_AT, summary_id=summary_id(SAMPLE_BATCH, 0), public_url=SAMPLE_URL)


def sample_digest() -> dict[str, Any]:
    """A morning digest over a day with one batch, a failure, a dead delivery and an alert."""
    outcomes = [Outcome.COMPLETED] * 5 + [Outcome.ERRORED, Outcome.FAILED]
    jobs = [sample_job(f"job-{i}", added=SAMPLE_AT - 86000 + 600 * i, outcome=o) for i, o in enumerate(outcomes)]
    batch = Batch(SAMPLE_BATCH, BatchPhase.FINISHED, 34, 34, {"completed": 33, "failed": 1}, SAMPLE_AT - 3600, 0.0)
    dead = Delivery(
        id="msg_0b5f1c9e",
        notifier="team-slack",
        event={},
        created_at=SAMPLE_AT - 7200,
        next_attempt_at=SAMPLE_AT,
        deadline_at=SAMPLE_AT,
        job_id="job-6",
        last_error="HTTP 500",
    )
    alert = sample_alert("key_refused")
    return digest_event(
        name="morning",
        since=SAMPLE_AT - 86400,
        until=SAMPLE_AT,
        jobs=jobs,
        batches=[batch],
        dead=[dead],
        alerts=[alert],
    )


def _errors(outcome: Outcome | None) -> dict[str, Any] | None:
    errored = _SAMPLE_ERRORED.get(outcome, 0) if outcome else 0
    if not errored:
        return None
    reasons = [("invalid email", errored * 4 // 5), ("missing field", errored // 5)]
    return {"rows": errored, "top_reasons": [{"reason": r, "count": n} for r, n in reasons]}


def _snapshot(outcome: Outcome) -> Snapshot | None:
    if outcome is Outcome.NOT_FOUND:
        return None
    if outcome is Outcome.TIMED_OUT:
        return Snapshot(status="pending", job_type="upsert")
    errored = _SAMPLE_ERRORED.get(outcome, 0)
    ok = 1000 - errored
    results: dict[str, Any] = {
        "requested_count": 1000,
        "created_count": max(0, ok - 10),
        "updated_count": min(10, ok),
        "errored_count": errored,
    }
    if errored:
        results["errors_url"] = "https://example.com/errors/0b5f1c9e.csv?token=sample"
    return Snapshot(
        status=outcome.value,
        job_type="upsert",
        results=results,
        started_at="2026-11-27T09:52:30Z",
        finished_at="2026-11-27T09:58:45Z",
    )
