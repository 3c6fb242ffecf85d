"""A batch summary slower than its lease keeps its claim by renewing it: one summary, no lost lease."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import StallsOnce
from watcher.batchloop import BatchLoop
from watcher.clock import SystemClock
from watcher.models import JobRef, Outcome, Snapshot
from watcher.outcomes import Recipient
from watcher.store import MemoryStore, SqliteStore
from watcher.store.base import StateStore


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_summary_slower_than_its_lease_is_written_once(tmp_path: Path, backend: str) -> None:
    """Two batch loops, a 0.6 s lease, a summary that takes 2 s: the claim is renewed, nobody else takes it."""
    store: StateStore = MemoryStore() if backend == "memory" else SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    now = time.time()
    await store.add_job(JobRef("j1", batch="slow"), now=now, first_poll_at=now)
    (job,) = await store.claim_due_jobs(now=now, limit=5, owner="t", lease=30)
    assert job.lease is not None
    await store.record_outcome(
        "j1", token=job.lease.token, now=now, outcome=Outcome.COMPLETED, snapshot=Snapshot("completed"),
        polls=1, detected_at=now, deliveries=[],
    )
    stalls = [2.0]
    loops = [
        BatchLoop(
            store=StallsOnce(store, stalls),  # type: ignore[arg-type]
            clock=SystemClock(), owner=f"w{n}", settle=0.0, recipients=[Recipient("hook", 3600.0)], lease=0.6,
        )
        for n in range(2)
    ]
    stop = asyncio.Event()
    with capture_logs() as logs:
        runs = [asyncio.create_task(loop.run(stop)) for loop in loops]
        deadline = time.monotonic() + 10
        while sum(loop.summaries for loop in loops) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.7)  # a second claim would come after the first lease ran out
        stop.set()
        await asyncio.gather(*runs)
        await asyncio.gather(*(loop.drain(1.0) for loop in loops))
    batch = await store.get_batch("slow")
    await store.close()
    assert 1 == sum(loop.summaries for loop in loops)
    assert batch is not None and 1 == batch.summaries
    assert [] == [entry for entry in logs if entry["event"].endswith("lease_lost")]
