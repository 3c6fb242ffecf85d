"""The store contract for the outbox, meta and several claimers, run for every backend."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from tests.contract.storekit import (
    LEASE,
    NOW,
    RICH_EVENT,
    StoreFactory,
    add,
    claim,
    finish,
    ids,
    make_delivery,
    token,
)
from watcher.models import DeliveryState, JobRef
from watcher.store import StateStore


async def test_add_deliveries_skips_duplicate_ids(store: StateStore) -> None:
    """Ids already present are skipped and keep their first content."""
    assert 2 == await store.add_deliveries([make_delivery("a", job_id=None), make_delivery("b")])
    changed = make_delivery("a", job_id=None, event={"type": "watcher.alert", "v": 2})
    assert 1 == await store.add_deliveries([changed, make_delivery("c")])
    assert 0 == await store.add_deliveries([])
    stored = {d.id: d for d in await store.list_deliveries()}
    assert {"type": "contact_import.completed"} == stored["a"].event


async def test_claim_due_deliveries_respects_time_order_limit_and_lease(store: StateStore) -> None:
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
    assert False is await store.record_delivery(first[0], token=token(first[0]), now=NOW + LEASE)


async def test_record_delivery_transitions_and_releases(store: StateStore) -> None:
    """A retry stays pending with its new time and error; success settles it for good."""
    await store.add_deliveries([make_delivery("d1")])
    (claimed,) = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    retry = replace(claimed, attempts=1, next_attempt_at=NOW + 60, last_error="HTTP 503 ☹", lease=None)
    assert False is await store.record_delivery(retry, token="w2", now=NOW)
    assert True is await store.record_delivery(retry, token=token(claimed), now=NOW)
    assert False is await store.record_delivery(retry, token=token(claimed), now=NOW)
    assert [retry] == await store.list_deliveries()
    assert [] == await store.claim_due_deliveries(now=NOW + 59, limit=5, owner="w1", lease=LEASE)
    (again,) = await store.claim_due_deliveries(now=NOW + 60, limit=5, owner="w2", lease=LEASE)
    done = replace(again, state=DeliveryState.DELIVERED, attempts=2, last_error=None, lease=None)
    assert True is await store.record_delivery(done, token=token(again), now=NOW + 60)
    assert [done] == await store.list_deliveries()
    assert [] == await store.claim_due_deliveries(now=NOW + 1e6, limit=5, owner="w1", lease=LEASE)


async def test_record_delivery_of_unknown_delivery_is_refused(store: StateStore) -> None:
    """Recording a delivery the store does not hold returns False."""
    assert False is await store.record_delivery(make_delivery("ghost"), token="w1", now=NOW)


async def test_record_deliveries_answers_each_record_as_record_delivery_would(store: StateStore) -> None:
    """Each record needs its token and a live lease; its alerts go in only when its row changed;
    a later record in the same batch sees the earlier ones (the lease they ended)."""
    await store.add_deliveries([make_delivery(name) for name in ("d1", "d2", "d3", "d4")])
    held = {d.id: d for d in await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)}
    retry = replace(held["d1"], attempts=1, next_attempt_at=NOW + 60, last_error="HTTP 503", lease=None)
    done = replace(held["d1"], state=DeliveryState.DELIVERED, attempts=1, lease=None)
    dead = replace(held["d3"], state=DeliveryState.DEAD, attempts=1, last_error="gone", lease=None)
    refused = replace(held["d2"], state=DeliveryState.DEAD, attempts=1, lease=None)
    alerts = {name: make_delivery(name, job_id=None) for name in ("alert-2", "alert-3", "alert-ghost")}
    records = [
        (retry, token(held["d1"]), ()),
        (done, token(held["d1"]), ()),  # the lease ended with the record before it
        (refused, "w9", [alerts["alert-2"]]),  # not its token: nor its alert
        (dead, token(held["d3"]), [alerts["alert-3"]]),
        (make_delivery("ghost"), "w1", [alerts["alert-ghost"]]),
    ]
    assert [True, False, False, True, False] == await store.record_deliveries(records, now=NOW)
    assert [] == await store.record_deliveries([], now=NOW)
    late = replace(held["d4"], state=DeliveryState.DELIVERED, attempts=1, lease=None)
    assert [False] == await store.record_deliveries([(late, token(held["d4"]), ())], now=NOW + LEASE)
    stored = {d.id: d for d in await store.list_deliveries()}
    assert {"d1", "d2", "d3", "d4", "alert-3"} == set(stored)
    assert retry == stored["d1"]
    assert dead == stored["d3"]
    assert DeliveryState.PENDING is stored["d2"].state and 0 == stored["d2"].attempts


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
    job = await store.get_job("job-1")
    assert job is not None
    assert labels == job.labels


async def test_counts_by_state(store: StateStore) -> None:
    """counts totals jobs by state and deliveries by state, zeros included."""
    await add(store, "w")
    await add(store, "f")
    await finish(store, "f", [make_delivery("d1", job_id="f"), make_delivery("d2", job_id="f")])
    await store.add_deliveries([make_delivery("dead", job_id=None, state=DeliveryState.DEAD)])
    counts = await store.counts()
    expected_jobs = {state: 0 for state in ("errored", "failed", "timed_out", "not_found", "ready", "failure")}
    expected_jobs |= {"watching": 1, "completed": 1}
    assert expected_jobs == dict(counts.jobs_by_state)
    assert {"pending": 2, "delivered": 0, "dead": 1} == dict(counts.deliveries_by_state)
    assert (1, 2) == (counts.watching, counts.pending_deliveries)
    await store.remove_job("f", now=NOW)
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

    results = await asyncio.gather(*(claimer(first if n % 2 else second, f"w{n}") for n in range(8)))
    every = [job_id for got in results for job_id in got]
    assert (60, 60) == (len(every), len(set(every)))


async def test_concurrent_delivery_claimers_never_share_a_delivery(store_factory: StoreFactory) -> None:
    """Tasks on two store instances claiming deliveries at once never share one."""
    first, second = await store_factory(), await store_factory()
    await first.add_deliveries([make_delivery(f"d{i:03d}", at=NOW - i) for i in range(60)])

    async def claimer(store: StateStore, owner: str) -> list[str]:
        got: list[str] = []
        while batch := await store.claim_due_deliveries(now=NOW, limit=3, owner=owner, lease=LEASE):
            got.extend(d.id for d in batch)
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(*(claimer(second if n % 2 else first, f"w{n}") for n in range(8)))
    every = [delivery_id for got in results for delivery_id in got]
    assert (60, 60) == (len(every), len(set(every)))


async def test_second_instance_sees_first_instance_writes(store_factory: StoreFactory) -> None:
    """What one instance (the CLI's `add`) writes, another (the daemon) claims."""
    cli, daemon = await store_factory(), await store_factory()
    await add(cli, "job-1")
    assert ["job-1"] == await claim(daemon, owner="daemon")
