"""A claim loop that finds work due but none of it its own waits for the recheck, not in a busy loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.contract.storekit import make_delivery
from watcher.clock import SystemClock
from watcher.models import Delivery
from watcher.notify.base import BaseNotifier
from watcher.notify.outbox import Outbox
from watcher.store import SqliteStore


class CountingClaims:
    """The real store, counting the loop's store round trips (claims and next-due reads)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.claims = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim_due_deliveries(self, **kwargs: Any) -> Any:
        self.claims += 1
        return await self._store.claim_due_deliveries(**kwargs)

    async def next_delivery_due_at(self) -> Any:
        self.claims += 1
        return await self._store.next_delivery_due_at()


class Here(BaseNotifier):
    """A notifier this replica knows; nothing is ever due for it."""

    type_name = "here"

    async def send(self, delivery: Delivery) -> None:
        raise AssertionError("nothing is due for this notifier")


async def test_a_due_delivery_for_an_unknown_notifier_does_not_spin_the_outbox(tmp_path: Path) -> None:
    """One due delivery to a notifier this replica does not know: about one claim a second, not thousands."""
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    clock = SystemClock()
    await store.add_deliveries([make_delivery("d1", job_id=None, notifier="elsewhere", at=clock.now() - 1)])
    counting = CountingClaims(store)
    outbox = Outbox(store=counting, notifiers={"here": Here("here", {})}, clock=clock, owner="o", lease=30.0)  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(outbox.run(stop))
    await asyncio.sleep(1.5)
    stop.set()
    await running
    await outbox.drain(0.1)
    await store.close()
    assert counting.claims <= 10, counting.claims  # a busy loop makes thousands


async def test_a_stale_claims_end_leaves_the_newer_claim_of_the_same_id_held(tmp_path: Path) -> None:
    """Invariant: a task whose lease lapsed and whose id was claimed again forgets and releases only its own
    token: the newer claim stays held (renewed) and stays leased in the store."""
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    clock = SystemClock()
    await store.add_deliveries([make_delivery("d1", job_id=None, notifier="here", at=clock.now() - 1)])
    outbox = Outbox(store=store, notifiers={"here": Here("here", {})}, clock=clock, owner="o", lease=0.2)
    (first,) = await store.claim_due_deliveries(now=clock.now(), limit=1, owner="o", lease=0.2)
    await asyncio.sleep(0.3)  # the first lease lapses; the same process claims the delivery again
    (second,) = await store.claim_due_deliveries(now=clock.now(), limit=1, owner="o", lease=30.0)
    assert first.lease is not None and second.lease is not None
    outbox._hold("d1", first.lease.token)
    outbox._hold("d1", second.lease.token)
    outbox._lease_lost("d1", first.lease.token)  # the stale task's record was refused
    await outbox._give_back("d1", first.lease.token, store.release_delivery)  # and it gives back its claim
    again = await store.claim_due_deliveries(now=clock.now(), limit=1, owner="x", lease=30.0)
    await store.close()
    assert {"d1": second.lease.token} == outbox._held
    assert [] == again  # the newer claim is still leased: nobody else can take it
