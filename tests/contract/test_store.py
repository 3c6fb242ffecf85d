"""One contract for every StateStore backend: memory, SQLite and Redis behave alike."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from watcher.errors import StoreUnavailable, WatcherError
from watcher.models import (
    WATCHING,
    Delivery,
    DeliveryState,
    JobRef,
    JobState,
    Outcome,
    PollUpdate,
    Snapshot,
)
from watcher.store import MemoryStore, RedisStore, SqliteStore, StateStore, open_store
from watcher.store.base import AddsJobs, RecordsPolls
from watcher.store.sqlite import SCHEMA_VERSION

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
) -> Delivery:
    return Delivery(
        id=delivery_id,
        notifier="console",
        event=event if event is not None else {"type": "contact_import.completed"},
        created_at=created,
        next_attempt_at=at,
        deadline_at=NOW + 86_400,
        job_id=job_id,
        state=state,
    )


def ids(items: list[JobState] | list[Delivery]) -> list[str]:
    return [item.id for item in items]


async def get(store: StateStore, job_id: str) -> JobState:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def claim(store: StateStore, *, now: float = NOW, owner: str = "w1") -> list[str]:
    return ids(await store.claim_due_jobs(now=now, limit=100, owner=owner, lease=LEASE))


async def add(store: StateStore, job_id: str, *, at: float = NOW, added: float = NOW) -> None:
    assert await store.add_job(JobRef(job_id), now=added, first_poll_at=at)


async def claim_one(store: StateStore, job_id: str, owner: str = "w1") -> JobState:
    """Claim the wanted job, giving back any other due job claimed on the way."""
    claimed = await store.claim_due_jobs(now=NOW, limit=100, owner=owner, lease=LEASE)
    for job in claimed:
        if job.id != job_id:
            await store.release_job(job.id, owner=owner)
    (wanted,) = [job for job in claimed if job.id == job_id]
    return wanted


async def finish(
    store: StateStore, job_id: str, deliveries: list[Delivery], *, detected: float = NOW
) -> bool:
    await claim_one(store, job_id)
    return await store.record_outcome(
        job_id,
        outcome=Outcome.COMPLETED,
        snapshot=Snapshot(status="completed"),
        polls=3,
        detected_at=detected,
        deliveries=deliveries,
        owner="w1",
    )


# --- jobs -------------------------------------------------------------------


async def test_ping_succeeds_on_an_open_store(store: StateStore) -> None:
    """An open, reachable store answers ping without raising."""
    await store.ping()


async def test_add_job_round_trips_every_field(store: StateStore) -> None:
    """A new job comes back with its labels, notify list and times, watching, never polled."""
    ref = JobRef("job-1", {"team": "growth", "liste": "ニュース ✉"}, ("team-slack", "audit"))
    assert True is await store.add_job(ref, now=NOW, first_poll_at=NOW + 2)
    expected = JobState(
        id="job-1",
        labels={"team": "growth", "liste": "ニュース ✉"},
        notify=("team-slack", "audit"),
        added_at=NOW,
        next_poll_at=NOW + 2,
    )
    assert expected == await store.get_job("job-1")


async def test_notify_none_and_empty_stay_distinct(store: StateStore) -> None:
    """notify=None (use routes) and notify=() (notify nobody) are not confused."""
    await store.add_job(JobRef("a", notify=None), now=NOW, first_poll_at=NOW)
    await store.add_job(JobRef("b", notify=()), now=NOW, first_poll_at=NOW)
    assert [None, ()] == [(await get(store, i)).notify for i in ("a", "b")]


async def test_add_job_is_idempotent(store: StateStore) -> None:
    """Adding a known id returns False and keeps the original labels and schedule."""
    await store.add_job(JobRef("job-1", {"v": "1"}), now=NOW, first_poll_at=NOW)
    assert False is await store.add_job(
        JobRef("job-1", {"v": "2"}), now=NOW + 5, first_poll_at=NOW + 50
    )
    job = await get(store, "job-1")
    assert ({"v": "1"}, NOW, NOW) == (job.labels, job.added_at, job.next_poll_at)


async def test_add_jobs_answers_each_ref_in_order_as_add_job_would(store: StateStore) -> None:
    """add_jobs adds what add_job would, in order: known ids (before or earlier in the batch) are
    False and keep what they had; the new ones read back exactly as add_job's do."""
    assert isinstance(store, AddsJobs)
    await store.add_job(JobRef("old", {"v": "1"}), now=NOW, first_poll_at=NOW)
    refs = [
        JobRef("job-1", {"team": "growth", "liste": "ニュース ✉"}, ("team-slack", "audit")),
        JobRef("old", {"v": "2"}),
        JobRef("job-2", notify=()),
        JobRef("job-1", {"team": "other"}),
    ]
    assert [True, False, True, False] == await store.add_jobs(refs, now=NOW + 5, first_poll_at=NOW + 7)
    assert [] == await store.add_jobs([], now=NOW, first_poll_at=NOW)
    await store.add_job(JobRef("single", {"team": "growth", "liste": "ニュース ✉"}, ("team-slack", "audit")),
                        now=NOW + 5, first_poll_at=NOW + 7)  # fmt: skip
    assert replace(await get(store, "single"), id="job-1") == await get(store, "job-1")
    old, job2 = await get(store, "old"), await get(store, "job-2")
    assert ({"v": "1"}, NOW) == (old.labels, old.added_at)
    assert ((), NOW + 7) == (job2.notify, job2.next_poll_at)
    assert ["old", "job-1", "job-2", "single"] == ids(await store.list_jobs())
    assert ["old"] == ids(await store.claim_due_jobs(now=NOW + 6, limit=10, owner="w1", lease=LEASE))


async def test_get_unknown_job_is_none(store: StateStore) -> None:
    """An id never added is None, not an error."""
    assert None is await store.get_job("nope")


async def test_list_jobs_orders_filters_and_limits(store: StateStore) -> None:
    """list_jobs is ordered by added_at, filters by state and honours limit."""
    await add(store, "c", added=NOW + 2)
    await add(store, "a", added=NOW)
    await add(store, "b", added=NOW + 1)
    await finish(store, "b", [])
    assert ["a", "b", "c"] == [j.id for j in await store.list_jobs()]
    assert ["a", "c"] == [j.id for j in await store.list_jobs(state=WATCHING)]
    assert ["b"] == [j.id for j in await store.list_jobs(state="completed")]
    assert [] == await store.list_jobs(state="failed")
    assert ["a", "b"] == [j.id for j in await store.list_jobs(limit=2)]
    assert ["a"] == [j.id for j in await store.list_jobs(state=WATCHING, limit=1)]
    assert [] == await store.list_jobs(limit=0)


async def test_claim_respects_next_poll_at(store: StateStore) -> None:
    """Only jobs whose next_poll_at has come are claimed."""
    await add(store, "due", at=NOW)
    await add(store, "later", at=NOW + 10)
    claimed = await store.claim_due_jobs(now=NOW, limit=10, owner="w1", lease=LEASE)
    assert ["due"] == [j.id for j in claimed]


async def test_claim_is_earliest_first_and_honours_limit(store: StateStore) -> None:
    """Claims hand out the most overdue jobs first, at most `limit` of them."""
    for job_id, overdue in [("j3", 10), ("j1", 30), ("j2", 20), ("j0", 40)]:
        await add(store, job_id, at=NOW - overdue)
    first = await store.claim_due_jobs(now=NOW, limit=3, owner="w1", lease=LEASE)
    rest = await store.claim_due_jobs(now=NOW, limit=3, owner="w1", lease=LEASE)
    assert (["j0", "j1", "j2"], ["j3"]) == ([j.id for j in first], [j.id for j in rest])
    assert [] == await store.claim_due_jobs(now=NOW, limit=0, owner="w1", lease=LEASE)


async def test_claimed_job_is_leased_until_expiry_then_claimable_by_another(
    store: StateStore,
) -> None:
    """A claimed job is hidden while its lease lives; afterwards another owner may claim it."""
    await add(store, "job-1")
    assert ["job-1"] == await claim(store)
    assert [] == await store.claim_due_jobs(now=NOW + LEASE - 1, limit=5, owner="w2", lease=LEASE)
    again = await store.claim_due_jobs(now=NOW + LEASE, limit=5, owner="w2", lease=LEASE)
    assert ["job-1"] == [j.id for j in again]
    update = PollUpdate(next_poll_at=NOW + 60, polls=1, transient_errors=0, snapshot=None)
    assert False is await store.record_poll("job-1", update, owner="w1")
    assert True is await store.record_poll("job-1", update, owner="w2")


async def test_record_poll_stores_update_and_releases_lease(store: StateStore) -> None:
    """record_poll writes polls, errors, snapshot and schedule, and frees the job for later."""
    await add(store, "job-1")
    await claim_one(store, "job-1")
    snapshot = Snapshot(status="pending", job_type="upsert", results={"requested_count": 5})
    update = PollUpdate(next_poll_at=NOW + 5, polls=1, transient_errors=2, snapshot=snapshot)
    assert True is await store.record_poll("job-1", update, owner="w1")
    job = await get(store, "job-1")
    assert (NOW + 5, 1, 2, snapshot) == (
        job.next_poll_at,
        job.polls,
        job.transient_errors,
        job.snapshot,
    )
    assert [] == await store.claim_due_jobs(now=NOW + 4, limit=5, owner="w2", lease=LEASE)
    assert ["job-1"] == await claim(store, now=NOW + 5, owner="w2")
    assert False is await store.record_poll("job-1", update, owner="w1")


async def test_record_poll_with_wrong_owner_is_refused(store: StateStore) -> None:
    """Someone not holding the lease cannot write a poll, and the job is unchanged."""
    await add(store, "job-1")
    await claim_one(store, "job-1", owner="w1")
    update = PollUpdate(next_poll_at=NOW + 5, polls=9, transient_errors=0, snapshot=None)
    assert False is await store.record_poll("job-1", update, owner="intruder")
    assert False is await store.record_poll("unknown", update, owner="w1")
    assert 0 == (await get(store, "job-1")).polls


async def test_record_poll_without_a_claim_is_refused(store: StateStore) -> None:
    """A job nobody claimed cannot be written to."""
    await add(store, "job-1")
    update = PollUpdate(next_poll_at=NOW + 5, polls=1, transient_errors=0, snapshot=None)
    assert False is await store.record_poll("job-1", update, owner="w1")


async def test_concurrent_record_polls_each_get_their_own_answer(store: StateStore) -> None:
    """Polls recorded at the same moment (SQLite commits them together) are all written, each answered."""
    for job_id in ("job-1", "job-2", "job-3"):
        await add(store, job_id)
    assert ["job-1", "job-2", "job-3"] == await claim(store)
    updates = [PollUpdate(next_poll_at=NOW + 5 + i, polls=i, transient_errors=0, snapshot=None) for i in (1, 2, 3)]
    answers = await asyncio.gather(
        store.record_poll("job-1", updates[0], owner="w1"),
        store.record_poll("job-2", updates[1], owner="intruder"),
        store.record_poll("job-3", updates[2], owner="w1"),
    )
    assert [True, False, True] == answers
    assert [1, 0, 3] == [(await get(store, job_id)).polls for job_id in ("job-1", "job-2", "job-3")]


def batch_store(store: StateStore) -> RecordsPolls:
    """The store as the engine uses it for batches: every built-in store records polls in batches."""
    assert isinstance(store, RecordsPolls)
    return store


async def test_record_polls_answers_each_update_in_order(store: StateStore) -> None:
    """record_polls writes what record_poll would, for each job it may, and answers each in order."""
    for job_id in ("job-1", "job-2", "job-3"):
        await add(store, job_id)
    await claim_one(store, "job-1", owner="w1")
    await claim_one(store, "job-3", owner="w1")
    snapshot = Snapshot("pending", "upsert", {"requested_count": 5, "extra": {"k": [1]}}, "s")
    updates = [
        ("job-1", PollUpdate(next_poll_at=NOW + 5, polls=1, transient_errors=2, snapshot=snapshot)),
        ("job-2", PollUpdate(next_poll_at=NOW + 6, polls=9, transient_errors=0, snapshot=None)),  # not claimed
        ("unknown", PollUpdate(next_poll_at=NOW + 7, polls=9, transient_errors=0, snapshot=None)),
        ("job-3", PollUpdate(next_poll_at=NOW + 8, polls=3, transient_errors=0, snapshot=None)),
    ]
    assert [True, False, False, True] == await batch_store(store).record_polls(updates, owner="w1")
    assert [] == await batch_store(store).record_polls([], owner="w1")
    job1, job2, job3 = [await get(store, job_id) for job_id in ("job-1", "job-2", "job-3")]
    assert (NOW + 5, 1, 2, snapshot) == (job1.next_poll_at, job1.polls, job1.transient_errors, job1.snapshot)
    assert (NOW, 0) == (job2.next_poll_at, job2.polls)
    assert (NOW + 8, 3, None) == (job3.next_poll_at, job3.polls, job3.snapshot)
    # The leases are released: the jobs are due again at their new times, for anyone.
    assert ["job-2"] == await claim(store, now=NOW + 4, owner="w2")
    assert ["job-1", "job-3"] == await claim(store, now=NOW + 8, owner="w2")
    assert [False] == await batch_store(store).record_polls(updates[:1], owner="w1")


async def test_record_polls_equals_record_poll(store: StateStore) -> None:
    """The same update stored either way reads back the same."""
    await add(store, "one")
    await add(store, "many")
    await claim_one(store, "one")
    await claim_one(store, "many")
    snapshot = Snapshot("pending", None, {"requested_count": 7, "note": "naïve ☕"}, None, None)
    update = PollUpdate(next_poll_at=NOW + 9, polls=4, transient_errors=1, snapshot=snapshot)
    assert True is await store.record_poll("one", update, owner="w1")
    assert [True] == await batch_store(store).record_polls([("many", update)], owner="w1")
    one, many = await get(store, "one"), await get(store, "many")
    assert replace(one, id="many") == many


@pytest.mark.parametrize("batched", [False, True])
async def test_each_poll_stores_its_own_snapshot_exactly(store: StateStore, batched: bool) -> None:
    """Snapshots equal to the last one but not alike (1 vs 1.0 vs true, key order, -0.0) are stored
    as given, and a claim hands out the snapshot last stored, whoever stored it."""
    await add(store, "job-1")
    variants = [
        Snapshot("pending", "upsert", {"requested_count": 1, "x": 1, "y": 0.0}),
        Snapshot("pending", "upsert", {"requested_count": 1, "x": 1, "y": 0.0}),  # identical
        Snapshot("pending", "upsert", {"requested_count": 1, "x": 1.0, "y": 0.0}),
        Snapshot("pending", "upsert", {"requested_count": 1, "x": True, "y": 0.0}),
        Snapshot("pending", "upsert", {"x": True, "requested_count": 1, "y": 0.0}),
        Snapshot("pending", "upsert", {"x": True, "requested_count": 1, "y": -0.0}),
        Snapshot("Pending", "upsert", {"x": True, "requested_count": 1, "y": -0.0}),
    ]
    for polls, snapshot in enumerate(variants, start=1):
        (job,) = await store.claim_due_jobs(now=NOW + polls, limit=5, owner="w1", lease=LEASE)
        assert (polls - 1, variants[polls - 2] if polls > 1 else None) == (job.polls, job.snapshot)
        update = PollUpdate(next_poll_at=NOW + polls + 1, polls=polls, transient_errors=0, snapshot=snapshot)
        if batched:
            assert [True] == await batch_store(store).record_polls([("job-1", update)], owner="w1")
        else:
            assert True is await store.record_poll("job-1", update, owner="w1")
        stored = (await get(store, "job-1")).snapshot
        assert stored is not None
        assert (snapshot, list(snapshot.results.items())) == (stored, list(stored.results.items()))
        assert [type(v) for v in snapshot.results.values()] == [type(v) for v in stored.results.values()]
        assert repr(snapshot.results["y"]) == repr(stored.results["y"])


async def test_claim_sees_a_snapshot_another_instance_wrote(store_factory: StoreFactory) -> None:
    """A store instance hands out what another instance (another process) stored since, not what it wrote."""
    first, second = await store_factory(), await store_factory()
    await add(first, "job-1")
    mine = Snapshot("pending", "upsert", {"requested_count": 1})
    theirs = Snapshot("pending", "upsert", {"requested_count": 2})
    for store, snapshot, at in ((first, mine, NOW), (second, theirs, NOW + 1), (first, mine, NOW + 2)):
        (job,) = await store.claim_due_jobs(now=at, limit=5, owner="w1", lease=LEASE)
        update = PollUpdate(next_poll_at=at + 1, polls=job.polls + 1, transient_errors=0, snapshot=snapshot)
        assert True is await store.record_poll("job-1", update, owner="w1")
        (seen,) = await (second if store is first else first).claim_due_jobs(
            now=at + 1, limit=5, owner="w1", lease=LEASE
        )
        assert snapshot == seen.snapshot
        await (second if store is first else first).release_job("job-1", owner="w1")


async def test_record_outcome_writes_outcome_and_deliveries_together(store: StateStore) -> None:
    """A final outcome and its deliveries appear together; the job is no longer watched."""
    await add(store, "job-1")
    await claim_one(store, "job-1")
    snapshot = Snapshot("errored", "upsert", {"errored_count": 3, "extra": {"k": [1]}}, "s", "f")
    deliveries = [make_delivery("d1", event=RICH_EVENT), make_delivery("d2", created=NOW + 1)]
    assert True is await store.record_outcome(
        "job-1",
        outcome=Outcome.ERRORED,
        snapshot=snapshot,
        polls=7,
        detected_at=NOW + 3,
        deliveries=deliveries,
        owner="w1",
    )
    job = await get(store, "job-1")
    assert (Outcome.ERRORED, "errored", snapshot, 7, NOW + 3) == (
        job.outcome,
        job.state,
        job.snapshot,
        job.polls,
        job.detected_at,
    )
    assert deliveries == await store.list_deliveries(["job-1"])
    assert [] == await store.claim_due_jobs(now=NOW + 1e6, limit=5, owner="w2", lease=LEASE)


async def test_record_outcome_refuses_a_second_outcome(store: StateStore) -> None:
    """A job that is already final keeps its outcome and gains no deliveries."""
    await add(store, "job-1")
    assert True is await finish(store, "job-1", [make_delivery("d1")])
    assert False is await store.record_outcome(
        "job-1",
        outcome=Outcome.FAILED,
        snapshot=None,
        polls=9,
        detected_at=NOW + 9,
        deliveries=[make_delivery("d2")],
        owner="w1",
    )
    assert Outcome.COMPLETED == (await get(store, "job-1")).outcome
    assert ["d1"] == [d.id for d in await store.list_deliveries()]


async def test_record_outcome_with_wrong_owner_writes_nothing(store: StateStore) -> None:
    """A lost lease means no outcome and no deliveries."""
    await add(store, "job-1")
    await claim_one(store, "job-1", owner="w1")
    assert False is await store.record_outcome(
        "job-1",
        outcome=Outcome.FAILED,
        snapshot=None,
        polls=1,
        detected_at=NOW,
        deliveries=[make_delivery("d1")],
        owner="w2",
    )
    assert None is (await get(store, "job-1")).outcome
    assert [] == await store.list_deliveries()


async def test_record_outcome_without_snapshot_stores_none(store: StateStore) -> None:
    """An outcome with no SendGrid answer (not_found) stores snapshot None."""
    await add(store, "job-1")
    await claim_one(store, "job-1")
    await store.record_outcome(
        "job-1",
        outcome=Outcome.NOT_FOUND,
        snapshot=None,
        polls=4,
        detected_at=NOW,
        deliveries=[],
        owner="w1",
    )
    job = await get(store, "job-1")
    assert ("not_found", None) == (job.state, job.snapshot)


async def test_release_job_makes_it_due_again_unchanged(store: StateStore) -> None:
    """A released job is claimable at once with its schedule intact; others cannot release it."""
    await add(store, "job-1")
    await claim_one(store, "job-1", owner="w1")
    await store.release_job("job-1", owner="w2")
    assert [] == await store.claim_due_jobs(now=NOW, limit=5, owner="w2", lease=LEASE)
    await store.release_job("job-1", owner="w1")
    again = await store.claim_due_jobs(now=NOW, limit=5, owner="w2", lease=LEASE)
    assert [(NOW, 0)] == [(j.next_poll_at, j.polls) for j in again]


async def test_remove_job_removes_it_and_its_pending_deliveries(store: StateStore) -> None:
    """remove_job deletes the job and its deliveries, not other jobs' or alerts."""
    await add(store, "job-1")
    await add(store, "job-2")
    await finish(store, "job-1", [make_delivery("d1")])
    await store.add_deliveries(
        [make_delivery("d2", job_id="job-2"), make_delivery("a", job_id=None)]
    )
    assert True is await store.remove_job("job-1")
    assert False is await store.remove_job("job-1")
    assert None is await store.get_job("job-1")
    assert ["a", "d2"] == sorted(d.id for d in await store.list_deliveries())
    claimed = await store.claim_due_deliveries(now=NOW, limit=10, owner="w1", lease=LEASE)
    assert ["a", "d2"] == sorted(d.id for d in claimed)


async def test_removed_job_is_not_claimed(store: StateStore) -> None:
    """A removed watching job disappears from the due queue."""
    await add(store, "job-1")
    await store.remove_job("job-1")
    assert ([], None) == (
        await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE),
        await store.next_job_due_at(),
    )


async def test_spread_overdue_spreads_within_window_and_leaves_future_jobs(
    store: StateStore,
) -> None:
    """Overdue jobs are spread evenly over [now, now + window) in their order; others stay."""
    for index in range(4):
        await add(store, f"late{index}", at=NOW - 100 + index)
    await add(store, "future", at=NOW + 500)
    assert 4 == await store.spread_overdue(now=NOW, window=40)
    times = [(await get(store, f"late{i}")).next_poll_at for i in range(4)]
    assert [NOW, NOW + 10, NOW + 20, NOW + 30] == pytest.approx(times)
    assert NOW + 500 == (await get(store, "future")).next_poll_at
    assert 0 == await store.spread_overdue(now=NOW, window=40)
    assert ["late0"] == await claim(store)


async def test_spread_overdue_ignores_final_and_leased_jobs(store: StateStore) -> None:
    """Final jobs and jobs under a live lease are not rescheduled."""
    await add(store, "done", at=NOW - 50)
    await finish(store, "done", [])
    await add(store, "busy", at=NOW - 50)
    await claim_one(store, "busy")
    assert 0 == await store.spread_overdue(now=NOW + 1, window=60)


async def test_next_job_due_at_ignores_final_jobs(store: StateStore) -> None:
    """next_job_due_at is the earliest unfinished job's time, or None."""
    assert None is await store.next_job_due_at()
    await add(store, "early", at=NOW - 10)
    await add(store, "late", at=NOW + 10)
    assert NOW - 10 == await store.next_job_due_at()
    await claim_one(store, "early")
    await store.record_outcome(
        "early",
        outcome=Outcome.FAILED,
        snapshot=None,
        polls=1,
        detected_at=NOW,
        deliveries=[],
        owner="w1",
    )
    assert NOW + 10 == await store.next_job_due_at()


async def test_next_job_due_at_counts_a_leased_job_at_its_lease_expiry(store: StateStore) -> None:
    """A job being polled is not due again before its lease ends, so the engine need not spin."""
    await add(store, "job-1", at=NOW - 10)
    await claim_one(store, "job-1")
    assert NOW + LEASE == await store.next_job_due_at()


async def test_purge_finished_keeps_jobs_with_pending_deliveries(store: StateStore) -> None:
    """Only final jobs detected before the cutoff with every delivery settled are purged."""
    for job_id in ("settled", "pending", "recent", "watching"):
        await add(store, job_id)
    await finish(store, "settled", [make_delivery("s1", job_id="settled")], detected=NOW)
    await finish(store, "pending", [make_delivery("p1", job_id="pending")], detected=NOW)
    await finish(store, "recent", [], detected=NOW + 100)
    claimed = await store.claim_due_deliveries(now=NOW, limit=10, owner="w1", lease=LEASE)
    (s1,) = [d for d in claimed if d.id == "s1"]
    await store.record_delivery(replace(s1, state=DeliveryState.DELIVERED, attempts=1), owner="w1")
    assert 1 == await store.purge_finished(before=NOW + 50)
    assert ["pending", "recent", "watching"] == sorted(j.id for j in await store.list_jobs())
    assert ["p1"] == [d.id for d in await store.list_deliveries()]
    assert 0 == await store.purge_finished(before=NOW + 50)


# --- outbox -----------------------------------------------------------------


async def test_add_deliveries_skips_duplicate_ids(store: StateStore) -> None:
    """Ids already present are skipped and keep their first content."""
    assert 2 == await store.add_deliveries([make_delivery("a", job_id=None), make_delivery("b")])
    changed = make_delivery("a", job_id=None, event={"type": "watcher.alert", "v": 2})
    assert 1 == await store.add_deliveries([changed, make_delivery("c")])
    assert 0 == await store.add_deliveries([])
    stored = {d.id: d for d in await store.list_deliveries()}
    assert {"type": "contact_import.completed"} == stored["a"].event


async def test_claim_due_deliveries_respects_time_order_limit_and_lease(
    store: StateStore,
) -> None:
    """Pending deliveries are claimed when due, earliest first, once per lease."""
    await store.add_deliveries(
        [
            make_delivery("late", at=NOW + 10),
            make_delivery("d2", at=NOW - 1),
            make_delivery("d1", at=NOW - 2),
            make_delivery("d3", at=NOW),
        ]
    )
    first = await store.claim_due_deliveries(now=NOW, limit=2, owner="w1", lease=LEASE)
    assert ["d1", "d2"] == [d.id for d in first]
    rest = await store.claim_due_deliveries(now=NOW, limit=10, owner="w2", lease=LEASE)
    assert ["d3"] == [d.id for d in rest]
    expired = await store.claim_due_deliveries(now=NOW + LEASE, limit=10, owner="w3", lease=LEASE)
    assert ["late", "d1", "d2", "d3"] == [d.id for d in expired]
    assert False is await store.record_delivery(first[0], owner="w1")


async def test_record_delivery_transitions_and_releases(store: StateStore) -> None:
    """A retry stays pending with its new time and error; success settles it for good."""
    await store.add_deliveries([make_delivery("d1")])
    (claimed,) = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    retry = replace(claimed, attempts=1, next_attempt_at=NOW + 60, last_error="HTTP 503 ☹")
    assert False is await store.record_delivery(retry, owner="w2")
    assert True is await store.record_delivery(retry, owner="w1")
    assert False is await store.record_delivery(retry, owner="w1")
    assert [retry] == await store.list_deliveries()
    assert [] == await store.claim_due_deliveries(now=NOW + 59, limit=5, owner="w1", lease=LEASE)
    (again,) = await store.claim_due_deliveries(now=NOW + 60, limit=5, owner="w2", lease=LEASE)
    done = replace(again, state=DeliveryState.DELIVERED, attempts=2, last_error=None)
    assert True is await store.record_delivery(done, owner="w2")
    assert [done] == await store.list_deliveries()
    assert [] == await store.claim_due_deliveries(now=NOW + 1e6, limit=5, owner="w1", lease=LEASE)


async def test_claims_return_records_exactly_as_stored(store: StateStore) -> None:
    """What a claim hands out equals what was stored, unicode and nesting included."""
    labels = {"équipe": "croissance 🚀", "quote": 'a "b" / \\ c'}
    await store.add_job(JobRef("job-1", labels, ("slack",)), now=NOW - 1, first_poll_at=NOW)
    delivery = make_delivery("d1", event=RICH_EVENT)
    await store.add_deliveries([delivery])
    (job,) = await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE)
    expected = JobState("job-1", labels, ("slack",), added_at=NOW - 1, next_poll_at=NOW)
    assert expected == job
    assert [delivery] == await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)


async def test_record_delivery_of_unknown_delivery_is_refused(store: StateStore) -> None:
    """Recording a delivery the store does not hold returns False."""
    assert False is await store.record_delivery(make_delivery("ghost"), owner="w1")


async def test_next_delivery_due_at_ignores_settled_deliveries(store: StateStore) -> None:
    """Only pending deliveries count; leased ones count at their lease expiry."""
    assert None is await store.next_delivery_due_at()
    await store.add_deliveries(
        [
            make_delivery("dead", at=NOW - 50, state=DeliveryState.DEAD),
            make_delivery("sent", at=NOW - 40, state=DeliveryState.DELIVERED),
            make_delivery("p", at=NOW - 5),
        ]
    )
    assert NOW - 5 == await store.next_delivery_due_at()
    claimed = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    assert ["p"] == ids(claimed)
    assert NOW + LEASE == await store.next_delivery_due_at()


async def test_list_deliveries_by_job_ids_oldest_first(store: StateStore) -> None:
    """Filtering by job ids returns only theirs, oldest first; no ids means none."""
    await store.add_deliveries(
        [
            make_delivery("x2", job_id="job-x", created=NOW + 2),
            make_delivery("y1", job_id="job-y", created=NOW + 1),
            make_delivery("x1", job_id="job-x", created=NOW),
            make_delivery("alert", job_id=None, created=NOW - 1),
        ]
    )
    assert ["x1", "x2"] == [d.id for d in await store.list_deliveries(["job-x"])]
    assert ["x1", "y1", "x2"] == [d.id for d in await store.list_deliveries(["job-y", "job-x"])]
    assert ["alert", "x1", "y1", "x2"] == [d.id for d in await store.list_deliveries()]
    assert [] == await store.list_deliveries([])
    assert [] == await store.list_deliveries(iter(["nobody"]))


async def test_event_and_labels_round_trip_exactly(store: StateStore) -> None:
    """Unicode, nested dicts, lists, floats, booleans and nulls come back unchanged."""
    delivery = make_delivery("d1", event=RICH_EVENT)
    await store.add_deliveries([delivery])
    labels = {"équipe": "croissance 🚀", "empty": "", "quote": "a \"b\" 'c' \\ d"}
    await store.add_job(JobRef("job-1", labels), now=NOW, first_poll_at=NOW)
    assert [delivery] == await store.list_deliveries()
    assert labels == (await get(store, "job-1")).labels


async def test_counts_by_state(store: StateStore) -> None:
    """counts totals jobs by state and deliveries by state, zeros included."""
    await add(store, "w")
    await add(store, "f")
    await finish(store, "f", [make_delivery("d1", job_id="f"), make_delivery("d2", job_id="f")])
    await store.add_deliveries([make_delivery("dead", job_id=None, state=DeliveryState.DEAD)])
    counts = await store.counts()
    expected_jobs = {state: 0 for state in ("errored", "failed", "timed_out", "not_found")}
    expected_jobs |= {"watching": 1, "completed": 1}
    assert expected_jobs == dict(counts.jobs_by_state)
    assert {"pending": 2, "delivered": 0, "dead": 1} == dict(counts.deliveries_by_state)
    assert (1, 2) == (counts.watching, counts.pending_deliveries)
    await store.remove_job("f")
    after = await store.counts()
    assert (0, 0) == (after.jobs_by_state["completed"], after.pending_deliveries)


async def test_meta_get_and_set(store: StateStore) -> None:
    """Meta values are stored, overwritten, and None when never set."""
    assert None is await store.get_meta("heartbeat")
    await store.set_meta("heartbeat", "1")
    await store.set_meta("heartbeat", "2 ✓")
    assert "2 ✓" == await store.get_meta("heartbeat")


# --- several claimers -------------------------------------------------------


async def test_concurrent_job_claimers_never_share_a_job(store_factory: StoreFactory) -> None:
    """Tasks on two store instances claiming at once never receive the same job."""
    first, second = await store_factory(), await store_factory()
    for index in range(60):
        await add(first, f"job-{index:03d}", at=NOW - index)

    async def claimer(store: StateStore, owner: str) -> list[str]:
        got: list[str] = []
        while batch := await store.claim_due_jobs(now=NOW, limit=4, owner=owner, lease=LEASE):
            got.extend(job.id for job in batch)
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(
        *(claimer(first if n % 2 else second, f"w{n}") for n in range(8))
    )
    every = [job_id for got in results for job_id in got]
    assert (60, 60) == (len(every), len(set(every)))


async def test_concurrent_delivery_claimers_never_share_a_delivery(
    store_factory: StoreFactory,
) -> None:
    """Tasks on two store instances claiming deliveries at once never share one."""
    first, second = await store_factory(), await store_factory()
    await first.add_deliveries([make_delivery(f"d{i:03d}", at=NOW - i) for i in range(60)])

    async def claimer(store: StateStore, owner: str) -> list[str]:
        got: list[str] = []
        while batch := await store.claim_due_deliveries(now=NOW, limit=3, owner=owner, lease=LEASE):
            got.extend(d.id for d in batch)
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(
        *(claimer(second if n % 2 else first, f"w{n}") for n in range(8))
    )
    every = [delivery_id for got in results for delivery_id in got]
    assert (60, 60) == (len(every), len(set(every)))


async def test_second_instance_sees_first_instance_writes(store_factory: StoreFactory) -> None:
    """What one instance (the CLI's `add`) writes, another (the daemon) claims."""
    cli, daemon = await store_factory(), await store_factory()
    await add(cli, "job-1")
    assert ["job-1"] == await claim(daemon, owner="daemon")


# --- backend specifics -------------------------------------------------------


async def test_sqlite_data_survives_reopen_and_sets_schema_version(tmp_path: Path) -> None:
    """A closed and reopened SQLite file keeps its jobs, and records the schema version."""
    path = tmp_path / "deep" / "dir" / "state.db"
    store = SqliteStore(str(path))
    await store.open()
    await add(store, "job-1")
    await store.add_deliveries([make_delivery("d1")])
    await store.set_meta("k", "v")
    await store.close()
    reopened = SqliteStore(str(path))
    await reopened.open()
    try:
        assert ["job-1"] == [j.id for j in await reopened.list_jobs()]
        assert ["d1"] == ids(await reopened.list_deliveries())
        assert "v" == await reopened.get_meta("k")
    finally:
        await reopened.close()
    with sqlite3.connect(path) as conn:
        assert SCHEMA_VERSION == conn.execute("PRAGMA user_version").fetchone()[0]
        assert "wal" == conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_sqlite_claimers_in_threads_never_share_a_job(tmp_path: Path) -> None:
    """Separate connections in separate threads (like separate processes) never share a job."""
    path = str(tmp_path / "state.db")

    async def seed() -> None:
        store = SqliteStore(path)
        await store.open()
        for index in range(200):
            await add(store, f"job-{index:03d}", at=NOW - index)
        await store.close()

    async def drain(owner: str) -> list[str]:
        store = SqliteStore(path)
        await store.open()
        got: list[str] = []
        while batch := await store.claim_due_jobs(now=NOW, limit=3, owner=owner, lease=LEASE):
            got.extend(job.id for job in batch)
        await store.close()
        return got

    asyncio.run(seed())
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: asyncio.run(drain(f"w{n}")), range(4)))
    every = [job_id for got in results for job_id in got]
    assert (200, 200) == (len(every), len(set(every)))


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database written by a newer import-watcher is refused with a clear error."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(WatcherError, match="newer"):
        await SqliteStore(str(path)).open()


async def test_sqlite_in_memory_works() -> None:
    """SqliteStore(":memory:") gives a private, working database."""
    store = SqliteStore(":memory:")
    await store.open()
    await add(store, "job-1")
    assert ["job-1"] == [j.id for j in await store.list_jobs()]
    await store.close()


async def test_redis_unreachable_raises_store_unavailable() -> None:
    """A Redis nobody listens on maps to StoreUnavailable, not a redis exception."""
    store = RedisStore("redis://127.0.0.1:1/0?socket_connect_timeout=1", prefix="iw-none")
    with pytest.raises(StoreUnavailable):
        await store.open()


@pytest.mark.parametrize(
    ("url", "kind", "attribute", "value"),
    [
        ("sqlite:///relative/path.db", SqliteStore, "path", "relative/path.db"),
        ("sqlite:////abs/path.db", SqliteStore, "path", "/abs/path.db"),
        ("sqlite:///:memory:", SqliteStore, "path", ":memory:"),
        ("memory://", MemoryStore, None, None),
        ("redis://127.0.0.1:6379/2", RedisStore, "prefix", "import-watcher"),
        ("rediss://h:6380/0?prefix=team-a&socket_timeout=5", RedisStore, "prefix", "team-a"),
    ],
)
def test_open_store_maps_urls(url: str, kind: type, attribute: str | None, value: str) -> None:
    """Each supported URL names the right backend, file path or key prefix."""
    store = open_store(url)
    assert kind is type(store)
    if attribute is not None:
        assert value == getattr(store, attribute)


@pytest.mark.parametrize(
    "url", ["postgres://db/x", "sqlite:///", "sqlite://host/x.db", "nonsense", "redis://h?prefix="]
)
def test_open_store_rejects_other_urls(url: str) -> None:
    """Anything else is a ValueError naming the accepted forms."""
    with pytest.raises(ValueError, match=r"state store|sqlite|prefix"):
        open_store(url)


def test_redis_prefix_is_not_passed_to_the_client() -> None:
    """The prefix query parameter is ours; the client URL keeps only its own parameters."""
    store = open_store("rediss://h:6380/0?prefix=team-a&socket_timeout=5")
    assert isinstance(store, RedisStore)
    assert "rediss://h:6380/0?socket_timeout=5" == store.url
