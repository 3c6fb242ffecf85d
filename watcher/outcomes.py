"""What a final outcome notifies: its event, the errors file summary, and one delivery per recipient;
the stuck warning of a job pending too long; and the API key alert, sent once when SendGrid
refuses the key and once when it works again.

The engine decides *that* a job ended (watcher.policy); this module says *whom to tell
and what*, as functions of the job, the decision and the configuration, so the same
outcome always yields the same deliveries (and delivery ids) on every replica.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from watcher import batches
from watcher.clock import Clock
from watcher.errors import KeyRefused
from watcher.events import alert_event, delivery_id, outcome_event
from watcher.models import Delivery, JobState, Outcome
from watcher.policy import Finish
from watcher.routing import Route, targets
from watcher.yamlloc import Path_, Problems

log = structlog.get_logger("watcher.engine")

KEY_STATE = "sendgrid.key_state"


@dataclass(frozen=True, slots=True)
class ErrorsInfo:
    """What the errors file told us: the summary for every message, a sample for e-mail."""

    summary: Mapping[str, Any]
    sample_csv: str | None = None


ErrorsFetcher = Callable[[str], Awaitable[ErrorsInfo]]


@dataclass(frozen=True, slots=True)
class BatchChoice:
    """What a notifier gets for jobs in a batch (`batches:` on a notifier)."""

    per_job: bool = True  # each job's own outcome event, as for unbatched jobs
    summary: bool = True  # the batch's contact_import.batch_finished
    early: frozenset[str] = frozenset({Outcome.FAILED.value})  # sent per job even without per_job


#: Notifier types that get every event by default: machines, not people reading a channel.
EVERY_EVENT_TYPES = frozenset({"webhook", "console"})


def default_batch_choice(kind: str) -> BatchChoice:
    """A chat channel or inbox gets one message per batch (and failures at once); a webhook everything."""
    return BatchChoice(per_job=kind in EVERY_EVENT_TYPES)


def parse_batch_choice(raw: Any, path: Path_, problems: Problems, kind: str) -> BatchChoice:
    """Validate a notifier's `batches:` mapping; unset keys take the type's defaults."""
    default = default_batch_choice(kind)
    if raw is None:
        return default
    if not isinstance(raw, dict):
        problems.add(path, "expected a mapping with per_job, summary, early")
        return default
    for key in raw:
        if key not in {"per_job", "summary", "early"}:
            problems.add((*path, key), "unknown key (expected early, per_job, summary)")
    flags = {}
    for key in ("per_job", "summary"):
        value = raw.get(key, getattr(default, key))
        if not isinstance(value, bool):
            problems.add((*path, key), f"expected true or false, got {value!r}")
            value = getattr(default, key)
        flags[key] = value
    early = raw.get("early", sorted(default.early))
    items = [early] if isinstance(early, str) else early
    known = {o.value for o in Outcome}
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        problems.add((*path, "early"), "expected a list of outcomes")
        items = sorted(default.early)
    for item in items:
        if item not in known:
            problems.add((*path, "early"), f"unknown outcome {item!r} (expected {', '.join(sorted(known))})")
    return BatchChoice(flags["per_job"], flags["summary"], frozenset(i for i in items if i in known))


@dataclass(frozen=True, slots=True)
class Recipient:
    """A configured notifier as routing and the outbox see it."""

    name: str
    delivery_deadline: float
    batches: BatchChoice = field(default_factory=BatchChoice)

    def gets_job_event(self, job: JobState, outcome: str) -> bool:
        """A batched job's own outcome goes only to who asked for every job, or for this outcome early."""
        return job.batch is None or self.batches.per_job or outcome in self.batches.early


async def errors_info(decision: Finish, fetcher: ErrorsFetcher | None) -> ErrorsInfo | None:
    """The errors file's summary for an errored or failed job; why not, when it cannot be had.

    A failed download never holds the notification back: the summary then says `unavailable`.
    """
    if decision.outcome not in (Outcome.ERRORED, Outcome.FAILED):
        return None
    results = decision.snapshot.results if decision.snapshot else {}
    url = results.get("errors_url")
    if not isinstance(url, str) or not url:
        return ErrorsInfo({"unavailable": "SendGrid gave no errors_url"})
    if fetcher is None:
        return ErrorsInfo({"unavailable": "errors file download is disabled"})
    try:
        return await fetcher(url)
    except Exception as exc:
        return ErrorsInfo({"unavailable": f"{type(exc).__name__}"})


def outcome_deliveries(
    job: JobState,
    decision: Finish,
    now: float,
    *,
    routes: Sequence[Route],
    recipients: Mapping[str, Recipient],
    errors: ErrorsInfo | None,
    default_account: str | None = None,
) -> tuple[list[Delivery], list[str]]:
    """The deliveries of a job's final outcome (one per routed recipient), and their names.

    For a job in a batch, a recipient gets its own event only when its `batches.per_job` is on
    or the outcome is one of its `batches.early`; the others hear of it in the batch summary.
    Routes see the job's kind and account (`default_account` for a job that names none).
    """
    event = outcome_event(
        job,
        outcome=decision.outcome,
        snapshot=decision.snapshot,
        polls=decision.polls,
        detected_at=now,
        errors=errors.summary if errors else None,
    )
    if errors and errors.sample_csv:
        event["errors_sample_csv"] = errors.sample_csv
    names = targets(
        routes,
        recipients,
        outcome=decision.outcome.value,
        labels=job.labels,
        job_type=decision.snapshot.job_type if decision.snapshot else None,
        override=job.notify,
        kind=job.kind.value,
        account=job.account or default_account,
    )
    names = tuple(n for n in names if recipients[n].gets_job_event(job, decision.outcome.value))
    # The id depends only on the job (and when it was added), the outcome and the recipient:
    # a replica or a restart that finishes the same job again makes the same delivery.
    key = (job.id, repr(job.added_at), decision.outcome.value)
    deliveries = [make_delivery(recipients[name], event, now, job.id, *key) for name in names]
    return deliveries, list(names)


class Addressee(Protocol):
    """Whom a delivery goes to: a Recipient, or anything with its name and delivery deadline."""

    @property
    def name(self) -> str: ...

    @property
    def delivery_deadline(self) -> float: ...


def make_delivery(recipient: Addressee, event: dict[str, Any], now: float, job_id: str | None, *key: str) -> Delivery:
    """A delivery of `event` to `recipient`, due now; its id is derived from `key` and the name."""
    return Delivery(
        id=delivery_id(*key, recipient.name),
        notifier=recipient.name,
        event=event,
        created_at=now,
        next_attempt_at=now,
        deadline_at=now + recipient.delivery_deadline,
        job_id=job_id,
    )


#: Stuck jobs of one batch whose warning times fall in one such window share one message.
STUCK_WINDOW = 60.0


def is_stuck(job: JobState, now: float, warn_after: float | None) -> bool:
    """Still pending `warn_after` after it was added and not warned about yet."""
    return warn_after is not None and job.outcome is None and job.stuck_at is None and now - job.added_at >= warn_after


def stuck_deliveries(
    job: JobState,
    now: float,
    *,
    warn_after: float,
    mates: Sequence[JobState],
    routes: Sequence[Route],
    recipients: Mapping[str, Recipient],
    default_account: str | None = None,
) -> list[Delivery]:
    """The `contact_import.stuck` deliveries for `job` (as just polled), routed like outcomes with
    status "pending"; `batches.per_job` does not hold warnings back.

    A batched job shares one message with its batch mates (`mates`, its batch's jobs) whose
    warning time (added_at + warn_after) falls in the same STUCK_WINDOW: the delivery id comes
    from (batch, window, notifier), so the mate that comes next writes the same id, which the
    store skips. Keying the window on the warning time, not the poll time, means a mate polled
    minutes later still finds its message. Imperfections left: a mate is listed up to a window
    before its own warning time (and stays listed if it finishes in between), and mates whose
    warning times straddle a window edge get one message per window.
    """
    if job.batch is None:
        event = batches.stuck_event(job, now=now)
        names = _route_pending(routes, recipients, job.labels, job, job.notify, default_account)
        return [make_delivery(recipients[n], event, now, job.id, job.id, repr(job.added_at), "stuck") for n in names]
    window = math.floor((job.added_at + warn_after) / STUCK_WINDOW)
    listed = [job] + [
        mate for mate in mates
        if mate.id != job.id and mate.outcome is None and mate.stuck_at is None
        and math.floor((mate.added_at + warn_after) / STUCK_WINDOW) == window
    ]
    event = batches.stuck_batch_event(job.batch, listed, now=now)
    # A batch's message has no job's `notify` list to honour (its jobs may differ): routes decide.
    names = _route_pending(routes, recipients, event["data"]["labels"], job, None, default_account)
    return [make_delivery(recipients[n], event, now, None, "stuck", job.batch, str(window)) for n in names]


def _route_pending(
    routes: Sequence[Route],
    recipients: Mapping[str, Recipient],
    labels: Mapping[str, str],
    job: JobState,
    override: Sequence[str] | None,
    default_account: str | None,
) -> tuple[str, ...]:
    job_type = job.snapshot.job_type if job.snapshot else None
    return targets(routes, recipients, outcome="pending", labels=labels, job_type=job_type, override=override,
                   kind=job.kind.value, account=job.account or default_account)  # fmt: skip


class _StuckStore(Protocol):
    async def batch_jobs(self, name: str) -> list[JobState]: ...

    async def mark_stuck(self, job_id: str, *, token: str, now: float, deliveries: Sequence[Delivery]) -> bool: ...


class StuckWarnings:
    """Writes each stuck job's one warning (`mark_stuck`), its batch mates read once per window.

    Only the first warning of a batch's window is written (the others carry the same delivery
    ids), so its mates are read once per window and replica, not once per stuck job: a batch
    of 10,000 jobs crossing warn_after together costs one read of it, not 10,000.
    """

    def __init__(
        self, store: _StuckStore, *, warn_after: float | None, routes: Sequence[Route],
        recipients: Mapping[str, Recipient], default_account: str | None = None,
    ) -> None:
        self.store = store
        self.warn_after = warn_after
        self.routes = routes
        self.recipients = recipients
        self.default_account = default_account
        self._mates: dict[tuple[str, int], list[JobState]] = {}

    async def warn(self, job: JobState, token: str, now: float) -> list[str] | None:
        """Mark `job` (as just polled, still held by `token`) stuck with its warning; the notifier
        names, or None when it was not written (not due, already marked, or the lease is gone)."""
        if self.warn_after is None or not is_stuck(job, now, self.warn_after):
            return None
        mates = await self._batch_mates(job.batch, job.added_at + self.warn_after) if job.batch else []
        deliveries = stuck_deliveries(
            job, now, warn_after=self.warn_after, mates=mates, routes=self.routes, recipients=self.recipients,
            default_account=self.default_account,
        )
        if not await self.store.mark_stuck(job.id, token=token, now=now, deliveries=deliveries):
            return None
        return [d.notifier for d in deliveries]

    async def _batch_mates(self, batch: str, warn_at: float) -> list[JobState]:
        key = (batch, math.floor(warn_at / STUCK_WINDOW))
        if key not in self._mates:
            if len(self._mates) >= 64:
                self._mates.clear()  # windows pass; a bound, not an LRU, is enough
            self._mates[key] = await self.store.batch_jobs(batch)
        return self._mates[key]


class _MetaStore(Protocol):
    async def get_meta(self, key: str) -> str | None: ...

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool: ...


class KeyAlerts:
    """The key state shared by every replica (meta KEY_STATE = "<ok|refused>:<since>"; a named
    account's own under "KEY_STATE:<account>"); each change is written with its alerts in one
    transaction, so exactly one replica sends each alert."""

    def __init__(
        self, store: _MetaStore, recipients: Mapping[str, Recipient], clock: Clock, on_alerts: Callable[[], None],
        *, account: str | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.recipients = recipients
        self.clock = clock
        self.on_alerts = on_alerts
        self.account = account
        self.meta_key = KEY_STATE if account is None else f"{KEY_STATE}:{account}"
        self.state: str | None = None  # what this process last saw; None until it knows
        self._lock = asyncio.Lock()  # many runners see the same answer at once

    def _whose(self) -> str:
        return "the API key" if self.account is None else f"the API key of account {self.account!r}"

    async def refused(self, exc: KeyRefused) -> None:
        await self._move("refused", f"SendGrid refused {self._whose()} (HTTP {exc.status}): {exc.message}")

    async def unknown_account(self) -> None:
        """A job names an account this watcher is not configured with: told once, like a refused key."""
        message = f"jobs name account {self.account!r}, which is not configured: they wait until their deadline"
        await self._move("refused", message, "unknown_account")

    async def works(self) -> None:
        """An answer came: the key works (a no-op once known, as every poll answers)."""
        if self.state != "ok":
            await self._move("ok", f"SendGrid accepts {self._whose()} again")

    async def _move(self, new: str, message: str, alert: str | None = None) -> None:
        async with self._lock:
            if self.state == new:
                return
            for _ in range(3):  # another replica may move the state between our read and write
                if await self._try(new, message, alert):
                    self.state = new
                    return

    async def _try(self, new: str, message: str, alert: str | None) -> bool:
        """Move the key state to `new` with its alerts in one transaction; False when it moved under us."""
        previous = await self.store.get_meta(self.meta_key)
        previous_state = previous.split(":", 1)[0] if previous else None
        now = self.clock.now()
        if previous_state == new or (previous_state is None and new == "ok"):
            # Nothing to tell: already so, or the first answer of a working key.
            return previous is not None or await self.store.transition_meta(
                self.meta_key, expected=None, value=f"{new}:{now}"
            )
        kind = alert or ("key_refused" if new == "refused" else "key_accepted")
        details = {} if self.account is None else {"account": self.account}
        event = alert_event(kind, message, at=now, **details)
        # Replicas racing on the same transition read the same `previous`, so they build
        # the same delivery ids; only one transition is written.
        key = (kind, previous or "initial") if self.account is None else (kind, self.account, previous or "initial")
        alerts = [make_delivery(recipient, event, now, None, *key) for recipient in self.recipients.values()]
        written = await self.store.transition_meta(
            self.meta_key, expected=previous, value=f"{new}:{now}", deliveries=alerts
        )
        if not written:
            return False
        log.warning("watcher.alert", alert=kind, message=message, **details)
        if alerts:
            self.on_alerts()
        return True
