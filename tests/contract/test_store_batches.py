"""The store contract for batches: counted as jobs join, end and leave; claimed and finished once."""

from __future__ import annotations

import asyncio

from tests.contract.batchkit import SETTLE, batch, claim_batches, completed_batch, end, held, join, settled_batch
from tests.contract.storekit import LEASE, NOW, StoreFactory, claim_one, get, ids, make_delivery, token
from watcher.models import Batch, BatchPhase, JobRef, Outcome
from watcher.store import StateStore
from watcher.store.base import AddsJobs


async def test_joining_counts_the_job_and_starts_an_open_batch(store: StateStore) -> None:
    """add_job and add_jobs count each new member once; the batch starts at its first join."""
    assert True is await join(store, "job-1")
    assert isinstance(store, AddsJobs)
    refs = [JobRef("job-2", batch="nightly"), JobRef("job-3", batch="other"), JobRef("loose")]
    assert [True, True, True] == await store.add_jobs(refs, now=NOW + 5, first_poll_at=NOW)
    assert False is await join(store, "job-1", at=NOW + 9)  # already tracked: not counted again
    assert Batch("nightly", BatchPhase.OPEN, 2, 0, {}, started_at=NOW, quiet_since=NOW + 5) == await batch(store)
    assert ("nightly", None) == ((await get(store, "job-2")).batch, (await get(store, "loose")).batch)
    assert 1 == (await batch(store, "other")).jobs
    assert None is await store.get_batch("ghost")


async def test_outcomes_are_counted_and_errors_stored_with_them(store: StateStore) -> None:
    """record_outcome counts the outcome in the batch and keeps its errors summary on the job."""
    for job_id in ("job-1", "job-2", "job-3"):
        await join(store, job_id)
    errors = {"rows": 3, "top_reasons": [{"reason": "invalid email", "count": 3}], "note": "café"}
    assert True is await end(store, "job-1", Outcome.ERRORED, at=NOW + 10, errors=errors)
    assert True is await end(store, "job-2", Outcome.COMPLETED, at=NOW + 20)
    held_job = await claim_one(store, "job-3", now=NOW + 21)
    assert False is await store.record_outcome(
        "job-3", token=token(held_job) + "x", now=NOW + 21, outcome=Outcome.FAILED, snapshot=None, polls=1,
        detected_at=NOW + 21, deliveries=[],
    )  # fmt: skip
    found = await batch(store)
    assert (3, 2, {"errored": 1, "completed": 1}, NOW + 20) == (
        found.jobs, found.final, dict(found.outcomes), found.quiet_since,
    )  # fmt: skip
    assert errors == (await get(store, "job-1")).errors
    assert None is (await get(store, "job-2")).errors


async def test_a_batch_is_claimed_only_once_all_are_final_and_it_settled(store: StateStore) -> None:
    """Not before `settle` after its last outcome, nor while a job is watched; then once, leased."""
    await join(store, "job-1")
    await join(store, "job-2")
    await join(store, "watched", "busy")
    await end(store, "job-1", at=NOW + 1)
    assert [] == await claim_batches(store, NOW + 1 + SETTLE)  # job-2 still watched
    await end(store, "job-2", at=NOW + 2)
    assert [] == await claim_batches(store, NOW + 1.5 + SETTLE)
    (claimed,) = await claim_batches(store, NOW + 2 + SETTLE)
    assert ("nightly", NOW + 2 + SETTLE + LEASE) == (claimed.name, claimed.lease.until if claimed.lease else None)
    assert [] == await claim_batches(store, NOW + 3 + SETTLE)  # held by that lease
    assert None is (await batch(store)).lease


async def test_two_replicas_claiming_at_once_get_the_batch_once_and_a_stale_finish_is_refused(
    store_factory: StoreFactory,
) -> None:
    """Concurrent claims hand the batch to one; after its lease ran out only the new holder finishes."""
    a, b = await store_factory(), await store_factory()
    await completed_batch(a)
    first = await asyncio.gather(claim_batches(a, NOW + SETTLE, "A"), claim_batches(b, NOW + SETTLE, "B"))
    assert 1 == sum(len(claimed) for claimed in first)
    (stale,) = first[0] or first[1]
    later = NOW + SETTLE + LEASE + 1
    (fresh,) = await claim_batches(b, later, "B")
    assert False is await a.finish_batch(
        "nightly", token=held(stale), now=later, summary_id="s-stale", deliveries=[make_delivery("x", job_id=None)]
    )
    assert True is await b.finish_batch(
        "nightly", token=held(fresh), now=later, summary_id="s-1", deliveries=[make_delivery("y", job_id=None)]
    )
    assert False is await b.finish_batch("nightly", token=held(fresh), now=later, summary_id="s-2", deliveries=[])
    found = await batch(a)
    assert (BatchPhase.FINISHED, 1, "s-1", later) == (
        found.phase, found.summaries, found.last_summary_id, found.finished_at,
    )  # fmt: skip
    assert ["y"] == ids(await a.list_deliveries())


async def test_two_replicas_ending_the_last_two_jobs_at_once_count_both(store_factory: StoreFactory) -> None:
    """Outcomes recorded concurrently by two instances are both counted: the batch settles, and is claimed once."""
    a, b = await store_factory(), await store_factory()
    for job_id in ("job-1", "job-2"):
        await join(a, job_id)
    one, two = await claim_one(a, "job-1", "A"), await claim_one(b, "job-2", "B")

    async def record(store: StateStore, job_id: str, held_token: str) -> bool:
        return await store.record_outcome(
            job_id, token=held_token, now=NOW + 1, outcome=Outcome.COMPLETED, snapshot=None, polls=1,
            detected_at=NOW + 1, deliveries=[],
        )  # fmt: skip

    assert [True, True] == list(await asyncio.gather(record(a, "job-1", token(one)), record(b, "job-2", token(two))))
    assert (2, 2) == ((await batch(b)).jobs, (await batch(b)).final)
    claims = await asyncio.gather(claim_batches(a, NOW + 1 + SETTLE, "A"), claim_batches(b, NOW + 1 + SETTLE, "B"))
    assert 1 == sum(len(claimed) for claimed in claims)


async def test_a_finish_after_the_lease_ran_out_is_refused_even_with_the_right_token(store: StateStore) -> None:
    """At or after `until` the holder's finish writes nothing, whether or not anyone claimed since."""
    claimed = await settled_batch(store)
    late = NOW + SETTLE + LEASE
    summary = [make_delivery("summary", job_id=None)]
    assert False is await store.finish_batch(
        "nightly", token=held(claimed), now=late, summary_id="s", deliveries=summary
    )
    assert ((BatchPhase.OPEN, 0), []) == (
        ((await batch(store)).phase, (await batch(store)).summaries),
        [d.id for d in await store.list_deliveries() if d.id == "summary"],
    )
    assert True is await store.finish_batch(
        "nightly", token=held(claimed), now=late - 0.5, summary_id="s", deliveries=summary
    )


async def test_a_job_joining_after_the_claim_makes_finish_refuse_and_write_nothing(store: StateStore) -> None:
    """The batch changed under the claim: finish answers False, inserts no delivery, stays open."""
    claimed = await settled_batch(store)
    assert True is await join(store, "late", at=NOW + SETTLE + 1)
    assert False is await store.finish_batch(
        "nightly", token=held(claimed), now=NOW + SETTLE + 2, summary_id="s-1",
        deliveries=[make_delivery("summary", job_id=None)],
    )  # fmt: skip
    found = await batch(store)
    assert (BatchPhase.OPEN, 3, 2, 0, NOW + SETTLE + 1) == (
        found.phase, found.jobs, found.final, found.summaries, found.quiet_since,
    )  # fmt: skip
    assert [] == [d.id for d in await store.list_deliveries() if d.id == "summary"]


async def test_a_job_removed_after_the_claim_makes_finish_refuse(store: StateStore) -> None:
    """Any change to the members revokes the claim: the summary would describe a batch that is gone."""
    claimed = await settled_batch(store, jobs=3)
    assert True is await store.remove_job("job-0", now=NOW + SETTLE + 1)
    assert False is await store.finish_batch(
        "nightly", token=held(claimed), now=NOW + SETTLE + 2, summary_id="s-1", deliveries=[]
    )
    assert [] == await claim_batches(store, NOW + SETTLE + 2)  # settles again from the removal
    assert ["nightly"] == [b.name for b in await claim_batches(store, NOW + 2 * SETTLE + 1)]


async def test_a_job_joining_a_finished_batch_reopens_it_and_the_next_summary_continues(store: StateStore) -> None:
    """A late job reopens the batch keeping summaries and last_summary_id; the next finish counts on."""
    claimed = await settled_batch(store)
    done_at = NOW + SETTLE
    assert await store.finish_batch("nightly", token=held(claimed), now=done_at, summary_id="s-1", deliveries=[])
    await join(store, "late", at=done_at + 10)
    reopened = await batch(store)
    assert (BatchPhase.OPEN, 3, 2, 1, "s-1", done_at, NOW) == (
        reopened.phase, reopened.jobs, reopened.final, reopened.summaries, reopened.last_summary_id,
        reopened.finished_at, reopened.started_at,
    )  # fmt: skip
    await end(store, "late", Outcome.FAILED, at=done_at + 20)
    (again,) = await claim_batches(store, done_at + 20 + SETTLE)
    assert ("s-1", {"completed": 2, "failed": 1}) == (again.last_summary_id, dict(again.outcomes))
    assert await store.finish_batch("nightly", token=held(again), now=done_at + 99, summary_id="s-2", deliveries=[])
    found = await batch(store)
    assert (BatchPhase.FINISHED, 2, "s-2", done_at + 99) == (
        found.phase, found.summaries, found.last_summary_id, found.finished_at,
    )  # fmt: skip


async def test_remove_job_takes_it_out_of_the_counts_and_an_emptied_batch_goes(store: StateStore) -> None:
    """Removing a member uncounts it (and its outcome); the last member of an unsummarised batch takes it along."""
    await join(store, "job-1")
    await join(store, "job-2")
    await end(store, "job-1", Outcome.ERRORED, at=NOW + 1)
    assert True is await store.remove_job("job-1", now=NOW + 5)
    found = await batch(store)
    assert (1, 0, {}, NOW + 5) == (found.jobs, found.final, dict(found.outcomes), found.quiet_since)
    assert True is await store.remove_job("job-2", now=NOW + 6)
    assert None is await store.get_batch("nightly")
    assert [] == await store.list_batches()


async def test_removing_from_a_finished_batch_uncounts_but_keeps_it_finished(store: StateStore) -> None:
    """A summarised batch keeps its phase and summary when members go, even the last one."""
    claimed = await settled_batch(store)
    await store.finish_batch("nightly", token=held(claimed), now=NOW + SETTLE, summary_id="s-1", deliveries=[])
    await store.remove_job("job-0", now=NOW + SETTLE + 1)
    await store.remove_job("job-1", now=NOW + SETTLE + 2)
    found = await batch(store)
    assert (BatchPhase.FINISHED, 0, 0, "s-1") == (found.phase, found.jobs, found.final, found.last_summary_id)
    assert [] == await claim_batches(store, NOW + 10 * SETTLE)


async def test_watching_a_final_job_again_moves_its_membership(store: StateStore) -> None:
    """again=True uncounts the replaced job from its old batch before the new watch joins."""
    await join(store, "job-1", "first")
    await join(store, "job-2", "first")
    await end(store, "job-1", Outcome.FAILED, at=NOW + 1)
    assert True is await join(store, "job-1", "second", at=NOW + 2, again=True)
    first, second = await batch(store, "first"), await batch(store, "second")
    assert (1, 0, {}) == (first.jobs, first.final, dict(first.outcomes))
    assert (1, 0) == (second.jobs, second.final)
    await end(store, "job-1", Outcome.COMPLETED, at=NOW + 3)
    assert True is await join(store, "job-1", "second", at=NOW + 4, again=True)
    second = await batch(store, "second")
    assert (1, 0, {}) == (second.jobs, second.final, dict(second.outcomes))


async def test_finish_inserts_its_deliveries_with_it_and_a_refused_finish_none(store: StateStore) -> None:
    """Summary deliveries appear exactly when the batch is marked finished; present ids are skipped."""
    claimed = await settled_batch(store)
    await store.add_deliveries([make_delivery("already", job_id=None)])
    summary = [make_delivery("sum-slack", job_id=None), make_delivery("already", job_id=None, notifier="other")]
    assert False is await store.finish_batch(
        "nightly", token=held(claimed) + "x", now=NOW + SETTLE, summary_id="s-1", deliveries=summary
    )
    assert ["already"] == ids(await store.list_deliveries())
    assert True is await store.finish_batch(
        "nightly", token=held(claimed), now=NOW + SETTLE, summary_id="s-1", deliveries=summary
    )
    found = await store.list_deliveries()
    assert (["already", "sum-slack"], "console") == (sorted(ids(found)), found[0].notifier)


async def test_release_batch_makes_it_claimable_at_once_and_a_stale_token_frees_nothing(store: StateStore) -> None:
    """A released claim is due again for anyone; a release under a stale token leaves the holder be."""
    first = await settled_batch(store)
    await store.release_batch("nightly", token=held(first))
    (second,) = await claim_batches(store, NOW + SETTLE, "B")
    await store.release_batch("nightly", token=held(first))
    assert [] == await claim_batches(store, NOW + SETTLE, "C")
    assert await store.finish_batch("nightly", token=held(second), now=NOW + SETTLE, summary_id="s", deliveries=[])


async def test_batch_jobs_lists_the_members_in_order_and_purge_keeps_the_counts(store: StateStore) -> None:
    """batch_jobs is ordered by (added_at, id); a purged member leaves the list, not the counts."""
    await join(store, "b", at=NOW + 1)
    await join(store, "a", at=NOW + 1)
    await join(store, "z", at=NOW)
    await join(store, "x", "other")
    assert ["z", "a", "b"] == ids(await store.batch_jobs("nightly"))
    await end(store, "a", at=NOW + 2)
    assert 1 == await store.purge_finished(before=NOW + 3, now=NOW + 4)
    assert ["z", "b"] == ids(await store.batch_jobs("nightly"))
    found = await batch(store)
    assert (3, 1, {"completed": 1}) == (found.jobs, found.final, dict(found.outcomes))
    assert [] == await store.batch_jobs("ghost")


async def test_list_batches_pages_by_started_at_then_name_and_filters_by_phase(store: StateStore) -> None:
    """Keyset paging over (started_at, name) sees each batch once; `phase` keeps one phase."""
    for name, at in [("m", NOW), ("k", NOW), ("a", NOW + 1), ("z", NOW + 2), ("b", NOW + 2)]:
        await join(store, f"job-{name}", name, at=at)
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while (page := await store.list_batches(limit=2, after=after)) and len(pages) < 5:
        pages.append([b.name for b in page])
        after = (page[-1].started_at, page[-1].name)
    assert [["k", "m"], ["a", "b"], ["z"]] == pages
    await end(store, "job-a", at=NOW + 3)
    (claimed,) = await claim_batches(store, NOW + 3 + SETTLE)
    assert await store.finish_batch("a", token=held(claimed), now=NOW + 4 + SETTLE, summary_id="s", deliveries=[])
    assert ["a"] == [b.name for b in await store.list_batches(phase="finished")]
    assert ["m", "b", "z"] == [b.name for b in await store.list_batches(phase="open", after=(NOW, "k"))]
    assert ["b"] == [b.name for b in await store.list_batches(phase="open", after=(NOW, "m"), limit=1)]
