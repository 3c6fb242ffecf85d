"""The memory store's outbox and meta: deliveries under fenced leases, and compare-and-set meta.

MemoryStore (watcher.store.memory) adds the jobs and batches on top.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace

from watcher.models import Delivery, DeliveryState, Lease
from watcher.store.memory_rows import _DeliveryRow, _DueHeap, _json_copy, _Lease
from watcher.store.tokens import new_token


class MemoryOutbox:
    """Deliveries and meta of a MemoryStore."""

    def __init__(self) -> None:
        self._deliveries: dict[str, _DeliveryRow] = {}
        self._delivery_heap = _DueHeap()
        self._meta: dict[str, str] = {}

    def _delivery_is_current(self, delivery_id: str, due_at: float) -> bool:
        row = self._deliveries.get(delivery_id)
        return row is not None and row.delivery.state is DeliveryState.PENDING and row.lease.due_at == due_at

    def _deliveries_of(self, job_ids: set[str] | None) -> list[Delivery]:
        found = [row.delivery for row in self._deliveries.values() if job_ids is None or row.delivery.job_id in job_ids]
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""
        added = 0
        for delivery in deliveries:
            if delivery.id in self._deliveries:
                continue
            stored = replace(
                delivery,
                event=_json_copy(dict(delivery.event)),
                state=DeliveryState(delivery.state),
                lease=None,
            )
            self._deliveries[delivery.id] = _DeliveryRow(stored, _Lease(stored.next_attempt_at))
            if stored.state is DeliveryState.PENDING:
                self._delivery_heap.push(stored.next_attempt_at, stored.id)
            added += 1
        return added

    def _lease_delivery(self, row: _DeliveryRow, owner: str, now: float, lease: float) -> Delivery:
        token, until = new_token(owner), now + lease
        row.lease = _Lease(until, token, until)
        self._delivery_heap.push(until, row.delivery.id)
        return replace(row.delivery, lease=Lease(token, until))

    async def claim_due_deliveries(
        self,
        *,
        now: float,
        limit: int,
        owner: str,
        lease: float,
        notifiers: Collection[str] | None = None,
    ) -> list[Delivery]:
        """Pending deliveries with next_attempt_at <= now and no live lease, to these notifiers."""
        claimed: list[Delivery] = []
        skipped: list[tuple[float, str]] = []
        while len(claimed) < limit:
            entry = self._delivery_heap.pop_due(now, self._delivery_is_current)
            if entry is None:
                break
            row = self._deliveries[entry[1]]
            if notifiers is not None and row.delivery.notifier not in notifiers:
                skipped.append(entry)  # another replica's: back in the heap, untouched
                continue
            claimed.append(self._lease_delivery(row, owner, now, lease))
        for due_at, delivery_id in skipped:
            self._delivery_heap.push(due_at, delivery_id)
        self._compact_deliveries()
        return claimed

    async def claim_expired_deliveries(self, *, now: float, limit: int, owner: str, lease: float) -> list[Delivery]:
        """Pending deliveries past their deadline with no live lease, earliest deadline first."""
        expired = sorted(
            (row.delivery.deadline_at, row.delivery.id, row)
            for row in self._deliveries.values()
            if row.delivery.state is DeliveryState.PENDING
            and row.delivery.deadline_at <= now
            and (row.lease.until is None or row.lease.until <= now)
        )[: max(0, limit)]
        return [self._lease_delivery(row, owner, now, lease) for _, _, row in expired]

    def _held_delivery(self, delivery_id: str, token: str, now: float) -> _DeliveryRow | None:
        row = self._deliveries.get(delivery_id)
        if row is None or row.delivery.state is not DeliveryState.PENDING or not row.lease.held(token, now):
            return None
        return row

    async def renew_deliveries(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (delivery id, token) held within its lease to now + lease."""
        answers = []
        for delivery_id, token in leases:
            row = self._held_delivery(delivery_id, token, now)
            if row is not None:
                row.lease = _Lease(now + lease, token, now + lease)
                self._delivery_heap.push(now + lease, delivery_id)
            answers.append(row is not None)
        return answers

    async def record_delivery(
        self, delivery: Delivery, *, token: str, now: float, alerts: Sequence[Delivery] = ()
    ) -> bool:
        """Write the delivery's new state and end its lease, and insert `alerts`, together."""
        row = self._held_delivery(delivery.id, token, now)
        if row is None:
            return False
        row.delivery = replace(
            row.delivery,
            state=DeliveryState(delivery.state),
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_error=delivery.last_error,
        )
        row.lease = _Lease(delivery.next_attempt_at)
        if row.delivery.state is DeliveryState.PENDING:
            self._delivery_heap.push(delivery.next_attempt_at, delivery.id)
        await self.add_deliveries(alerts)
        return True

    async def record_deliveries(
        self, records: Sequence[tuple[Delivery, str, Sequence[Delivery]]], *, now: float
    ) -> list[bool]:
        """`record_delivery` for each (delivery, token, alerts), in order; nothing else runs in between."""
        return [
            await self.record_delivery(delivery, token=token, now=now, alerts=alerts)
            for delivery, token, alerts in records
        ]

    async def release_delivery(self, delivery_id: str, *, token: str) -> None:
        """Give a delivery's lease back unchanged: due again at once."""
        row = self._deliveries.get(delivery_id)
        if row is not None and row.delivery.state is DeliveryState.PENDING and row.lease.token == token:
            row.lease = _Lease(row.delivery.next_attempt_at)
            self._delivery_heap.push(row.delivery.next_attempt_at, delivery_id)

    async def list_deliveries(
        self, job_ids: Iterable[str] | None = None, *, with_events: bool = True
    ) -> list[Delivery]:
        """Deliveries of these jobs (all when None), oldest first; events only when asked."""
        found = self._deliveries_of(None if job_ids is None else set(job_ids))
        return found if with_events else [replace(d, event={}) for d in found]

    async def next_delivery_due_at(self) -> float | None:
        """Earliest due time among pending deliveries (a leased one counts at its lease expiry)."""
        return self._delivery_heap.peek(self._delivery_is_current)

    async def dead_deliveries(self, *, since: float, until: float, limit: int = 1000) -> list[Delivery]:
        """Dead deliveries created in [since, until), oldest first, without their event bodies."""
        found = [
            replace(row.delivery, event={})
            for row in self._deliveries.values()
            if row.delivery.state is DeliveryState.DEAD and since <= row.delivery.created_at < until
        ]
        return sorted(found, key=lambda d: (d.created_at, d.id))[: max(0, limit)]

    # --- meta ---------------------------------------------------------------

    async def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    async def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        """Compare-and-set `key`, inserting `deliveries` only when it succeeds."""
        if self._meta.get(key) != expected:
            return False
        self._meta[key] = value
        await self.add_deliveries(deliveries)
        return True

    def _compact_deliveries(self) -> None:
        """Rebuild the heap once stale entries outnumber live ones, so memory stays bounded."""
        if len(self._delivery_heap) > 2 * len(self._deliveries) + 64:
            self._delivery_heap.rebuild(
                (row.lease.due_at, delivery_id)
                for delivery_id, row in self._deliveries.items()
                if row.delivery.state is DeliveryState.PENDING
            )
