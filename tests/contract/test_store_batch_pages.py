"""The store contract for renewing batch claims and paging through one batch's jobs, for every backend."""

from __future__ import annotations

from tests.contract.batchkit import SETTLE, batch, claim_batches, end, held, join, settled_batch
from tests.contract.storekit import LEASE, NOW, StoreFactory, ids
from watcher.models import BatchPhase, JobRef, Outcome
from watcher.store import StateStore

CLAIMED_AT = NOW + SETTLE  # when settled_batch claims, so its lease runs until CLAIMED_AT + LEASE


async def test_renew_batches_extends_a_live_claim_so_nobody_else_can_take_it(store: StateStore) -> None:
    """A renewed claim outlives its first lease: no other claim gets it, and the holder still finishes."""
    claimed = await settled_batch(store)
    renewed_at = CLAIMED_AT + LEASE - 1
    assert [True] == await store.renew_batches([("nightly", held(claimed))], now=renewed_at, lease=LEASE)
    assert [] == await store.renew_batches([], now=renewed_at, lease=LEASE)
    assert [] == await claim_batches(store, CLAIMED_AT + LEASE + 1, "B")  # past the first lease, inside the new
    assert True is await store.finish_batch(
        "nightly", token=held(claimed), now=renewed_at + LEASE - 0.5, summary_id="s-1", deliveries=[]
    )
    assert BatchPhase.FINISHED == (await batch(store)).phase


async def test_renew_batches_refuses_a_stale_token_and_leaves_the_holder_be(store_factory: StoreFactory) -> None:
    """A first holder whose claim lapsed and was taken over cannot renew; the answers follow the input order."""
    a, b = await store_factory(), await store_factory()
    stale = await settled_batch(a)
    later = CLAIMED_AT + LEASE + 1
    (fresh,) = await claim_batches(b, later, "B")
    leases = [("nightly", held(stale)), ("nightly", held(fresh)), ("ghost", held(fresh))]
    assert [False, True, False] == await a.renew_batches(leases, now=later + 1, lease=LEASE)
    assert [False] == await a.renew_batches([("nightly", held(fresh) + "x")], now=later + 1, lease=LEASE)
    assert True is await b.finish_batch(
        "nightly", token=held(fresh), now=later + LEASE, summary_id="s-1", deliveries=[]
    )  # renewed at later + 1 by its own token: alive past its first lease


async def test_renew_batches_after_the_lease_ran_out_is_refused_even_when_nobody_claimed(store: StateStore) -> None:
    """At `until` the claim is over: renewing it fails, and the batch is claimable by anyone."""
    claimed = await settled_batch(store)
    until = CLAIMED_AT + LEASE
    assert [False] == await store.renew_batches([("nightly", held(claimed))], now=until, lease=LEASE)
    assert ["nightly"] == [b.name for b in await claim_batches(store, until, "B")]


async def test_list_jobs_of_a_batch_pages_by_added_at_then_id_and_filters_by_state(store: StateStore) -> None:
    """`batch` keeps that batch's jobs, in (added_at, id) order, with the same cursor and `state` filter."""
    await join(store, "b", at=NOW + 1)
    await join(store, "a", at=NOW + 1)
    await join(store, "z", at=NOW)
    await join(store, "c", at=NOW + 2)
    await join(store, "x", "other", at=NOW)
    assert await store.add_job(JobRef("loose"), now=NOW, first_poll_at=NOW)
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while (page := await store.list_jobs(batch="nightly", limit=2, after=after)) and len(pages) < 5:
        pages.append(ids(page))
        after = (page[-1].added_at, page[-1].id)
    assert [["z", "a"], ["b", "c"]] == pages
    await end(store, "a", Outcome.FAILED, at=NOW + 3)
    await end(store, "x", Outcome.FAILED, at=NOW + 3)
    assert ["a"] == ids(await store.list_jobs(batch="nightly", state="failed"))
    assert ["z", "b", "c"] == ids(await store.list_jobs(batch="nightly", state="watching"))
    assert ["b"] == ids(await store.list_jobs(batch="nightly", state="watching", after=(NOW, "z"), limit=1))
    assert [] == await store.list_jobs(batch="nightly", limit=0)
    assert [] == await store.list_jobs(batch="ghost")


async def test_list_jobs_of_a_batch_follows_removals_purges_and_moves(store: StateStore) -> None:
    """A removed or purged member leaves the batch's listing; a job watched again in another batch moves with it."""
    for job_id in ("j1", "j2", "j3", "j4"):
        await join(store, job_id, at=NOW)
    await end(store, "j2", at=NOW + 1)
    assert 1 == await store.purge_finished(before=NOW + 2, now=NOW + 3)
    assert True is await store.remove_job("j3", now=NOW + 4)
    await end(store, "j4", at=NOW + 5)
    assert True is await join(store, "j4", "second", at=NOW + 6, again=True)
    assert (["j1"], ["j4"]) == (
        ids(await store.list_jobs(batch="nightly")), ids(await store.list_jobs(batch="second")),
    )  # fmt: skip
    assert ids(await store.batch_jobs("nightly")) == ids(await store.list_jobs(batch="nightly"))
