"""The fake SendGrid's job model: each import job's timeline and what it reports.

A `Job` is pending until its `ready_at` (None while a CSV import waits for its
upload), then shows its scripted outcome and counts; `document` renders it as
SendGrid's ContactImport body at a given time. Also here: the defaults behind
`FakeSendGrid.script_job`, how SendGrid judges a JSON contact, and the errors
CSV a finished job hands out. Uploaded files are judged in `fake_imports`.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import Any, Self

OUTCOMES = ("completed", "errored", "failed", "pending")
_SYNTHETIC_REASONS = ("invalid email", "invalid email", "invalid email", "email is required")


def iso(epoch: float) -> str:
    """ISO 8601 UTC, second precision, as SendGrid writes timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(slots=True)
class Job:
    """One scripted job; `ready_at` None means waiting for its CSV upload."""

    id: str
    job_type: str
    outcome: str
    started_at: float
    ready_at: float | None
    visible_at: float
    requested: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    errored: int = 0
    error_rows: list[tuple[str, str]] | None = None
    status_override: str | None = None
    started_iso: str = field(init=False)

    def __post_init__(self) -> None:
        self.started_iso = iso(self.started_at)

    @classmethod
    def scripted(cls, job_id: str, now: float, *, outcome: str = "completed",
                 pending_for: float = 0.0, job_type: str = "upsert", requested: int = 10,
                 created: int | None = None, updated: int = 0, deleted: int = 0,
                 errored: int | None = None, error_rows: list[tuple[str, str]] | None = None,
                 visible_after: float = 0.0, status_override: str | None = None) -> Self:
        """A job started at `now`: pending for `pending_for` seconds, then `outcome`."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        if errored is None:
            errored = {"completed": 0, "pending": 0, "failed": requested}.get(outcome)
        if errored is None:  # "errored": the scripted rows, else about a tenth
            errored = len(error_rows) if error_rows else min(requested, max(1, requested // 10))
        if created is None:
            created = max(0, requested - updated - deleted - errored)
        rows = [(str(email), str(reason)) for email, reason in error_rows] if error_rows else None
        return cls(
            id=job_id, job_type=job_type, outcome=outcome, started_at=now,
            ready_at=now + pending_for, visible_at=now + visible_after, requested=requested,
            created=created, updated=updated, deleted=deleted, errored=errored,
            error_rows=rows, status_override=status_override)

    @classmethod
    def awaiting_upload(cls, job_id: str, now: float) -> Self:
        """A CSV import job, pending until its file is uploaded."""
        return cls(id=job_id, job_type="upsert", outcome="pending", started_at=now,
                   ready_at=None, visible_at=now)

    def document(self, now: float, link_base: str) -> dict[str, Any]:
        """The ContactImport body as seen at `now`."""
        due = self.ready_at is not None and now >= self.ready_at
        status = (self.status_override or self.outcome) if due else "pending"
        final = due and self.outcome != "pending"
        results: dict[str, Any] = {
            "requested_count": self.requested,
            "created_count": self.created if final else 0,
            "updated_count": self.updated if final else 0,
            "deleted_count": self.deleted if final else 0,
            "errored_count": self.errored if final else 0,
        }
        body: dict[str, Any] = {"id": self.id, "status": status, "job_type": self.job_type,
                                "results": results, "started_at": self.started_iso}
        if final and self.ready_at is not None:
            body["finished_at"] = iso(self.ready_at)
            if self.outcome in ("errored", "failed"):
                results["errors_url"] = f"{link_base}/_errors/{self.id}.csv"
        return body

    def finish(self, ready_at: float, outcome: str, *, requested: int, created: int, updated: int,
               errored: int, error_rows: list[tuple[str, str]]) -> None:
        """End an uploaded import at `ready_at` with these counts (an upload's verdict)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        self.outcome, self.ready_at, self.requested = outcome, ready_at, requested
        self.created, self.updated, self.errored, self.error_rows = created, updated, errored, error_rows

    def rejected_rows(self) -> list[tuple[str, str]]:
        """The rows of the errors CSV: scripted ones, or one made-up row per errored row."""
        if self.error_rows is not None:
            return self.error_rows
        reasons = _SYNTHETIC_REASONS
        return [(f"row{i}.example.com", reasons[i % len(reasons)]) for i in range(self.errored)]

    def errors_csv(self) -> str:
        """The errors CSV: an email,error header, then the rejected rows."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(("email", "error"))
        writer.writerows(self.rejected_rows())
        return out.getvalue()


def outcome_of(requested: int, errored: int) -> str:
    """SendGrid's status for a finished job with these counts."""
    if errored == 0:
        return "completed"
    return "failed" if errored >= requested else "errored"


def contact_problem(contact: object) -> tuple[str, str] | None:
    """(email, reason) when SendGrid would reject this contact, else None."""
    if not isinstance(contact, dict):
        return ("", "contact must be an object")
    email = contact.get("email")
    if email is None:
        others = ("phone_number_id", "external_id", "anonymous_id")
        return None if any(contact.get(k) for k in others) else ("", "email is required")
    if not isinstance(email, str) or "@" not in email:
        return (str(email), "invalid email")
    return None
