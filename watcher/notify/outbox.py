"""The delivery loop: claim due deliveries, send, retry with backoff, declare dead, alert."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import structlog

from watcher.claimloop import ClaimLoop
from watcher.clock import Clock
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.events import ALERT_EVENT, alert_event, delivery_id
from watcher.models import Delivery, DeliveryState
from watcher.notify.base import Notifier
from watcher.schema import redact
from watcher.store.base import StateStore

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
    """Sends pending deliveries through their notifiers until delivered or dead."""

    name, crashed, loop_log = "outbox", "delivery_crashed", log

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
    ) -> None:
        super().__init__(clock=clock, limit=concurrency)
        self.store = store
        self.notifiers = dict(notifiers)
        self.owner = owner
        self.concurrency = concurrency
        self.lease = lease
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.on_result = on_result
        self.stats = OutboxStats()

    async def _claim(self) -> int:
        free = self._room()
        if free <= 0:
            return 0
        due = await self.store.claim_due_deliveries(
            now=self.clock.now(), limit=free, owner=self.owner, lease=self.lease
        )
        for delivery in due:
            self._start(asyncio.create_task(self.deliver(delivery), name=f"deliver:{delivery.id}"))
        return len(due)

    async def _next_due_at(self) -> float | None:
        return await self.store.next_delivery_due_at()

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for in-flight deliveries; cancel the rest (their leases expire)."""
        return await self._finish_tasks(grace)

    # --- one delivery -------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> None:
        """Try one delivery once and record what happened."""
        bound = log.bind(
            notifier=delivery.notifier, job_id=delivery.job_id, delivery_id=delivery.id,
            attempt=delivery.attempts + 1,
        )
        notifier = self.notifiers.get(delivery.notifier)
        now = self.clock.now()
        attempts = delivery.attempts + 1
        if notifier is None:
            await self._settle(delivery, DeliveryState.DEAD, attempts, "notifier no longer configured", bound)
            return
        started = now
        try:
            await notifier.send(delivery)
        except RetryableDeliveryError as exc:
            await self._retry(delivery, attempts, exc, bound)
            result = "retry"
        except PermanentDeliveryError as exc:
            await self._settle(delivery, DeliveryState.DEAD, attempts, redact(str(exc)), bound)
            result = "dead"
        except Exception as exc:
            error = RetryableDeliveryError(f"{type(exc).__name__}: {exc}")
            await self._retry(delivery, attempts, error, bound)
            result = "retry"
        else:
            await self._settle(delivery, DeliveryState.DELIVERED, attempts, None, bound)
            result = "delivered"
        self.stats.count(delivery.notifier, result)
        if self.on_result is not None:
            self.on_result(delivery, result, self.clock.now() - started)

    async def _retry(
        self, delivery: Delivery, attempts: int, exc: RetryableDeliveryError,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
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
            return
        bound.info("delivery.retry_scheduled", error=error, retry_in=round(delay, 3))
        updated = replace(delivery, attempts=attempts, next_attempt_at=now + delay, last_error=error)
        await self.store.record_delivery(updated, owner=self.owner)

    async def _settle(
        self, delivery: Delivery, state: DeliveryState, attempts: int, error: str | None,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        updated = replace(delivery, state=state, attempts=attempts, last_error=error)
        if not await self.store.record_delivery(updated, owner=self.owner):
            bound.warning("delivery.lease_lost", state=state.value)
            return
        if state is DeliveryState.DELIVERED:
            bound.info("delivery.delivered")
            return
        bound.error("delivery.dead", error=error)
        if delivery.event_type != ALERT_EVENT:
            await self._alert_dead(updated)

    async def _alert_dead(self, dead: Delivery) -> None:
        """Tell the other notifiers that one delivery is dead (alerts about alerts are not sent)."""
        now = self.clock.now()
        message = f"notification {dead.id} to {dead.notifier} is dead after {dead.attempts} attempts: {dead.last_error}"
        event = alert_event(
            "delivery_dead", message, at=now, notifier=dead.notifier, job_id=dead.job_id,
            delivery_id=dead.id, event_type=dead.event_type,
        )
        alerts = [
            Delivery(
                id=delivery_id("delivery_dead", dead.id, name),
                notifier=name, event=event, created_at=now, next_attempt_at=now,
                deadline_at=now + notifier.delivery_deadline, job_id=dead.job_id,
            )
            for name, notifier in self.notifiers.items()
            if name != dead.notifier
        ]
        if alerts and await self.store.add_deliveries(alerts):
            self.wake()
