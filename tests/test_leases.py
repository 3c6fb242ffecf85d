"""Leases held by work that outlives them: renewed while it runs, and a stale holder's record refused."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import delete_redis_prefix, eventually, require_redis
from tests.resilience.conftest import counted_log_events
from tests.test_engine import FakeSendGrid, add_jobs, make_engine
from watcher.clock import SystemClock
from watcher.models import Delivery, DeliveryState
from watcher.notify.base import BaseNotifier
from watcher.notify.outbox import Backoff, Outbox
from watcher.store import MemoryStore, RedisStore, SqliteStore, StateStore

LEASE = 1.0
SEND_SECONDS = 3.0


class SlowNotifier(BaseNotifier):
    """A receiver slower than the lease: every send takes SEND_SECONDS; `sends` is shared by every replica."""

    type_name = "slow"

    def __init__(self, sends: list[tuple[str, float, float]], seconds: float = SEND_SECONDS) -> None:
        super().__init__("slow", {})
        self.sends = sends
        self.seconds = seconds

    async def send(self, delivery: Delivery) -> None:
        began = time.monotonic()
        await asyncio.sleep(self.seconds)
        self.sends.append((delivery.id, began, time.monotonic()))


def deliveries(count: int, now: float) -> list[Delivery]:
    return [
        Delivery(id=f"msg_slow{i}", notifier="slow", event={"type": "contact_import.completed", "data": {}},
                 created_at=now, next_attempt_at=now, deadline_at=now + 3600, job_id=f"job-{i}")
        for i in range(count)
    ]


StoreOpener = Callable[[], Awaitable[StateStore]]


@pytest.fixture(params=["sqlite", "redis"])
async def open_replica_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreOpener]:
    """Opens store instances over one backend's data, as separate replicas would."""
    opened: list[StateStore] = []
    prefix = None
    if request.param == "redis":
        url = require_redis()
        prefix = f"iw-test-{uuid.uuid4().hex[:12]}"

    async def make() -> StateStore:
        store: StateStore = (
            SqliteStore(str(tmp_path / "state.db")) if prefix is None else RedisStore(url, prefix=prefix)
        )
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
    if prefix is not None:
        await delete_redis_prefix(url, prefix)


async def run_two_outboxes(opener: StoreOpener, *, renewing: bool) -> list[tuple[str, float, float]]:
    """Two replicas (two owners, two store connections) deliver 4 slow deliveries; every send made.

    With renewal on, runs until all are delivered; off, for one send and one lease."""
    sends: list[tuple[str, float, float]] = []
    first, second = await opener(), await opener()
    clock = SystemClock()
    await first.add_deliveries(deliveries(4, clock.now()))
    outboxes = [
        Outbox(store=store, notifiers={"slow": SlowNotifier(sends)}, clock=clock, owner=owner, lease=LEASE,
               backoff=Backoff(initial=0.05, maximum=0.1))
        for store, owner in ((first, "replica-a"), (second, "replica-b"))
    ]
    stop = asyncio.Event()
    for outbox in outboxes:
        outbox.renewing = renewing
    loops = [asyncio.create_task(outbox.run(stop)) for outbox in outboxes]

    async def all_delivered() -> bool:
        return all(d.state is DeliveryState.DELIVERED for d in await first.list_deliveries(with_events=False))

    if renewing:
        await eventually(all_delivered, timeout=15, what="every delivery delivered")
        await asyncio.sleep(LEASE)  # a second holder, if any, would have started by now
    else:
        await asyncio.sleep(SEND_SECONDS + LEASE)  # never delivered: no send ends within its lease
    stop.set()
    await asyncio.gather(*loops)
    await asyncio.gather(*(outbox.drain(SEND_SECONDS + 1) for outbox in outboxes))
    return sends


def overlapping(sends: list[tuple[str, float, float]]) -> list[str]:
    """Delivery ids sent again while an earlier send of the same id was still in flight."""
    out = []
    for i, (delivery_id, began, _) in enumerate(sends):
        out += [delivery_id for other, b2, e2 in sends[:i] + sends[i + 1 :] if other == delivery_id and b2 < began < e2]
    return out


async def test_a_send_slower_than_the_lease_is_sent_once_by_two_replicas(open_replica_store: StoreOpener) -> None:
    """Leases renewed every third of a 1 s lease keep a 3 s send to one replica: one send per delivery."""
    sends = await run_two_outboxes(open_replica_store, renewing=True)
    assert {f"msg_slow{i}": 1 for i in range(4)} == {d: [s[0] for s in sends].count(d) for d in {s[0] for s in sends}}
    assert [] == overlapping(sends)


async def test_without_renewal_the_second_replica_sends_again(open_replica_store: StoreOpener) -> None:
    """The same run with renewal off repeats sends while the first is in flight (what renewal prevents)."""
    sends = await run_two_outboxes(open_replica_store, renewing=False)
    assert len(overlapping(sends)) > 0


async def test_a_delivery_recorded_after_its_lease_was_lost_is_refused_and_logged_once() -> None:
    """A holder whose lease ran out (renewal off) cannot record; the new holder's result stands."""
    store, clock, sends = MemoryStore(), SystemClock(), []
    await store.add_deliveries(deliveries(1, clock.now()))
    stale = Outbox(store=store, notifiers={"slow": SlowNotifier(sends, seconds=0.6)}, clock=clock, owner="stale",
                   lease=0.3)
    stale.renewing = False
    [claimed] = await store.claim_due_deliveries(now=clock.now(), limit=1, owner="stale", lease=0.3)
    with counted_log_events() as events:
        sending = asyncio.create_task(stale.deliver(claimed))
        await asyncio.sleep(0.4)
        [taken] = await store.claim_due_deliveries(now=clock.now(), limit=1, owner="fresh", lease=30)
        await sending
    assert 1 == events["delivery.lease_lost"]
    [now_stored] = await store.list_deliveries(with_events=False)
    assert (DeliveryState.PENDING, 0) == (now_stored.state, now_stored.attempts)
    assert taken.lease is not None
    assert await store.record_delivery(
        taken, token=taken.lease.token, now=clock.now()
    ), "the new holder still holds it"


@pytest.mark.parametrize(("renewing", "expected_taken"), [(True, 0), (False, 1)])
async def test_a_slow_poll_keeps_its_job_and_a_lost_one_is_refused(renewing: bool, expected_taken: int) -> None:
    """A poll taking three leases keeps its claim while renewed; without renewal another owner takes the
    job, the stale record is refused and logged once as engine.lease_lost."""
    store, clock = MemoryStore(), SystemClock()
    [job_id] = await add_jobs(store, 1, clock.now())
    client = FakeSendGrid(clock, delay=1.2)
    engine = make_engine(store, client, clock, lease=0.4)
    engine.renewing = renewing
    stop = asyncio.Event()
    with counted_log_events() as events:
        loop = asyncio.create_task(engine.run(stop))
        await eventually(lambda: client.calls, what="the poll started")
        taken = []
        for _ in range(20):
            await asyncio.sleep(0.05)
            # The other replica's clock runs 0.1 s ahead: it wins the race for an expired lease.
            taken += await store.claim_due_jobs(now=clock.now() + 0.1, limit=1, owner="other", lease=30)
        stop.set()
        await loop
        await engine.drain(5.0)
    assert (expected_taken, expected_taken) == (len(taken), events["engine.lease_lost"])
    job = await store.get_job(job_id)
    assert job is not None
    assert 1 - expected_taken == job.polls


async def test_a_refused_renewal_is_logged_once_and_the_late_record_not_again() -> None:
    """Another owner takes the job mid-poll (its clock far ahead): the renewal is refused and logged
    once as engine.lease_lost; the record that follows is refused without a second log line."""
    store, clock = MemoryStore(), SystemClock()
    [job_id] = await add_jobs(store, 1, clock.now())
    client = FakeSendGrid(clock, delay=1.0)
    engine = make_engine(store, client, clock, lease=0.6)
    stop = asyncio.Event()
    with capture_logs() as logs:
        loop = asyncio.create_task(engine.run(stop))
        await eventually(lambda: client.calls, what="the poll started")
        [taken] = await store.claim_due_jobs(now=clock.now() + 1.0, limit=1, owner="other", lease=60)
        await eventually(lambda: not engine.held, timeout=2, what="the renewal refused")
        await eventually(lambda: client.in_flight == 0, timeout=3, what="the poll answered")
        await asyncio.sleep(0.1)  # its record is written next turn
        stop.set()
        await loop
        await engine.drain(1.0)
    lost = [entry for entry in logs if entry["event"] == "engine.lease_lost"]
    assert [(job_id, "renewal")] == [(entry["job_id"], entry.get("during")) for entry in lost]
    job = await store.get_job(job_id)
    assert (taken.id, 0) == (job_id, job.polls if job else -1)
