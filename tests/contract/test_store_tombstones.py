"""The store contract for tombstones, retention and paging, for every backend."""

from __future__ import annotations

from dataclasses import replace

from tests.contract.storekit import NOW, add, claim, claim_one, finish, get, ids, make_delivery, poll, settle, token
from watcher.models import JobRef, Outcome, Snapshot, Tombstone, TombstoneReason
from watcher.store import StateStore
from watcher.store.base import AddsJobs

DAY = 86_400.0


async def test_remove_job_leaves_a_stopped_tombstone_that_keeps_the_job_out(store: StateStore) -> None:
    """A DELETEd job is buried as STOPPED; adding it again is refused until asked explicitly."""
    await add(store, "job-1")
    assert True is await store.remove_job("job-1", now=NOW + 5)
    assert {"job-1": Tombstone("job-1", NOW + 5, TombstoneReason.STOPPED)} == dict(await store.tombstones(["job-1"]))
    assert False is await store.add_job(JobRef("job-1"), now=NOW + 6, first_poll_at=NOW + 6)
    assert isinstance(store, AddsJobs)
    assert [False, True] == await store.add_jobs([JobRef("job-1"), JobRef("job-2")], now=NOW + 6, first_poll_at=NOW)
    assert None is await store.get_job("job-1")
    assert False is await store.remove_job("ghost", now=NOW)  # unknown: nothing to bury
    assert {} == dict(await store.tombstones(["ghost"]))


async def test_add_again_lifts_the_tombstone_and_starts_a_new_watch(store: StateStore) -> None:
    """With again=True a stopped id is watched afresh from the new added_at, and the tombstone is gone."""
    await add(store, "job-1")
    await store.remove_job("job-1", now=NOW + 5)
    assert True is await store.add_job(JobRef("job-1", {"v": "2"}), now=NOW + 10, first_poll_at=NOW + 11, again=True)
    job = await get(store, "job-1")
    assert (NOW + 10, NOW + 11, 0, {"v": "2"}) == (job.added_at, job.next_poll_at, job.polls, job.labels)
    assert {} == dict(await store.tombstones(["job-1"]))
    assert False is await store.add_job(JobRef("job-1"), now=NOW + 12, first_poll_at=NOW + 12)


async def test_add_again_replaces_a_final_job_and_keeps_a_watching_one(store: StateStore) -> None:
    """again=True turns a finished job into a fresh watch (its settled deliveries go); a watched job stays."""
    await add(store, "done")
    await add(store, "busy")
    await finish(store, "done", [make_delivery("d-old", job_id="done")])
    await settle(store, "d-old")
    assert False is await store.add_job(JobRef("done"), now=NOW + 10, first_poll_at=NOW + 10)
    assert isinstance(store, AddsJobs)
    answers = await store.add_jobs([JobRef("done"), JobRef("busy")], now=NOW + 10, first_poll_at=NOW + 20, again=True)
    assert [True, False] == answers
    fresh, busy = await get(store, "done"), await get(store, "busy")
    assert (NOW + 10, NOW + 20, 0, None, None) == (
        fresh.added_at, fresh.next_poll_at, fresh.polls, fresh.snapshot, fresh.outcome,
    )  # fmt: skip
    assert (NOW, None) == (busy.added_at, busy.outcome)
    assert [] == await store.list_deliveries(["done"])
    assert ["busy"] == await claim(store, now=NOW + 19)


async def test_add_again_keeps_pending_deliveries_of_the_old_watch(store: StateStore) -> None:
    """A finished job whose notification is still pending is replaced, but that delivery still goes out."""
    await add(store, "job-1")
    await finish(store, "job-1", [make_delivery("d-old")])
    assert True is await store.add_job(JobRef("job-1"), now=NOW + 10, first_poll_at=NOW + 10, again=True)
    assert ["d-old"] == ids(await store.list_deliveries(["job-1"]))
    assert ["d-old"] == ids(await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=30))


async def test_purge_finished_leaves_finished_tombstones(store: StateStore) -> None:
    """Purged jobs are remembered as FINISHED at `now`, and a source cannot bring them back."""
    await add(store, "job-1")
    await finish(store, "job-1", [], detected=NOW)
    assert 1 == await store.purge_finished(before=NOW + DAY, now=NOW + 2 * DAY)
    expected = {"job-1": Tombstone("job-1", NOW + 2 * DAY, TombstoneReason.FINISHED)}
    assert expected == dict(await store.tombstones(["job-1", "other"]))
    assert False is await store.add_job(JobRef("job-1"), now=NOW + 3 * DAY, first_poll_at=NOW)
    assert [] == await store.list_jobs()


async def test_purge_finished_is_bounded_oldest_first_and_skips_pending(store: StateStore) -> None:
    """At most `limit` jobs go per call, the earliest detected first; one with a pending delivery stays."""
    for index in range(5):
        await add(store, f"job-{index}")
        await finish(store, f"job-{index}", [], detected=NOW + 10 - index)
    await add(store, "pending")
    await finish(store, "pending", [make_delivery("p1", job_id="pending")], detected=NOW - 100)
    assert 2 == await store.purge_finished(before=NOW + DAY, now=NOW + DAY, limit=2)
    assert ["job-0", "job-1", "job-2", "pending"] == sorted(ids(await store.list_jobs()))
    assert 3 == await store.purge_finished(before=NOW + DAY, now=NOW + DAY, limit=10)
    assert 0 == await store.purge_finished(before=NOW + DAY, now=NOW + DAY, limit=10)
    assert ["pending"] == ids(await store.list_jobs())
    assert ["p1"] == ids(await store.list_deliveries())


async def test_purge_tombstones_forgets_old_ones_in_bounded_batches(store: StateStore) -> None:
    """Tombstones buried before the cutoff go, at most `limit` per call and oldest first; newer ones stay."""
    for index in range(4):
        await add(store, f"job-{index}")
        await store.remove_job(f"job-{index}", now=NOW + index)
    assert 2 == await store.purge_tombstones(before=NOW + 3, limit=2)
    assert ["job-2", "job-3"] == sorted(await store.tombstones([f"job-{i}" for i in range(4)]))
    assert 1 == await store.purge_tombstones(before=NOW + 3)
    assert 0 == await store.purge_tombstones(before=NOW + 3)
    assert ["job-3"] == sorted(await store.tombstones([f"job-{i}" for i in range(4)]))
    assert True is await store.add_job(JobRef("job-0"), now=NOW + 9, first_poll_at=NOW + 9)


async def test_tombstones_looks_up_many_ids_at_once(store: StateStore) -> None:
    """A batch lookup answers only the buried ids among many (more than one SQL chunk), none twice."""
    buried = [f"job-{index:04d}" for index in range(0, 1200, 7)]
    for job_id in buried:
        await add(store, job_id)
        await store.remove_job(job_id, now=NOW)
    asked = [f"job-{index:04d}" for index in range(1200)] + buried[:3]
    found = await store.tombstones(asked)
    assert sorted(buried) == sorted(found)
    assert {TombstoneReason.STOPPED} == {tombstone.reason for tombstone in found.values()}
    assert {} == dict(await store.tombstones([]))


async def test_list_jobs_pages_with_a_cursor_visit_every_job_once(store: StateStore) -> None:
    """Following the (added_at, id) cursor page by page lists every job exactly once, in order,
    also when many share an added_at and with a state filter."""
    expected = []
    for index in range(23):
        job_id = f"j{(index * 7) % 23:02d}"
        await add(store, job_id, added=NOW + index // 5)  # groups of five share a time
        expected.append((NOW + index // 5, job_id))
    expected.sort()
    seen: list[str] = []
    after: tuple[float, str] | None = None
    while page := await store.list_jobs(limit=4, after=after):
        seen.extend(ids(page))
        after = (page[-1].added_at, page[-1].id)
    assert [job_id for _, job_id in expected] == seen
    held = await claim_one(store, expected[3][1])
    await store.record_outcome(
        held.id, token=token(held), now=NOW, outcome=Outcome.COMPLETED, snapshot=Snapshot("completed"),
        polls=1, detected_at=NOW, deliveries=[],
    )  # fmt: skip
    watching = await store.list_jobs(state="watching", limit=3, after=expected[1])
    assert [expected[2][1], expected[4][1], expected[5][1]] == ids(watching)
    assert [] == await store.list_jobs(after=expected[-1])


async def test_list_deliveries_without_events_leaves_the_bodies_out(store: StateStore) -> None:
    """with_events=False answers every field but the event, which is empty."""
    await store.add_deliveries([make_delivery("d1", event={"type": "x", "big": "y" * 10_000})])
    (full,) = await store.list_deliveries(["job-1"])
    (light,) = await store.list_deliveries(["job-1"], with_events=False)
    (light_all,) = await store.list_deliveries(with_events=False)
    assert ({}, {}) == (dict(light.event), dict(light_all.event))
    assert replace(full, event={}) == light
    assert 10_000 == len(full.event["big"])
    assert "x" == full.event_type


async def test_poll_then_remove_then_add_again_is_a_new_watch(store: StateStore) -> None:
    """A polled job that is stopped and added again starts from zero polls and no snapshot."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    assert await store.record_poll("job-1", poll(snapshot=Snapshot("pending")), token=token(held), now=NOW)
    await store.remove_job("job-1", now=NOW + 1)
    assert await store.add_job(JobRef("job-1"), now=NOW + 2, first_poll_at=NOW + 2, again=True)
    job = await get(store, "job-1")
    assert (0, None, NOW + 2) == (job.polls, job.snapshot, job.added_at)
