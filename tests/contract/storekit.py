"""Helpers shared by the store contract tests: fixed times, sample records, claim shortcuts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from watcher.models import Delivery, DeliveryState, JobRef, JobState, Outcome, PollUpdate, Snapshot
from watcher.store import StateStore

#: The conftest fixture's type: opens another instance over the same data.
StoreFactory = Callable[[], Awaitable[StateStore]]

NOW = 1_800_000_000.0
LEASE = 30.0

RICH_EVENT: dict[str, Any] = {
    "type": "contact_import.errored",
    "timestamp": "2026-11-27T10:00:00Z",
    "data": {
        "job_id": "job-1",
        "labels": {"team": "croissance", "note": "naïve café ☕ 日本語"},
        "results": {"requested_count": 1000, "errored_count": 10, "ratio": 0.125},
        "errors": {"top_reasons": [{"reason": "invalid email", "count": 8}], "rows": 10},
        "flags": [True, False, None],
        "nested": {"deeper": {"deepest": ["a", 1, 2.5, {"x": None}]}},
    },
}


def make_delivery(
    delivery_id: str,
    *,
    job_id: str | None = "job-1",
    at: float = NOW,
    created: float = NOW,
    state: DeliveryState = DeliveryState.PENDING,
    event: dict[str, Any] | None = None,
    notifier: str = "console",
    deadline: float = NOW + 86_400,
) -> Delivery:
    return Delivery(
        id=delivery_id,
        notifier=notifier,
        event=event if event is not None else {"type": "contact_import.completed"},
        created_at=created,
        next_attempt_at=at,
        deadline_at=deadline,
        job_id=job_id,
        state=state,
    )


def ids(items: list[JobState] | list[Delivery]) -> list[str]:
    return [item.id for item in items]


def token(item: JobState | Delivery) -> str:
    """The fencing token a claim handed out with this copy."""
    assert item.lease is not None
    return item.lease.token


def unleased(items: list[JobState] | list[Delivery]) -> list[Any]:
    """The claimed copies without their lease: what the store holds."""
    return [replace(item, lease=None) for item in items]


def poll(next_poll_at: float = NOW + 60, polls: int = 1, snapshot: Snapshot | None = None) -> PollUpdate:
    return PollUpdate(next_poll_at=next_poll_at, polls=polls, transient_errors=0, snapshot=snapshot)


async def get(store: StateStore, job_id: str) -> JobState:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def claim(store: StateStore, *, now: float = NOW, owner: str = "w1") -> list[str]:
    return ids(await store.claim_due_jobs(now=now, limit=100, owner=owner, lease=LEASE))


async def add(store: StateStore, job_id: str, *, at: float = NOW, added: float = NOW) -> None:
    assert await store.add_job(JobRef(job_id), now=added, first_poll_at=at)


async def claim_one(store: StateStore, job_id: str, owner: str = "w1", *, now: float = NOW) -> JobState:
    """Claim the wanted job, giving back any other due job claimed on the way."""
    claimed = await store.claim_due_jobs(now=now, limit=100, owner=owner, lease=LEASE)
    for job in claimed:
        if job.id != job_id:
            await store.release_job(job.id, token=token(job))
    (wanted,) = [job for job in claimed if job.id == job_id]
    return wanted


async def finish(store: StateStore, job_id: str, deliveries: list[Delivery], *, detected: float = NOW) -> bool:
    job = await claim_one(store, job_id)
    return await store.record_outcome(
        job_id,
        token=token(job),
        now=NOW,
        outcome=Outcome.COMPLETED,
        snapshot=Snapshot(status="completed"),
        polls=3,
        detected_at=detected,
        deliveries=deliveries,
    )


async def settle(store: StateStore, delivery_id: str, *, now: float = NOW) -> None:
    """Claim one delivery and record it delivered."""
    claimed = await store.claim_due_deliveries(now=now, limit=100, owner="settler", lease=LEASE)
    for delivery in claimed:
        if delivery.id != delivery_id:
            await store.release_delivery(delivery.id, token=token(delivery))
    (wanted,) = [d for d in claimed if d.id == delivery_id]
    done = replace(wanted, state=DeliveryState.DELIVERED, attempts=1)
    assert await store.record_delivery(done, token=token(wanted), now=now)
