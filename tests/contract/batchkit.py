"""Helpers shared by the batch contract tests: joining, ending jobs, claiming settled batches."""

from __future__ import annotations

from tests.contract.storekit import LEASE, NOW, claim_one, make_delivery, token
from watcher.models import Batch, JobRef, Outcome, Snapshot
from watcher.store import StateStore

SETTLE = 60.0


async def join(store: StateStore, job_id: str, batch: str = "nightly", *, at: float = NOW, again: bool = False) -> bool:
    return await store.add_job(JobRef(job_id, batch=batch), now=at, first_poll_at=NOW, again=again)


async def end(
    store: StateStore,
    job_id: str,
    outcome: Outcome = Outcome.COMPLETED,
    *,
    at: float = NOW,
    errors: dict[str, object] | None = None,
    deliveries: tuple[str, ...] = (),
) -> bool:
    """Claim the job at `at` and record its outcome then."""
    job = await claim_one(store, job_id, now=at)
    return await store.record_outcome(
        job_id, token=token(job), now=at, outcome=outcome, snapshot=Snapshot(status=outcome.value), polls=2,
        detected_at=at, deliveries=[make_delivery(d, job_id=job_id, created=at) for d in deliveries], errors=errors,
    )  # fmt: skip


async def batch(store: StateStore, name: str = "nightly") -> Batch:
    found = await store.get_batch(name)
    assert found is not None
    return found


def held(claimed: Batch) -> str:
    assert claimed.lease is not None
    return claimed.lease.token


async def claim_batches(store: StateStore, at: float, owner: str = "w1") -> list[Batch]:
    return await store.claim_settled_batches(now=at, settle=SETTLE, limit=10, owner=owner, lease=LEASE)


async def completed_batch(store: StateStore, jobs: int = 2, *, at: float = NOW) -> None:
    """A batch of `jobs` jobs, all completed at `at`."""
    for n in range(jobs):
        await join(store, f"job-{n}", at=at)
        await end(store, f"job-{n}", at=max(at, NOW))


async def settled_batch(store: StateStore, jobs: int = 2, *, at: float = NOW) -> Batch:
    """A batch of `jobs` completed jobs, claimed once it settled."""
    await completed_batch(store, jobs, at=at)
    (claimed,) = await claim_batches(store, at + SETTLE)
    return claimed
