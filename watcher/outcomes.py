"""What a final outcome notifies: its event, the errors file summary, and one delivery per recipient.

The engine decides *that* a job ended (watcher.policy); this module says *whom to tell
and what*, as functions of the job, the decision and the configuration, so the same
outcome always yields the same deliveries (and delivery ids) on every replica.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watcher.events import delivery_id, outcome_event
from watcher.models import Delivery, JobState, Outcome
from watcher.policy import Finish
from watcher.routing import Route, targets


@dataclass(frozen=True, slots=True)
class ErrorsInfo:
    """What the errors file told us: the summary for every message, a sample for e-mail."""

    summary: Mapping[str, Any]
    sample_csv: str | None = None


ErrorsFetcher = Callable[[str], Awaitable[ErrorsInfo]]


@dataclass(frozen=True, slots=True)
class Recipient:
    """A configured notifier as routing and the outbox see it."""

    name: str
    delivery_deadline: float


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
) -> tuple[list[Delivery], list[str]]:
    """The deliveries of a job's final outcome (one per routed recipient), and their names."""
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
    )
    # The id depends only on the job (and when it was added), the outcome and the recipient:
    # a replica or a restart that finishes the same job again makes the same delivery.
    key = (job.id, repr(job.added_at), decision.outcome.value)
    deliveries = [make_delivery(recipients[name], event, now, job.id, *key) for name in names]
    return deliveries, list(names)


def make_delivery(recipient: Recipient, event: dict[str, Any], now: float, job_id: str | None, *key: str) -> Delivery:
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
