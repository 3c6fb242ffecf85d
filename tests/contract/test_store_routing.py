"""The store contract for notifier routing, expired deliveries and writes that carry alerts."""

from __future__ import annotations

from dataclasses import replace

from tests.contract.storekit import LEASE, NOW, ids, make_delivery, token, unleased
from watcher.models import DeliveryState
from watcher.store import StateStore


async def test_claim_due_deliveries_filters_by_notifier(store: StateStore) -> None:
    """With `notifiers`, only deliveries to those are handed out; the others stay due for a replica that knows them."""
    await store.add_deliveries(
        [
            make_delivery("slack-1", notifier="slack", at=NOW - 3),
            make_delivery("hook-1", notifier="hook", at=NOW - 2),
            make_delivery("mail-1", notifier="mail", at=NOW - 1),
        ]
    )
    mine = await store.claim_due_deliveries(now=NOW, limit=10, owner="w1", lease=LEASE, notifiers={"hook", "mail"})
    assert ["hook-1", "mail-1"] == ids(mine)
    assert [] == await store.claim_due_deliveries(now=NOW, limit=10, owner="w1", lease=LEASE, notifiers=())
    assert [] == await store.claim_due_deliveries(now=NOW, limit=10, owner="w1", lease=LEASE, notifiers=["hook"])
    others = await store.claim_due_deliveries(now=NOW, limit=10, owner="w2", lease=LEASE, notifiers=["slack"])
    assert ["slack-1"] == ids(others)


async def test_deliveries_to_unknown_notifiers_never_starve_known_ones(store: StateStore) -> None:
    """Fifty due deliveries to a notifier this replica lacks, all earlier, do not fill its batches."""
    await store.add_deliveries(
        [make_delivery(f"x{i:02d}", notifier="unknown", at=NOW - 100 + i) for i in range(50)]
        + [make_delivery("mine-1", notifier="console", at=NOW - 1), make_delivery("mine-2", notifier="console")]
    )
    first = await store.claim_due_deliveries(now=NOW, limit=1, owner="w1", lease=LEASE, notifiers=["console"])
    second = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE, notifiers=["console"])
    assert (["mine-1"], ["mine-2"]) == (ids(first), ids(second))
    # The unknown ones were left untouched, still due for anyone.
    rest = await store.claim_due_deliveries(now=NOW, limit=100, owner="w2", lease=LEASE)
    assert [f"x{i:02d}" for i in range(50)] == ids(rest)


async def test_claim_expired_deliveries_takes_pending_ones_past_their_deadline(store: StateStore) -> None:
    """Pending deliveries to any notifier whose deadline passed and that nobody holds are leased for
    recording as dead; settled, in-time or held ones are not."""
    await store.add_deliveries(
        [
            make_delivery("late-known", notifier="console", deadline=NOW - 5, at=NOW + 50),
            make_delivery("late-unknown", notifier="unknown", deadline=NOW - 1),
            make_delivery("in-time", deadline=NOW + 100),
            make_delivery("late-dead", deadline=NOW - 9, state=DeliveryState.DEAD),
            make_delivery("late-held", deadline=NOW, at=NOW - 1),
        ]
    )
    (held,) = await store.claim_due_deliveries(now=NOW - 1, limit=1, owner="w1", lease=LEASE)
    assert "late-held" == held.id
    expired = await store.claim_expired_deliveries(now=NOW, limit=10, owner="w2", lease=LEASE)
    assert ["late-known", "late-unknown"] == ids(expired)
    assert [NOW + LEASE, NOW + LEASE] == [d.lease.until if d.lease else None for d in expired]
    assert [] == await store.claim_expired_deliveries(now=NOW, limit=10, owner="w3", lease=LEASE)
    # Once the holder's lease is over, the held one is expired too.
    late = NOW - 1 + LEASE
    assert ["late-held"] == ids(await store.claim_expired_deliveries(now=late, limit=10, owner="w3", lease=LEASE))
    dead = replace(expired[0], state=DeliveryState.DEAD, last_error="deadline passed")
    assert True is await store.record_delivery(dead, token=token(expired[0]), now=NOW)


async def test_claim_expired_deliveries_honours_limit(store: StateStore) -> None:
    """At most `limit` expired deliveries per call, earliest deadline first."""
    await store.add_deliveries([make_delivery(f"d{i}", deadline=NOW - 10 + i) for i in range(5)])
    first = await store.claim_expired_deliveries(now=NOW, limit=2, owner="w1", lease=LEASE)
    second = await store.claim_expired_deliveries(now=NOW, limit=10, owner="w1", lease=LEASE)
    assert (["d0", "d1"], ["d2", "d3", "d4"]) == (ids(first), ids(second))


async def test_record_delivery_writes_its_alerts_in_the_same_transaction(store: StateStore) -> None:
    """An accepted record inserts its alerts (ids already present skipped); a refused one inserts none."""
    await store.add_deliveries(
        [make_delivery("d1"), make_delivery("d2"), make_delivery("a-old", job_id=None, at=NOW + 1000)]
    )
    first, second = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    alert = make_delivery("a-new", job_id=None, event={"type": "watcher.alert", "reason": "dead"})
    duplicate = make_delivery("a-old", job_id=None, event={"type": "changed"})
    dead = replace(second, state=DeliveryState.DEAD, attempts=3, last_error="HTTP 410")
    assert False is await store.record_delivery(dead, token=token(first), now=NOW, alerts=[alert])
    assert ["d1", "d2", "a-old"] == sorted(ids(await store.list_deliveries()), key=["d1", "d2", "a-old"].index)
    assert True is await store.record_delivery(dead, token=token(second), now=NOW, alerts=[alert, duplicate])
    stored = {d.id: d for d in await store.list_deliveries()}
    assert [alert] == [stored["a-new"]]
    assert {"type": "contact_import.completed"} == stored["a-old"].event
    assert DeliveryState.DEAD == stored["d2"].state
    assert ["a-new"] == ids(await store.claim_due_deliveries(now=NOW, limit=5, owner="w2", lease=LEASE))


async def test_transition_meta_is_a_compare_and_set_with_its_deliveries(store: StateStore) -> None:
    """The key changes, and the deliveries appear, only when the expected value holds."""
    refused = make_delivery("key-refused", job_id=None, event={"type": "watcher.alert"})
    accepted = make_delivery("key-accepted", job_id=None, event={"type": "watcher.alert"})
    assert False is await store.transition_meta("key", expected="ok", value="refused", deliveries=[refused])
    assert (None, []) == (await store.get_meta("key"), await store.list_deliveries())
    assert True is await store.transition_meta("key", expected=None, value="refused", deliveries=[refused])
    assert False is await store.transition_meta("key", expected=None, value="refused", deliveries=[accepted])
    assert False is await store.transition_meta("key", expected="ok", value="ok", deliveries=[accepted])
    assert ("refused", [refused]) == (await store.get_meta("key"), await store.list_deliveries())
    assert True is await store.transition_meta("key", expected="refused", value="ok", deliveries=[accepted])
    assert True is await store.transition_meta("key", expected="ok", value="ok")
    assert "ok" == await store.get_meta("key")
    claimed = await store.claim_due_deliveries(now=NOW, limit=5, owner="w1", lease=LEASE)
    assert [accepted, refused] == sorted(unleased(claimed), key=lambda d: d.id)
