"""The store contract for fenced leases: tokens, expiry, renewal and release, for every backend."""

from __future__ import annotations

from dataclasses import replace

from tests.contract.storekit import LEASE, NOW, add, claim, claim_one, get, ids, make_delivery, poll, token
from watcher.models import Delivery, DeliveryState, JobState, Outcome
from watcher.store import StateStore


async def test_a_claim_hands_out_a_lease_with_a_token_of_its_own(store: StateStore) -> None:
    """Every claimed copy carries Lease(token, now + lease), and no two claims share a token."""
    await add(store, "job-1")
    await add(store, "job-2")
    await store.add_deliveries([make_delivery("d1"), make_delivery("d2")])
    jobs = await store.claim_due_jobs(now=NOW, limit=5, owner="w1", lease=LEASE)
    deliveries = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    items: list[JobState | Delivery] = [*jobs, *deliveries]
    assert [NOW + LEASE] * 4 == [item.lease.until if item.lease else None for item in items]
    assert 4 == len({token(item) for item in items})
    assert [None, None] == [job.lease for job in [await get(store, "job-1"), await get(store, "job-2")]]


async def test_record_with_a_wrong_token_is_refused_and_changes_nothing(store: StateStore) -> None:
    """A poll, an outcome or a delivery record under someone else's token answers False and writes nothing."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    await store.add_deliveries([make_delivery("d1")])
    (delivery,) = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    wrong = token(held) + "x"
    assert False is await store.record_poll("job-1", poll(polls=5), token=wrong, now=NOW)
    assert [False] == await store.record_polls([("job-1", wrong, poll(polls=5))], now=NOW)
    assert False is await store.record_outcome(
        "job-1", token=wrong, now=NOW, outcome=Outcome.FAILED, snapshot=None, polls=5,
        detected_at=NOW, deliveries=[make_delivery("o1")],
    )  # fmt: skip
    done = replace(delivery, state=DeliveryState.DELIVERED, attempts=1)
    assert False is await store.record_delivery(done, token=token(held), now=NOW)  # a job's token
    job = await get(store, "job-1")
    assert (0, None, NOW) == (job.polls, job.outcome, job.next_poll_at)
    assert [(DeliveryState.PENDING, 0)] == [(d.state, d.attempts) for d in await store.list_deliveries()]
    # The rightful holders still can.
    assert True is await store.record_poll("job-1", poll(polls=1), token=token(held), now=NOW)
    assert True is await store.record_delivery(done, token=token(delivery), now=NOW)


async def test_record_after_the_lease_expired_is_refused_even_with_the_right_token(store: StateStore) -> None:
    """At or after `until` the holder's token writes nothing, whether or not anyone claimed since."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    await store.add_deliveries([make_delivery("d1")])
    (delivery,) = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    late = NOW + LEASE
    assert False is await store.record_poll("job-1", poll(polls=1), token=token(held), now=late)
    assert False is await store.record_outcome(
        "job-1", token=token(held), now=late + 5, outcome=Outcome.COMPLETED, snapshot=None, polls=1,
        detected_at=late, deliveries=[make_delivery("o1")],
    )  # fmt: skip
    done = replace(delivery, state=DeliveryState.DELIVERED, attempts=1)
    assert False is await store.record_delivery(done, token=token(delivery), now=late)
    assert (0, None) == ((await get(store, "job-1")).polls, (await get(store, "job-1")).outcome)
    assert ["d1"] == ids(await store.list_deliveries())
    assert [DeliveryState.PENDING] == [d.state for d in await store.list_deliveries()]
    # Just before the end it was still the holder's.
    assert True is await store.record_poll("job-1", poll(polls=1), token=token(held), now=late - 0.5)


async def test_a_stale_holder_cannot_release_a_fresh_claim(store: StateStore) -> None:
    """A claims, its lease runs out, B claims: A's release leaves B holding and nothing due for others."""
    await add(store, "job-1")
    await store.add_deliveries([make_delivery("d1")])
    stale_job = await claim_one(store, "job-1", owner="A")
    (stale_delivery,) = await store.claim_due_deliveries(now=NOW, limit=5, owner="A", lease=LEASE)
    later = NOW + LEASE + 1
    fresh_job = await claim_one(store, "job-1", owner="B", now=later)
    (fresh_delivery,) = await store.claim_due_deliveries(now=later, limit=5, owner="B", lease=LEASE)
    await store.release_job("job-1", token=token(stale_job))
    await store.release_delivery("d1", token=token(stale_delivery))
    assert [] == await claim(store, now=later, owner="C")
    assert [] == await store.claim_due_deliveries(now=later, limit=5, owner="C", lease=LEASE)
    assert True is await store.record_poll("job-1", poll(), token=token(fresh_job), now=later)
    done = replace(fresh_delivery, state=DeliveryState.DELIVERED, attempts=1)
    assert True is await store.record_delivery(done, token=token(fresh_delivery), now=later)


async def test_renew_extends_a_job_lease_and_refuses_a_stale_token(store: StateStore) -> None:
    """A renewed job is not claimable before its new until; a renew after expiry or by another token fails."""
    await add(store, "job-1")
    await add(store, "job-2")
    one = await claim_one(store, "job-1")
    two = await claim_one(store, "job-2")
    at = NOW + LEASE - 1
    answers = await store.renew_jobs(
        [("job-1", token(one)), ("job-2", "nobody"), ("ghost", token(one))], now=at, lease=LEASE
    )
    assert [True, False, False] == answers
    assert [] == await store.renew_jobs([], now=at, lease=LEASE)
    assert ["job-2"] == await claim(store, now=NOW + LEASE, owner="w2")
    assert [] == await claim(store, now=at + LEASE - 1, owner="w2")
    assert at + LEASE == await store.next_job_due_at()  # the renewed lease is what comes due next
    assert True is await store.record_poll("job-1", poll(), token=token(one), now=at + LEASE - 0.5)
    # job-2 was taken over: its first holder can neither renew nor write.
    assert [False] == await store.renew_jobs([("job-2", token(two))], now=NOW + LEASE, lease=LEASE)
    assert False is await store.record_poll("job-2", poll(), token=token(two), now=NOW + LEASE)


async def test_renew_after_expiry_is_refused_even_when_nobody_claimed(store: StateStore) -> None:
    """A lease that ran out cannot be revived by its holder: the job is due again for anyone."""
    await add(store, "job-1")
    held = await claim_one(store, "job-1")
    assert [False] == await store.renew_jobs([("job-1", token(held))], now=NOW + LEASE, lease=LEASE)
    assert ["job-1"] == await claim(store, now=NOW + LEASE, owner="w2")


async def test_renew_extends_a_delivery_lease_and_refuses_a_stale_token(store: StateStore) -> None:
    """A renewed delivery stays hidden until its new until; a wrong or expired token renews nothing."""
    await store.add_deliveries([make_delivery("d1"), make_delivery("d2")])
    first, second = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    at = NOW + 10
    answers = await store.renew_deliveries([(first.id, token(first)), (second.id, token(first))], now=at, lease=LEASE)
    assert [True, False] == answers
    assert [] == await store.renew_deliveries([], now=at, lease=LEASE)
    assert [second.id] == ids(await store.claim_due_deliveries(now=NOW + LEASE, limit=5, owner="w2", lease=LEASE))
    assert [] == await store.claim_due_deliveries(now=at + LEASE - 1, limit=5, owner="w2", lease=LEASE)
    assert [False] == await store.renew_deliveries([(first.id, token(first))], now=at + LEASE, lease=LEASE)
    assert [first.id] == ids(await store.claim_due_deliveries(now=at + LEASE, limit=5, owner="w2", lease=LEASE))


async def test_release_makes_a_job_and_a_delivery_due_at_once(store: StateStore) -> None:
    """A released claim is claimable again at the same moment, unchanged, by anyone."""
    await add(store, "job-1")
    await store.add_deliveries([make_delivery("d1")])
    held = await claim_one(store, "job-1")
    (delivery,) = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    await store.release_job("job-1", token=token(held))
    await store.release_delivery("d1", token=token(delivery))
    assert NOW == await store.next_job_due_at()
    assert NOW == await store.next_delivery_due_at()
    assert ["job-1"] == await claim(store, now=NOW, owner="w2")
    (again,) = await store.claim_due_deliveries(now=NOW, limit=5, owner="w2", lease=LEASE)
    assert (0, NOW) == (again.attempts, again.next_attempt_at)
    # The released token is spent: it writes nothing any more.
    assert False is await store.record_delivery(delivery, token=token(delivery), now=NOW)
