"""One contract for every StateStore backend: memory, SQLite and Redis behave alike (jobs).

The outbox, leases and tombstones have their own test_store_*.py files; backend-only
behaviour lives in test_store_backends.py and test_sqlite_failures.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from tests.contract.storekit import (
    LEASE,
    NOW,
    RICH_EVENT,
    StoreFactory,
    add,
    claim,
    claim_one,
    finish,
    get,
    ids,
    make_delivery,
    settle,
    token,
    unleased,
)
from watcher.models import WATCHING, JobRef, JobState, Outcome, PollUpdate, Snapshot
from watcher.store import StateStore
from watcher.store.base import AddsJobs


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
    assert False is await store.add_job(JobRef("job-1", {"v": "2"}), now=NOW + 5, first_poll_at=NOW + 50)
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


async def test_claimed_job_is_leased_until_expiry_then_claimable_by_another(store: StateStore) -> None:
    """A claimed job is hidden while its lease lives; afterwards another owner may claim it."""
    await add(store, "job-1")
    (first,) = await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE)
    assert [] == await store.claim_due_jobs(now=NOW + LEASE - 1, limit=5, owner="w2", lease=LEASE)
    (again,) = await store.claim_due_jobs(now=NOW + LEASE, limit=5, owner="w2", lease=LEASE)
    update = PollUpdate(next_poll_at=NOW + 60, polls=1, transient_errors=0, snapshot=None)
    assert False is await store.record_poll("job-1", update, token=token(first), now=NOW + LEASE)
    assert True is await store.record_poll("job-1", update, token=token(again), now=NOW + LEASE)


async def test_record_poll_stores_update_and_releases_lease(store: StateStore) -> None:
    """record_poll writes polls, errors, snapshot and schedule, and frees the job for later."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    snapshot = Snapshot(status="pending", job_type="upsert", results={"requested_count": 5})
    update = PollUpdate(next_poll_at=NOW + 5, polls=1, transient_errors=2, snapshot=snapshot)
    assert True is await store.record_poll("job-1", update, token=token(held), now=NOW)
    job = await get(store, "job-1")
    assert (NOW + 5, 1, 2, snapshot) == (job.next_poll_at, job.polls, job.transient_errors, job.snapshot)
    assert [] == await store.claim_due_jobs(now=NOW + 4, limit=5, owner="w2", lease=LEASE)
    assert ["job-1"] == await claim(store, now=NOW + 5, owner="w2")
    assert False is await store.record_poll("job-1", update, token=token(held), now=NOW + 5)


async def test_record_poll_with_wrong_token_is_refused(store: StateStore) -> None:
    """Someone not holding the lease cannot write a poll, and the job is unchanged."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1", owner="w1")
    update = PollUpdate(next_poll_at=NOW + 5, polls=9, transient_errors=0, snapshot=None)
    assert False is await store.record_poll("job-1", update, token="intruder", now=NOW)
    assert False is await store.record_poll("job-1", update, token="w1", now=NOW)  # the owner is no token
    assert False is await store.record_poll("unknown", update, token=token(held), now=NOW)
    assert 0 == (await get(store, "job-1")).polls


async def test_record_poll_without_a_claim_is_refused(store: StateStore) -> None:
    """A job nobody claimed cannot be written to."""
    await add(store, "job-1")
    update = PollUpdate(next_poll_at=NOW + 5, polls=1, transient_errors=0, snapshot=None)
    assert False is await store.record_poll("job-1", update, token="w1", now=NOW)


async def test_concurrent_record_polls_each_get_their_own_answer(store: StateStore) -> None:
    """Polls recorded at the same moment are all written, each answered on its own."""
    for job_id in ("job-1", "job-2", "job-3"):
        await add(store, job_id)
    jobs = await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE)
    assert ["job-1", "job-2", "job-3"] == ids(jobs)
    updates = [PollUpdate(next_poll_at=NOW + 5 + i, polls=i, transient_errors=0, snapshot=None) for i in (1, 2, 3)]
    answers = await asyncio.gather(
        store.record_poll("job-1", updates[0], token=token(jobs[0]), now=NOW),
        store.record_poll("job-2", updates[1], token="intruder", now=NOW),
        store.record_poll("job-3", updates[2], token=token(jobs[2]), now=NOW),
    )
    assert [True, False, True] == list(answers)
    assert [1, 0, 3] == [(await get(store, job_id)).polls for job_id in ("job-1", "job-2", "job-3")]


async def test_record_polls_answers_each_update_in_order(store: StateStore) -> None:
    """record_polls writes what record_poll would, for each job it may, and answers each in order."""
    for job_id in ("job-1", "job-2", "job-3"):
        await add(store, job_id)
    one = await claim_one(store, "job-1", owner="w1")
    three = await claim_one(store, "job-3", owner="w1")
    snapshot = Snapshot("pending", "upsert", {"requested_count": 5, "extra": {"k": [1]}}, "s")
    updates = [
        ("job-1", token(one), PollUpdate(next_poll_at=NOW + 5, polls=1, transient_errors=2, snapshot=snapshot)),
        ("job-2", token(one), PollUpdate(next_poll_at=NOW + 6, polls=9, transient_errors=0, snapshot=None)),
        ("unknown", token(one), PollUpdate(next_poll_at=NOW + 7, polls=9, transient_errors=0, snapshot=None)),
        ("job-3", token(three), PollUpdate(next_poll_at=NOW + 8, polls=3, transient_errors=0, snapshot=None)),
    ]
    assert [True, False, False, True] == await store.record_polls(updates, now=NOW)
    assert [] == await store.record_polls([], now=NOW)
    job1, job2, job3 = [await get(store, job_id) for job_id in ("job-1", "job-2", "job-3")]
    assert (NOW + 5, 1, 2, snapshot) == (job1.next_poll_at, job1.polls, job1.transient_errors, job1.snapshot)
    assert (NOW, 0) == (job2.next_poll_at, job2.polls)
    assert (NOW + 8, 3, None) == (job3.next_poll_at, job3.polls, job3.snapshot)
    # The leases are released: the jobs are due again at their new times, for anyone.
    assert ["job-2"] == await claim(store, now=NOW + 4, owner="w2")
    assert ["job-1", "job-3"] == await claim(store, now=NOW + 8, owner="w2")
    assert [False] == await store.record_polls(updates[:1], now=NOW + 8)


async def test_record_polls_equals_record_poll(store: StateStore) -> None:
    """The same update stored either way reads back the same."""
    await add(store, "one")
    await add(store, "many")
    one = await claim_one(store, "one")
    many = await claim_one(store, "many")
    snapshot = Snapshot("pending", None, {"requested_count": 7, "note": "naïve ☕"}, None, None)
    update = PollUpdate(next_poll_at=NOW + 9, polls=4, transient_errors=1, snapshot=snapshot)
    assert True is await store.record_poll("one", update, token=token(one), now=NOW)
    assert [True] == await store.record_polls([("many", token(many), update)], now=NOW)
    assert replace(await get(store, "one"), id="many") == await get(store, "many")


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
        now = NOW + polls
        (job,) = await store.claim_due_jobs(now=now, limit=5, owner="w1", lease=LEASE)
        assert (polls - 1, variants[polls - 2] if polls > 1 else None) == (job.polls, job.snapshot)
        update = PollUpdate(next_poll_at=now + 1, polls=polls, transient_errors=0, snapshot=snapshot)
        if batched:
            assert [True] == await store.record_polls([("job-1", token(job), update)], now=now)
        else:
            assert True is await store.record_poll("job-1", update, token=token(job), now=now)
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
        assert True is await store.record_poll("job-1", update, token=token(job), now=at)
        other = second if store is first else first
        (seen,) = await other.claim_due_jobs(now=at + 1, limit=5, owner="w1", lease=LEASE)
        assert snapshot == seen.snapshot
        await other.release_job("job-1", token=token(seen))


async def test_record_outcome_writes_outcome_and_deliveries_together(store: StateStore) -> None:
    """A final outcome and its deliveries appear together; the job is no longer watched."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    snapshot = Snapshot("errored", "upsert", {"errored_count": 3, "extra": {"k": [1]}}, "s", "f")
    deliveries = [make_delivery("d1", event=RICH_EVENT), make_delivery("d2", created=NOW + 1)]
    assert True is await store.record_outcome(
        "job-1", token=token(held), now=NOW, outcome=Outcome.ERRORED, snapshot=snapshot,
        polls=7, detected_at=NOW + 3, deliveries=deliveries,
    )  # fmt: skip
    job = await get(store, "job-1")
    assert (Outcome.ERRORED, "errored", snapshot, 7, NOW + 3) == (
        job.outcome, job.state, job.snapshot, job.polls, job.detected_at,
    )  # fmt: skip
    assert deliveries == await store.list_deliveries(["job-1"])
    assert [] == await store.claim_due_jobs(now=NOW + 1e6, limit=5, owner="w2", lease=LEASE)


async def test_record_outcome_refuses_a_second_outcome(store: StateStore) -> None:
    """A job that is already final keeps its outcome and gains no deliveries."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    for outcome, delivery_id, accepted in ((Outcome.COMPLETED, "d1", True), (Outcome.FAILED, "d2", False)):
        assert accepted is await store.record_outcome(
            "job-1", token=token(held), now=NOW, outcome=outcome, snapshot=None, polls=1, detected_at=NOW,
            deliveries=[make_delivery(delivery_id)],
        )  # fmt: skip
    assert Outcome.COMPLETED == (await get(store, "job-1")).outcome
    assert ["d1"] == [d.id for d in await store.list_deliveries()]


async def test_record_outcome_with_wrong_token_writes_nothing(store: StateStore) -> None:
    """A lost lease means no outcome and no deliveries."""
    await add(store, "job-1")
    await claim_one(store, "job-1", owner="w1")
    assert False is await store.record_outcome(
        "job-1", token="w2", now=NOW, outcome=Outcome.FAILED, snapshot=None, polls=1,
        detected_at=NOW, deliveries=[make_delivery("d1")],
    )  # fmt: skip
    assert None is (await get(store, "job-1")).outcome
    assert [] == await store.list_deliveries()


async def test_record_outcome_without_snapshot_stores_none(store: StateStore) -> None:
    """An outcome with no SendGrid answer (not_found) stores snapshot None."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    await store.record_outcome(
        "job-1", token=token(held), now=NOW, outcome=Outcome.NOT_FOUND, snapshot=None, polls=4,
        detected_at=NOW, deliveries=[],
    )  # fmt: skip
    job = await get(store, "job-1")
    assert ("not_found", None) == (job.state, job.snapshot)


async def test_release_job_makes_it_due_again_unchanged(store: StateStore) -> None:
    """A released job is claimable at once with its schedule intact; others cannot release it."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1", owner="w1")
    await store.release_job("job-1", token="w2")
    assert [] == await store.claim_due_jobs(now=NOW, limit=5, owner="w2", lease=LEASE)
    await store.release_job("job-1", token=token(held))
    again = await store.claim_due_jobs(now=NOW, limit=5, owner="w2", lease=LEASE)
    assert [(NOW, 0)] == [(j.next_poll_at, j.polls) for j in again]


async def test_remove_job_removes_it_and_its_pending_deliveries(store: StateStore) -> None:
    """remove_job deletes the job and its deliveries, not other jobs' or alerts."""
    await add(store, "job-1")
    await add(store, "job-2")
    await finish(store, "job-1", [make_delivery("d1")])
    await store.add_deliveries([make_delivery("d2", job_id="job-2"), make_delivery("a", job_id=None)])
    assert True is await store.remove_job("job-1", now=NOW)
    assert False is await store.remove_job("job-1", now=NOW)
    assert None is await store.get_job("job-1")
    assert ["a", "d2"] == sorted(d.id for d in await store.list_deliveries())
    claimed = await store.claim_due_deliveries(now=NOW, limit=10, owner="w1", lease=LEASE)
    assert ["a", "d2"] == sorted(d.id for d in claimed)


async def test_removed_job_is_not_claimed(store: StateStore) -> None:
    """A removed watching job disappears from the due queue."""
    await add(store, "job-1")
    await store.remove_job("job-1", now=NOW)
    assert ([], None) == (
        await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE),
        await store.next_job_due_at(),
    )


async def test_spread_overdue_spreads_within_window_and_leaves_future_jobs(store: StateStore) -> None:
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
    held = await claim_one(store, "early")
    await store.record_outcome(
        "early", token=token(held), now=NOW, outcome=Outcome.FAILED, snapshot=None, polls=1,
        detected_at=NOW, deliveries=[],
    )  # fmt: skip
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
    await settle(store, "s1")
    assert 1 == await store.purge_finished(before=NOW + 50, now=NOW)
    assert ["pending", "recent", "watching"] == sorted(j.id for j in await store.list_jobs())
    assert ["p1"] == [d.id for d in await store.list_deliveries()]
    assert 0 == await store.purge_finished(before=NOW + 50, now=NOW)


async def test_claims_return_records_exactly_as_stored(store: StateStore) -> None:
    """What a claim hands out equals what was stored (plus its lease), unicode and nesting included."""
    labels = {"équipe": "croissance 🚀", "quote": 'a "b" / \\ c'}
    await store.add_job(JobRef("job-1", labels, ("slack",)), now=NOW - 1, first_poll_at=NOW)
    delivery = make_delivery("d1", event=RICH_EVENT)
    await store.add_deliveries([delivery])
    claimed_jobs = await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE)
    expected = JobState("job-1", labels, ("slack",), added_at=NOW - 1, next_poll_at=NOW)
    assert [expected] == unleased(claimed_jobs)
    claimed = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    assert [delivery] == unleased(claimed)
