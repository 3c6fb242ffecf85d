"""The events every chat notifier is tested with: each outcome, a big batch summary, an alert."""

from __future__ import annotations

from typing import Any

from watcher.batches import batch_event, summary_id
from watcher.models import Batch, BatchPhase, Delivery, Outcome
from watcher.notify.samples import SAMPLE_AT, SAMPLE_URL, sample_alert, sample_event, sample_job

_MIX = (Outcome.COMPLETED,) * 14 + (Outcome.ERRORED, Outcome.FAILED, Outcome.TIMED_OUT, Outcome.NOT_FOUND)


def big_batch_event(jobs: int = 500, name: str = "nightly-big") -> dict[str, Any]:
    """A `contact_import.batch_finished` for `jobs` jobs of every outcome, with a status page link."""
    states = [
        sample_job(f"{name}-{i:04}", added=SAMPLE_AT - 7200 + i, outcome=_MIX[i % len(_MIX)], batch=name)
        for i in range(jobs)
    ]
    tally: dict[str, int] = {}
    for state in states:
        if state.outcome is not None:
            tally[state.outcome.value] = tally.get(state.outcome.value, 0) + 1
    batch = Batch(
        name=name,
        phase=BatchPhase.OPEN,
        jobs=jobs,
        final=jobs,
        outcomes=tally,
        started_at=SAMPLE_AT - 7200,
        quiet_since=SAMPLE_AT - 60,
    )
    return batch_event(batch, states, now=SAMPLE_AT, summary_id=summary_id(name, 0), public_url=SAMPLE_URL)


def chat_events() -> list[tuple[str, dict[str, Any]]]:
    """All five outcomes, a batch summary of 500 jobs and a dead-delivery alert, by name."""
    events = [(outcome.value, sample_event(outcome.value)) for outcome in Outcome]
    return [*events, ("batch of 500", big_batch_event()), ("alert", sample_alert("delivery_dead"))]


def delivery_of(event: dict[str, Any], *, id: str = "msg_chat0001", notifier: str = "chat") -> Delivery:
    """A pending delivery of `event`; its id is the idempotency key every retry reuses."""
    return Delivery(
        id=id,
        notifier=notifier,
        event=event,
        created_at=SAMPLE_AT,
        next_attempt_at=SAMPLE_AT,
        deadline_at=SAMPLE_AT + 86400,
    )
