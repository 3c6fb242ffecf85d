"""The fake SendGrid's job model: each import job's timeline and what it reports.

A `Job` is pending until its `ready_at` (None while a CSV import waits for its
upload), then shows its scripted outcome and counts; `document` renders it as
SendGrid's ContactImport body at a given time. Also here: the defaults behind
`FakeSendGrid.script_job`, how SendGrid judges contacts and uploaded CSV files,
and the errors CSV a finished job hands out.
"""

from __future__ import annotations

import csv
import gzip
import io
import time
from dataclasses import dataclass, field
from typing import Any, Self

from watcher.clock import Clock

OUTCOMES = ("completed", "errored", "failed", "pending")
_SYNTHETIC_REASONS = ("invalid email", "invalid email", "invalid email", "email is required")
# What an uploaded file can fail with; the job then ends "failed" with the reason.
UPLOAD_ERRORS = (OSError, EOFError, UnicodeDecodeError, ValueError, csv.Error)


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
    email_column: int | None = None  # CSV imports: the column field_mappings maps to email
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
    def awaiting_upload(cls, job_id: str, now: float, email_column: int | None) -> Self:
        """A CSV import job, pending until its file is uploaded."""
        return cls(id=job_id, job_type="upsert", outcome="pending", started_at=now,
                   ready_at=None, visible_at=now, email_column=email_column)

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

    def take_upload(self, data: bytes, clock: Clock, pending_for: float) -> None:
        """Judge the uploaded CSV (gzip or plain); the job ends `pending_for` seconds later."""
        try:
            requested, rejected = read_upload(data, self.email_column)
        except UPLOAD_ERRORS as exc:
            outcome, requested, rejected = "failed", 0, [("", f"unreadable file: {exc}")]
        else:
            outcome = outcome_of(requested, len(rejected))
        self.outcome, self.requested, self.error_rows = outcome, requested, rejected
        self.errored = min(requested, len(rejected))
        self.created = requested - self.errored
        self.ready_at = clock.now() + pending_for

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


def read_upload(data: bytes, email_column: int | None) -> tuple[int, list[tuple[str, str]]]:
    """Count the CSV's data rows and reject those without an '@' in the email column."""
    if data[:2] == b"\x1f\x8b":  # gzip sent without Content-Encoding
        data = gzip.decompress(data)
    rows = [row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if any(row)]
    if not rows:
        raise ValueError("empty file")
    header = [cell.strip().lower() for cell in rows[0]]
    if email_column is not None:
        column = email_column
    else:
        column = header.index("email") if "email" in header else 0
    rejected = []
    for row in rows[1:]:
        email = row[column].strip() if column < len(row) else ""
        if "@" not in email:
            rejected.append((email, "invalid email" if email else "email is required"))
    return len(rows) - 1, rejected
