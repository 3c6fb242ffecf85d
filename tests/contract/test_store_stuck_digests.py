"""The store contract for stuck warnings, digest reads and batch counts, for every backend."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from tests.contract.batchkit import SETTLE, end, held, join, settled_batch
from tests.contract.storekit import LEASE, NOW, claim_one, get, ids, make_delivery, token
from watcher.models import DeliveryState, JobRef, Outcome
from watcher.store import SqliteStore, StateStore
from watcher.store.sqlite_batches import _CLAIM


async def test_mark_stuck_writes_once_with_its_deliveries_and_only_for_the_holder(store: StateStore) -> None:
    """stuck_at and the warning's deliveries are written once, by the lease holder of a watched job."""
    await join(store, "job-1")
    job = await claim_one(store, "job-1")
    warning = [make_delivery("stuck-1")]
    assert False is await store.mark_stuck("job-1", token=token(job) + "x", now=NOW + 1, deliveries=warning)
    assert [] == await store.list_deliveries(["job-1"])
    assert True is await store.mark_stuck("job-1", token=token(job), now=NOW + 1, deliveries=warning)
    assert False is await store.mark_stuck("job-1", token=token(job), now=NOW + 2, deliveries=[make_delivery("s2")])
    assert (NOW + 1, ["stuck-1"]) == ((await get(store, "job-1")).stuck_at, ids(await store.list_deliveries()))
    # The lease stays with the holder, which goes on polling the job.
    assert True is await store.record_outcome(
        "job-1", token=token(job), now=NOW + 3, outcome=Outcome.COMPLETED, snapshot=None, polls=1,
        detected_at=NOW + 3, deliveries=[],
    )  # fmt: skip
    job_2 = await store.add_job(JobRef("job-2"), now=NOW, first_poll_at=NOW)
    assert job_2
    held_2 = await claim_one(store, "job-2", now=NOW + 4)
    await store.record_outcome(
        "job-2", token=token(held_2), now=NOW + 4, outcome=Outcome.FAILED, snapshot=None, polls=1,
        detected_at=NOW + 4, deliveries=[],
    )  # fmt: skip
    assert False is await store.mark_stuck("job-2", token=token(held_2), now=NOW + 5, deliveries=warning)


async def test_finished_jobs_and_dead_deliveries_answer_their_time_range(store: StateStore) -> None:
    """finished_jobs by detected_at and dead_deliveries by created_at, in [since, until), oldest first."""
    for n in range(4):
        await join(store, f"job-{n}")
    for n, at in [(0, NOW + 10), (1, NOW + 20), (2, NOW + 30)]:
        await end(store, f"job-{n}", at=at)
    assert ["job-1", "job-2"] == ids(await store.finished_jobs(since=NOW + 20, until=NOW + 31))
    assert ["job-0"] == ids(await store.finished_jobs(since=NOW, until=NOW + 20, limit=5))
    assert ["job-0"] == ids(await store.finished_jobs(since=NOW, until=NOW + 99, limit=1))
    dead = DeliveryState.DEAD
    await store.add_deliveries(
        [
            make_delivery("d-early", created=NOW + 1, state=dead),
            make_delivery("d-in", created=NOW + 5, state=dead),
            make_delivery("d-pending", created=NOW + 5),
            make_delivery("d-waiting", created=NOW + 6, at=NOW + 999),
            make_delivery("d-end", created=NOW + 9, state=dead),
        ]
    )
    (pending,) = await store.claim_due_deliveries(now=NOW + 5, limit=5, owner="w1", lease=LEASE)
    assert await store.record_delivery(replace(pending, state=dead, attempts=3), token=token(pending), now=NOW + 6)
    found = await store.dead_deliveries(since=NOW + 2, until=NOW + 9)
    assert (["d-in", "d-pending"], [{}, {}]) == (ids(found), [dict(d.event) for d in found])
    assert ["d-early"] == ids(await store.dead_deliveries(since=NOW, until=NOW + 99, limit=1))


async def test_batch_counts_follow_the_phases(store: StateStore) -> None:
    """batch_counts gives open and finished batches, moving as a batch finishes and reopens."""
    assert {"open": 0, "finished": 0} == await store.batch_counts()
    claimed = await settled_batch(store)
    await join(store, "other-1", "other")
    assert {"open": 2, "finished": 0} == await store.batch_counts()
    await store.finish_batch("nightly", token=held(claimed), now=NOW + SETTLE, summary_id="s", deliveries=[])
    assert {"open": 1, "finished": 1} == await store.batch_counts()
    await join(store, "late", at=NOW + SETTLE + 1)
    assert {"open": 2, "finished": 0} == await store.batch_counts()


async def test_the_settled_claim_reads_the_partial_index(tmp_path: Path) -> None:
    """SQLite finds settled batches through batches_settled, not by scanning every batch."""
    store = SqliteStore(str(tmp_path / "w.db"))
    await store.open()
    try:
        await settled_batch(store)
    finally:
        await store.close()
    with closing(sqlite3.connect(tmp_path / "w.db")) as conn:
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {_CLAIM}", (NOW, NOW, 10)))
        partial = {row[1]: row[4] for row in conn.execute("PRAGMA index_list(batches)")}
    assert ("SEARCH batches USING INDEX batches_settled (quiet_since<?)", 1) == (plan, partial["batches_settled"])
