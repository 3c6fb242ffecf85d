"""The delivery loop: claim due deliveries, send, retry with backoff, declare dead, alert.

The sends finishing in one event-loop turn queue their records; the next turn one flush
task writes them all with one `record_deliveries` (one transaction, or one Redis script),
as the engine does with its polls. Each record keeps its own token and fencing, so
leases, retries and exactly-once delivery are those of one `record_delivery` each.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import structlog
from structlog.typing import FilteringBoundLogger as BoundLogger

from watcher.claimloop import RELEASE_TIMEOUT, ClaimLoop
from watcher.clock import Clock
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError, StoreUnavailable
from watcher.events import ALERT_EVENT, alert_event, delivery_id
from watcher.models import Delivery, DeliveryState
from watcher.notify.base import Notifier
from watcher.schema import redact
from watcher.store.base import HOUSEKEEPING_BATCH, StateStore
from watcher.supervise import StoreHealth

log = structlog.get_logger("watcher.outbox")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delivery retry schedule: doubling from `initial` up to `maximum`, full jitter on the upper half."""

    initial: float = 2.0
    maximum: float = 300.0

    def delay(self, attempts: int, draw: float) -> float:
        cap = min(self.maximum, self.initial * 2 ** min(attempts - 1, 30))
        return float(cap * (0.5 + draw / 2))


@dataclass
class OutboxStats:
    results: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, notifier: str, result: str) -> None:
        key = (notifier, result)
        self.results[key] = self.results.get(key, 0) + 1


class Outbox(ClaimLoop):
    """Sends pending deliveries through their notifiers until delivered or dead.

    Only deliveries to notifiers this replica knows are claimed: during a rolling update
    the others wait for a replica that knows them, and housekeeping (`expire`) declares
    dead what nobody delivered by its deadline.
    """

    name, crashed, loop_log = "outbox", "delivery_crashed", log
    lost_event, id_key = "delivery.lease_lost", "delivery_id"

    def __init__(
        self,
        *,
        store: StateStore,
        notifiers: Mapping[str, Notifier],
        clock: Clock,
        owner: str,
        concurrency: int = 16,
        lease: float = 120.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_result: Callable[[Delivery, str, float], None] | None = None,
        store_health: StoreHealth | None = None,
    ) -> None:
        super().__init__(clock=clock, limit=concurrency, lease=lease, store_health=store_health)
        self.store = store
        self.notifiers = dict(notifiers)
        self.owner = owner
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.on_result = on_result
        self.stats = OutboxStats()
        self._ready: collections.deque[Delivery] = collections.deque()  # claimed and held, not started yet
        self._records: list[tuple[Delivery, str, Sequence[Delivery], asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _claim(self) -> int:
        """Start claimed deliveries in the free slots; claim more only when the ready ones cannot fill them."""
        free = self._room()
        if free <= 0 or self._stopping or not self.notifiers:
            return 0
        claimed = 0
        if len(self._ready) < free:
            # One claim for up to twice the slots: a burst costs a store call per `limit`
            # deliveries, not one per finished send. The extra claims are held (and renewed)
            # like those in flight, and given back by `drain`.
            room = 2 * self._limit - len(self._inflight) - len(self._ready)
            due = await self.store.claim_due_deliveries(
                now=self.clock.now(), limit=room, owner=self.owner, lease=self.lease, notifiers=self.notifiers.keys()
            )
            for delivery in due:
                self._hold(delivery.id, _token(delivery))
            self._ready.extend(due)
            claimed = len(due)
            if self._stopping:  # stopped while claiming
                await self._give_back_all([(d.id, _token(d)) for d in self._ready], self.store.release_delivery)
                self._ready.clear()
                return claimed
        started = 0
        while self._ready and self._room() > 0:
            delivery = self._ready.popleft()
            if self._held.get(delivery.id) != _token(delivery):
                continue  # its lease was found lost while it waited
            self._start(asyncio.create_task(self.deliver(delivery), name=f"deliver:{delivery.id}"))
            started += 1
        return max(claimed, started)

    async def _next_due_at(self) -> float | None:
        return await self.store.next_delivery_due_at()

    async def _renew(self, leases: Sequence[tuple[str, str]]) -> list[bool]:
        return await self.store.renew_deliveries(leases, now=self.clock.now(), lease=self.lease)

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds (or until `hurry`) for in-flight deliveries; cancel the rest
        and give their claims back, so a restart sends them at once."""
        self._stopping = True
        self._ready.clear()  # held: given back below with the rest
        try:
            cancelled = await self._finish_tasks(grace)
            await self._within_release_time(self._give_back_all(list(self._held.items()), self.store.release_delivery))
        finally:
            await self._stop_renewer()
        return cancelled

    # --- one delivery -------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> None:
        """Try one claimed delivery once and record what happened."""
        bound = log.bind(
            notifier=delivery.notifier, job_id=delivery.job_id, delivery_id=delivery.id,
            attempt=delivery.attempts + 1,
        )
        if delivery.id not in self._held:
            self._hold(delivery.id, _token(delivery))  # called directly, not through the loop
        started = self.clock.now()
        try:
            result = await self._attempt(delivery, bound)
        except asyncio.CancelledError:
            await self._give_back(delivery.id, _token(delivery), self.store.release_delivery)
            raise
        except StoreUnavailable as exc:
            self._let_go(delivery.id, _token(delivery))  # its lease runs out and it is tried again then
            self.store_health.failed(exc)
            bound.warning("delivery.record_failed", error=str(exc))
            return
        except Exception:
            await self._give_back(delivery.id, _token(delivery), self.store.release_delivery)
            raise  # logged with its traceback as outbox.delivery_crashed
        self.stats.count(delivery.notifier, result)
        if self.on_result is not None:
            self.on_result(delivery, result, self.clock.now() - started)

    async def _attempt(self, delivery: Delivery, bound: BoundLogger) -> str:
        """Send once and record the result; which result ("delivered", "retry" or "dead")."""
        attempts = delivery.attempts + 1
        notifier = self.notifiers[delivery.notifier]
        try:
            await notifier.send(delivery)
        except RetryableDeliveryError as exc:
            return await self._retry(delivery, attempts, exc, bound)
        except PermanentDeliveryError as exc:
            await self._settle(delivery, DeliveryState.DEAD, attempts, redact(str(exc)), bound)
            return "dead"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = RetryableDeliveryError(f"{type(exc).__name__}: {exc}")
            return await self._retry(delivery, attempts, error, bound)
        await self._settle(delivery, DeliveryState.DELIVERED, attempts, None, bound)
        return "delivered"

    async def _retry(
        self, delivery: Delivery, attempts: int, exc: RetryableDeliveryError, bound: BoundLogger
    ) -> str:
        """Schedule the next attempt, or declare the delivery dead when it would pass its deadline."""
        now = self.clock.now()
        delay = self.backoff.delay(attempts, self.rng.random())
        if exc.retry_after is not None:
            # A floor, as in the poll policy: `Retry-After: 0` (or a date already past) from a
            # failing receiver must not turn the retries into a busy loop.
            delay = max(delay, exc.retry_after)
        error = redact(str(exc))
        if now + delay > delivery.deadline_at:
            reason = f"delivery deadline passed; last error: {error}"
            await self._settle(delivery, DeliveryState.DEAD, attempts, reason, bound)
            return "dead"
        bound.info("delivery.retry_scheduled", error=error, retry_in=round(delay, 3))
        updated = replace(delivery, attempts=attempts, next_attempt_at=now + delay, last_error=error)
        if await self._record(updated, _token(delivery)):
            self._let_go(delivery.id, _token(delivery))
            self.store_health.succeeded()
        else:
            self._lease_lost(delivery.id, _token(delivery), bound, state="retry")
        return "retry"

    async def _settle(
        self, delivery: Delivery, state: DeliveryState, attempts: int, error: str | None, bound: BoundLogger
    ) -> bool:
        """Record a final state; a dead one with its delivery_dead alerts, in the same transaction."""
        now = self.clock.now()
        updated = replace(delivery, state=state, attempts=attempts, last_error=error)
        alerts = self._dead_alerts(updated, now) if state is DeliveryState.DEAD else []
        if not await self._record(updated, _token(delivery), alerts):
            self._lease_lost(delivery.id, _token(delivery), bound, state=state.value)
            return False
        self._let_go(delivery.id, _token(delivery))
        self.store_health.succeeded()
        if state is DeliveryState.DELIVERED:
            bound.info("delivery.delivered")
            return True
        bound.error("delivery.dead", error=error)
        if alerts:
            self.wake()
        return True

    # --- records: one write per event-loop turn ----------------------------------------

    async def _record(self, updated: Delivery, token: str, alerts: Sequence[Delivery] = ()) -> bool:
        """Queue one record for the next flush and wait for its answer (or what the write raised)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._records.append((updated, token, alerts, future))
        if self._flusher is None:
            # Runs next turn, when every send finishing in this one has queued its record.
            self._flusher = asyncio.create_task(self._flush(), name="outbox:flush")
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The record may be on its way: let it land before the caller gives the claim back
            # (a release after it is a no-op; a record after a release would be refused).
            await asyncio.wait([future], timeout=RELEASE_TIMEOUT)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: nobody else will
            raise

    async def _flush(self) -> None:
        """Write this turn's queued records with one `record_deliveries`; answer each waiter.

        The batch is taken at once, so records of later turns start their own flush instead
        of waiting for this one's round trip (a record is never further from its send than that).
        """
        batch, self._records, self._flusher = self._records, [], None
        try:
            answers = await self.store.record_deliveries(
                [(updated, token, alerts) for updated, token, alerts, _ in batch], now=self.clock.now()
            )
        except BaseException as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc) if isinstance(exc, Exception) else future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), ok in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(ok)

    def _dead_alerts(self, dead: Delivery, now: float) -> list[Delivery]:
        """A delivery_dead alert to each other notifier (alerts about alerts are not sent)."""
        if dead.event_type == ALERT_EVENT:
            return []
        message = f"notification {dead.id} to {dead.notifier} is dead after {dead.attempts} attempts: {dead.last_error}"
        event = alert_event(
            "delivery_dead", message, at=now, notifier=dead.notifier, job_id=dead.job_id,
            delivery_id=dead.id, event_type=dead.event_type,
        )
        return [
            Delivery(
                id=delivery_id("delivery_dead", dead.id, name),
                notifier=name, event=event, created_at=now, next_attempt_at=now,
                deadline_at=now + notifier.delivery_deadline, job_id=dead.job_id,
            )
            for name, notifier in self.notifiers.items()
            if name != dead.notifier
        ]

    # --- housekeeping: what nobody delivered in time ---------------------------------

    async def expire(self, *, limit: int = HOUSEKEEPING_BATCH) -> int:
        """Declare dead (with alerts) pending deliveries past their deadline, whichever notifier
        they are for; at most `limit` per call, so call again while it returns `limit`."""
        now = self.clock.now()
        expired = await self.store.claim_expired_deliveries(now=now, limit=limit, owner=self.owner, lease=self.lease)
        results = await asyncio.gather(*(self._expire_one(d) for d in expired), return_exceptions=True)
        for result in results:  # one flush wrote them all; what it raised, each was told
            if isinstance(result, BaseException):
                raise result
        return len(expired)

    async def _expire_one(self, delivery: Delivery) -> None:
        bound = log.bind(notifier=delivery.notifier, job_id=delivery.job_id, delivery_id=delivery.id)
        reason = delivery.last_error or "never attempted"
        error = f"nobody delivered it by its deadline; last error: {reason}"
        if await self._settle(delivery, DeliveryState.DEAD, delivery.attempts, error, bound):
            self.stats.count(delivery.notifier, "dead")
            if self.on_result is not None:
                self.on_result(delivery, "dead", 0.0)


def _token(delivery: Delivery) -> str:
    """The lease token a claim handed out with `delivery`."""
    if delivery.lease is None:
        raise ValueError(f"delivery {delivery.id} was not claimed")
    return delivery.lease.token
