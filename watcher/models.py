"""Plain frozen data shared by every part of the watcher."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from watcher.errors import InvalidJobId

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
BATCH_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
ACCOUNT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_job_id(job_id: object) -> str:
    """Return the id unchanged, or raise InvalidJobId before it can reach a URL."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidJobId(job_id)
    return job_id


def validate_batch_name(name: object) -> str:
    """Return the batch name unchanged, or raise ValueError (1 to 128 of A-Z a-z 0-9 - _ . :)."""
    if not isinstance(name, str) or not BATCH_NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ValueError(f"invalid batch name {shown}: expected 1 to 128 characters of A-Z a-z 0-9 - _ . :")
    return name


def validate_account_name(name: object) -> str:
    """Return the account name unchanged, or raise ValueError (1 to 64 of A-Z a-z 0-9 - _ .)."""
    if not isinstance(name, str) or not ACCOUNT_NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise ValueError(f"invalid account name {shown}: expected 1 to 64 characters of A-Z a-z 0-9 - _ .")
    return name


class JobKind(StrEnum):
    """What a watched job is: a contact import (also upserts and deletes) or a contact export."""

    IMPORT = "import"
    EXPORT = "export"


_KINDS = frozenset(kind.value for kind in JobKind)


def parse_kind(value: object) -> JobKind:
    """A job kind as given ("import" or "export"); ValueError otherwise."""
    if isinstance(value, str) and value in _KINDS:
        return JobKind(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ValueError(f"invalid kind {shown}: expected import or export")


class Outcome(StrEnum):
    """How a watched job ended (ready and failure end exports; timed_out and not_found either kind)."""

    COMPLETED = "completed"
    ERRORED = "errored"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    NOT_FOUND = "not_found"
    READY = "ready"
    FAILURE = "failure"


#: SendGrid import statuses that end a job, mapped to our outcome.
TERMINAL_STATUSES: Mapping[str, Outcome] = {
    "completed": Outcome.COMPLETED,
    "errored": Outcome.ERRORED,
    "failed": Outcome.FAILED,
}

#: SendGrid export statuses that end a job (the spec's Status enum: pending, ready, failure).
EXPORT_TERMINAL_STATUSES: Mapping[str, Outcome] = {
    "ready": Outcome.READY,
    "failure": Outcome.FAILURE,
}


def terminal_statuses(kind: JobKind) -> Mapping[str, Outcome]:
    """The statuses that end a job of this kind: an import never ends "ready", an export never "completed"."""
    return EXPORT_TERMINAL_STATUSES if kind is JobKind.EXPORT else TERMINAL_STATUSES

WATCHING = "watching"


class DeliveryState(StrEnum):
    """Where one notification to one notifier stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class JobRef:
    """A request to watch a job: what a source, the CLI or the API hands in."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    notify: tuple[str, ...] | None = None  # overrides routes when set
    batch: str | None = None  # the batch it belongs to (one summary for all its jobs)
    kind: JobKind = JobKind.IMPORT
    account: str | None = None  # the SendGrid account it lives in; None: the default one

    def __post_init__(self) -> None:
        validate_job_id(self.id)
        if self.batch is not None:
            validate_batch_name(self.batch)
        object.__setattr__(self, "kind", parse_kind(self.kind))
        if self.account is not None:
            validate_account_name(self.account)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What SendGrid said about an import or an export at one poll; every field optional.

    For an export: `job_type` is its export_type, `results` holds contact_count, urls, expires_at
    and message (what the answer carried), `started_at` its created_at, `finished_at` its
    completed_at (else updated_at) once it is ready or failed.
    """

    status: str | None = None
    job_type: str | None = None
    results: Mapping[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def normalized_status(self) -> str | None:
        return self.status.strip().lower() if isinstance(self.status, str) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "job_type": self.job_type,
            "results": dict(self.results),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls(
            status=data.get("status"),
            job_type=data.get("job_type"),
            results=dict(data.get("results") or {}),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim on a job or delivery: the token that fences every write, and when it ends.

    Invariant: a store accepts a write (record, renew) only from the current token holder
    while `until` is still ahead of the store's clock; a release needs the token only.
    `until` is in the store's clock (SQLite and memory: the caller's; Redis: the server's TIME).
    """

    token: str
    until: float


class TombstoneReason(StrEnum):
    """Why a job id is remembered after its job is gone."""

    STOPPED = "stopped"  # DELETE /jobs/{id}
    FINISHED = "finished"  # purged by state.retention after its outcome


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A job id that sources must not bring back: when it was buried and why."""

    id: str
    at: float
    reason: TombstoneReason


@dataclass(frozen=True, slots=True)
class JobState:
    """A tracked job as the store keeps it."""

    id: str
    labels: Mapping[str, str]
    notify: tuple[str, ...] | None
    added_at: float
    next_poll_at: float
    polls: int = 0
    transient_errors: int = 0  # consecutive; reset by any real answer
    snapshot: Snapshot | None = None
    outcome: Outcome | None = None
    detected_at: float | None = None
    lease: Lease | None = None  # set on the copies a claim hands out
    batch: str | None = None
    errors: Mapping[str, Any] | None = None  # the errors-file summary stored with the outcome
    stuck_at: float | None = None  # when its one stuck warning was written
    kind: JobKind = JobKind.IMPORT  # fixed when the watch starts: an `add` of a known id never changes it
    account: str | None = None  # None: the default account

    @property
    def state(self) -> str:
        return self.outcome.value if self.outcome else WATCHING

    @property
    def ref(self) -> JobRef:
        return JobRef(self.id, self.labels, self.notify, self.batch, self.kind, self.account)

    def polled(self, next_poll_at: float, polls: int) -> JobState:
        """`replace(self, next_poll_at=..., polls=...)` at a third of its cost: a held job is copied
        once per poll, and `dataclasses.replace` was 4 % of a poll's CPU (every field, by name)."""
        return JobState(
            self.id, self.labels, self.notify, self.added_at, next_poll_at, polls, self.transient_errors,
            self.snapshot, self.outcome, self.detected_at, self.lease, self.batch, self.errors, self.stuck_at,
            self.kind, self.account,
        )  # fmt: skip


class BatchPhase(StrEnum):
    """Where a batch stands: open while a job runs or joined lately, finished once summarised."""

    OPEN = "open"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Batch:
    """A named group of jobs summarised once, when all are final and none joined for `batches.settle`.

    Invariant: `jobs`, `final`, `outcomes` and `quiet_since` change only in the transaction that
    adds a job to the batch or records a job's outcome; `phase` becomes FINISHED only in the
    transaction that writes its summary's deliveries, and a job joining reopens it.
    """

    name: str
    phase: BatchPhase
    jobs: int
    final: int
    outcomes: Mapping[str, int]
    started_at: float  # when its first job was added
    quiet_since: float  # the last join or outcome: settled once all are final and this is `settle` old
    finished_at: float | None = None  # when its latest summary was written
    summaries: int = 0  # summaries written so far; the next one continues the last
    last_summary_id: str | None = None
    lease: Lease | None = None  # set on the copies a claim hands out

    @property
    def all_final(self) -> bool:
        return self.final >= self.jobs


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification to one notifier, kept in the outbox until delivered or dead.

    `id` is the idempotency key (Standard Webhooks `webhook-id`): fixed when the
    delivery is created and reused by every retry, also across restarts.
    `event` is the complete, already-rendered event body, so retries never change content.
    """

    id: str
    notifier: str
    event: Mapping[str, Any]
    created_at: float
    next_attempt_at: float
    deadline_at: float
    job_id: str | None = None  # None for watcher.alert events
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    last_error: str | None = None
    lease: Lease | None = None  # set on the copies a claim hands out

    @property
    def event_type(self) -> str:
        return str(self.event.get("type", ""))


@dataclass(frozen=True, slots=True)
class PollUpdate:
    """What the engine writes back after a poll that did not end the job."""

    next_poll_at: float
    polls: int
    transient_errors: int
    snapshot: Snapshot | None


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Totals for status output, metrics and --until-idle."""

    jobs_by_state: Mapping[str, int]
    deliveries_by_state: Mapping[str, int]

    @property
    def watching(self) -> int:
        return self.jobs_by_state.get(WATCHING, 0)

    @property
    def pending_deliveries(self) -> int:
        return self.deliveries_by_state.get(DeliveryState.PENDING.value, 0)
