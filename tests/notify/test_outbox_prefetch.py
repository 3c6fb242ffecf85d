"""The outbox claims a burst in batches beyond its free slots: those extra claims are held, renewed and given back."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from watcher.clock import SystemClock
from watcher.models import Delivery
from watcher.notify.base import BaseNotifier
from watcher.notify.outbox import Outbox
from watcher.store.memory import MemoryStore


class Gate(BaseNotifier):
    """Holds every send until `opened` is set."""

    type_name: ClassVar[str] = "gate"
    fields: ClassVar[tuple[Any, ...]] = ()

    def __init__(self) -> None:
        super().__init__("gate", {})
        self.opened = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, delivery: Delivery) -> None:
        await self.opened.wait()
        self.sent.append(delivery.id)


def pending(count: int) -> list[Delivery]:
    return [Delivery(id=f"msg_{i:03}", notifier="gate", event={"type": "t"}, created_at=0.0, next_attempt_at=0.0,
                     deadline_at=1e12) for i in range(count)]


async def test_a_burst_is_claimed_twice_the_slots_at_a_time_and_drain_gives_back_the_rest() -> None:
    """With 2 slots, one claim holds 4 (2 sending, 2 ready); a drain gives back every unsent claim, due again at once."""
    store, gate = MemoryStore(), Gate()
    await store.open()
    await store.add_deliveries(pending(10))
    outbox = Outbox(store=store, notifiers={"gate": gate}, clock=SystemClock(), owner="a", concurrency=2)
    assert 4 == await outbox._claim()
    assert (2, 4) == (outbox.in_flight, len(outbox.held))
    await outbox.drain(0.0)
    assert ({}, []) == (outbox.held, gate.sent)
    again = await store.claim_due_deliveries(now=1.0, limit=20, owner="b", lease=60.0)
    assert 10 == len(again)


async def test_every_delivery_of_a_burst_is_sent_once() -> None:
    """The ready claims are started as slots free up, each once, until the burst is delivered."""
    store, gate = MemoryStore(), Gate()
    await store.open()
    await store.add_deliveries(pending(25))
    outbox = Outbox(store=store, notifiers={"gate": gate}, clock=SystemClock(), owner="a", concurrency=3)
    gate.opened.set()
    stop = asyncio.Event()
    outbox.on_result = lambda *_: stop.set() if len(gate.sent) == 25 else None
    await asyncio.wait_for(outbox.run(stop), timeout=10)
    await outbox.drain(1.0)
    assert sorted(d.id for d in pending(25)) == sorted(gate.sent)
    assert 0 == (await store.counts()).pending_deliveries
