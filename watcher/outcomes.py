"""What a final outcome notifies: its event, the errors file summary, and one delivery per recipient;
and the API key alert, sent once when SendGrid refuses the key and once when it works again.

The engine decides *that* a job ended (watcher.policy); this module says *whom to tell
and what*, as functions of the job, the decision and the configuration, so the same
outcome always yields the same deliveries (and delivery ids) on every replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from watcher.clock import Clock
from watcher.errors import KeyRefused
from watcher.events import alert_event, delivery_id, outcome_event
from watcher.models import Delivery, JobState, Outcome
from watcher.policy import Finish
from watcher.routing import Route, targets

log = structlog.get_logger("watcher.engine")

KEY_STATE = "sendgrid.key_state"


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


class _MetaStore(Protocol):
    async def get_meta(self, key: str) -> str | None: ...

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool: ...


class KeyAlerts:
    """The key state shared by every replica (meta KEY_STATE = "<ok|refused>:<since>"); each change
    is written with its alerts in one transaction, so exactly one replica sends each alert."""

    def __init__(
        self, store: _MetaStore, recipients: Mapping[str, Recipient], clock: Clock, on_alerts: Callable[[], None]
    ) -> None:
        self.store = store
        self.recipients = recipients
        self.clock = clock
        self.on_alerts = on_alerts
        self.state: str | None = None  # what this process last saw; None until it knows
        self._lock = asyncio.Lock()  # many runners see the same answer at once

    async def refused(self, exc: KeyRefused) -> None:
        await self._move("refused", f"SendGrid refused the API key (HTTP {exc.status}): {exc.message}")

    async def works(self) -> None:
        """An answer came: the key works (a no-op once known, as every poll answers)."""
        if self.state != "ok":
            await self._move("ok", "SendGrid accepts the API key again")

    async def _move(self, new: str, message: str) -> None:
        async with self._lock:
            if self.state == new:
                return
            for _ in range(3):  # another replica may move the state between our read and write
                if await self._try(new, message):
                    self.state = new
                    return

    async def _try(self, new: str, message: str) -> bool:
        """Move KEY_STATE to `new` with its alerts in one transaction; False when it moved under us."""
        previous = await self.store.get_meta(KEY_STATE)
        previous_state = previous.split(":", 1)[0] if previous else None
        now = self.clock.now()
        if previous_state == new or (previous_state is None and new == "ok"):
            # Nothing to tell: already so, or the first answer of a working key.
            return previous is not None or await self.store.transition_meta(
                KEY_STATE, expected=None, value=f"{new}:{now}"
            )
        kind = "key_refused" if new == "refused" else "key_accepted"
        event = alert_event(kind, message, at=now)
        # Replicas racing on the same transition read the same `previous`, so they build
        # the same delivery ids; only one transition is written.
        alerts = [
            make_delivery(recipient, event, now, None, kind, previous or "initial")
            for recipient in self.recipients.values()
        ]
        if not await self.store.transition_meta(KEY_STATE, expected=previous, value=f"{new}:{now}", deliveries=alerts):
            return False
        log.warning("watcher.alert", alert=kind, message=message)
        if alerts:
            self.on_alerts()
        return True
