"""The JobSource protocol and the one way any source hands a job to the watcher."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Protocol

import structlog

from watcher.clock import Clock
from watcher.config_accounts import check_account
from watcher.errors import InvalidJobId
from watcher.learned import LearnedSchedules
from watcher.models import JobKind, JobRef, parse_kind, validate_account_name, validate_batch_name
from watcher.policy import PollPolicy, first_poll_at
from watcher.store.base import AddsJobs, StateStore

log = structlog.get_logger("watcher.sources")

JOB_KEYS = ("id", "labels", "notify", "batch", "kind", "account")


class JobSource(Protocol):
    """Feeds job refs into the store; `started` backs /readyz."""

    name: str
    started: bool

    async def start(self) -> None: ...

    async def refresh(self) -> None:
        """Look for new jobs now (periodic, and on SIGHUP)."""

    async def close(self) -> None: ...


class Intake:
    """Validates and stores new jobs; shared by every source, the CLI and the API."""

    def __init__(
        self, store: StateStore, policy: PollPolicy, clock: Clock, notifiers: Sequence[str],
        accounts: Sequence[str] | None = None, learned: LearnedSchedules | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.policy = policy
        self.clock = clock
        self.notifiers = tuple(notifiers)
        self.accounts = None if accounts is None else tuple(accounts)  # None: not known here, not checked
        self.learned = learned  # when known, the first poll waits about as long as such jobs take
        self.on_added: list[Any] = []
        self._tombstones_logged: set[str] = set()

    async def add(self, ref: JobRef, again: bool = False) -> bool:
        """Store a job; True when a new watch starts, False when known or tombstoned (a no-op).

        `again` starts a new watch on a stopped or finished job (the store lifts its tombstone).
        """
        (added,) = await self.add_many([ref], again=again)
        return added

    async def add_many(self, refs: Sequence[JobRef], again: bool = False) -> list[bool]:
        """Store several jobs at once (one transaction where the store can); True for each new one."""
        now = self.clock.now()
        wait = self.learned.first_wait({ref.account for ref in refs}, self.policy) if self.learned else None
        first = first_poll_at(self.policy, now, wait)
        if isinstance(self.store, AddsJobs):
            added = await self.store.add_jobs(refs, now=now, first_poll_at=first, again=again)
        else:
            added = [await self.store.add_job(ref, now=now, first_poll_at=first, again=again) for ref in refs]
        if any(added):
            for callback in self.on_added:
                callback()
        return added

    async def add_from_source(self, refs: Sequence[JobRef], *, source: str) -> list[bool]:
        """`add_many` for a source, which never brings a stopped or purged job back: each
        tombstoned id is logged once per process, the first time a source lists it."""
        added = await self.add_many(refs)
        skipped = [ref.id for ref, new in zip(refs, added, strict=True) if not new]
        unseen = [job_id for job_id in skipped if job_id not in self._tombstones_logged]
        if unseen:
            for job_id, tomb in (await self.store.tombstones(unseen)).items():
                self._tombstones_logged.add(job_id)
                log.info("source.job_tombstoned", source=source, job_id=job_id, reason=tomb.reason.value)
        return added

    def check_notify(self, notify: Sequence[str] | None) -> None:
        """Raise ValueError naming any notifier that is not configured (for the API and the CLI:
        a source stores such a job anyway, since a replica with a newer config may know it)."""
        unknown = [n for n in notify or () if n not in self.notifiers]
        if unknown:
            configured = ", ".join(self.notifiers) or "none"
            raise ValueError(f"unknown notifier {', '.join(map(repr, unknown))} (configured: {configured})")


    def check_account(self, account: str | None) -> None:
        """Raise ValueError for an account that is not configured (for the API and the CLI, like
        check_notify: a source stores it anyway, and the engine waits for a replica that knows it)."""
        if self.accounts is not None:
            check_account(account, self.accounts)


def same_job(ref: JobRef, kind: JobKind, account: str | None) -> bool:
    """Whether a known job is the one `ref` names: an id is one job, of one kind in one account."""
    return (ref.kind, ref.account) == (kind, account)


class InvalidBatch(ValueError):
    """A `batch` that is not a batch name: its message says so, without the job's place."""


def parse_job(raw: Any, *, batch: str | None = None) -> JobRef:
    """A job as the job file or a queue message gives it: a bare id or {id, labels, notify, batch,
    kind, account}; `batch` is the default (a job file's top-level `batch:`), which the job's own
    `batch` overrides. `kind` is "import" (the default) or "export"; `account` an account name
    (absent or null: the default account)."""
    ref, _ = _parse(raw, JOB_KEYS, batch)
    return ref


def parse_job_request(raw: Any) -> tuple[JobRef, bool]:
    """A job as `POST /jobs` gives it: parse_job's forms plus `again` (a boolean), returned apart."""
    return _parse(raw, (*JOB_KEYS, "again"), None)


def parse_batch(value: Any) -> str:
    """A batch name as given (1 to 128 of A-Z a-z 0-9 - _ . :); InvalidBatch otherwise."""
    if isinstance(value, int | float | date) and not isinstance(value, bool):
        # YAML reads `batch: 2026-11-27` as a date and `batch: 42` as a number: say how to keep it.
        if isinstance(value, int) and abs(value) >= 10**40:  # str() of a huge int is slow, or refused
            raise InvalidBatch("a batch name must be a string, got a number: quote it")
        raise InvalidBatch(f"a batch name must be a string, got {value}: quote it, e.g. '{value}'")
    try:
        return validate_batch_name(value)
    except ValueError as exc:
        raise InvalidBatch(str(exc)) from None


def _parse(raw: Any, keys: tuple[str, ...], default_batch: str | None) -> tuple[JobRef, bool]:
    if isinstance(raw, str):
        return _ref(raw, {}, None, default_batch), False
    _refuse_number(raw)
    if not isinstance(raw, Mapping):
        raise ValueError("expected a job id or a mapping with `id`")
    unknown = set(raw) - set(keys)
    if unknown:
        raise ValueError(f"unknown key {sorted(map(str, unknown))[0]!r} (expected {', '.join(keys)})")
    if "id" not in raw:
        raise ValueError("missing `id`")
    _refuse_number(raw["id"])
    again = raw.get("again", False)
    if not isinstance(again, bool):
        raise ValueError("`again` must be true or false")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and _is_label_value(v) for k, v in labels.items()
    ):
        raise ValueError("`labels` must be a mapping of strings or finite numbers")
    text_labels = {k: str(v) for k, v in labels.items()}
    check_labels(text_labels)
    notify = raw.get("notify")
    if notify is not None:
        if isinstance(notify, str):
            notify = [notify]
        if not isinstance(notify, list) or not all(isinstance(n, str) and n and _is_text(n) for n in notify):
            raise ValueError("`notify` must be a list of notifier names")
    # null, like absent, leaves the job in the default batch (none outside a job file).
    batch = default_batch if raw.get("batch") is None else parse_batch(raw["batch"])
    kind = JobKind.IMPORT if raw.get("kind") is None else parse_kind(raw["kind"])
    account = None if raw.get("account") is None else validate_account_name(raw["account"])
    notified = tuple(notify) if notify is not None else None
    return _ref(raw["id"], text_labels, notified, batch, kind, account), again


def _ref(
    job_id: Any, labels: dict[str, str], notify: tuple[str, ...] | None, batch: str | None,
    kind: JobKind = JobKind.IMPORT, account: str | None = None,
) -> JobRef:  # fmt: skip
    try:
        return JobRef(job_id, labels, notify, batch, kind, account)
    except InvalidJobId as exc:
        raise ValueError(str(exc)) from None


def _refuse_number(value: Any) -> None:
    """YAML reads `- 12345` as a number (and `- 0123` as 83): say how to keep the id as written."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"a job id must be a string, got the number {value!r}: quote it, e.g. '12345'")


def _is_label_value(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)  # NaN and Infinity are no label, and no valid JSON either
    return isinstance(value, str | int)


def _is_text(text: str) -> bool:
    """True when `text` encodes as UTF-8: no lone surrogates (a JSON `\\ud800`, a non-UTF-8 argv byte)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Bounds on a job's labels: every notification carries them, and PagerDuty refuses an event over
#: 512 KB (a dead delivery), Slack and Teams cut long messages; 64 labels of the longest fit in 70 KB.
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 64, 100, 1000


def check_labels(labels: Mapping[str, str]) -> None:
    """Raise ValueError for labels that are not valid Unicode text or pass MAX_LABELS, MAX_LABEL_KEY
    or MAX_LABEL_VALUE (characters)."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels per job, got {len(labels)}")
    for key, value in labels.items():
        if not (_is_text(key) and _is_text(value)):
            raise ValueError("labels must be valid Unicode text (a lone surrogate is not)")
        if not 0 < len(key) <= MAX_LABEL_KEY:
            raise ValueError(f"a label name must be 1 to {MAX_LABEL_KEY} characters, got {len(key)}")
        if len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key!r}: a value must be at most {MAX_LABEL_VALUE} characters, got {len(value)}")
