"""The SQLite store's outbox and meta: deliveries claimed under fenced leases, and alerts
written in the transaction of the state change they report.

A delivery's `due_at` is next_attempt_at while it is free and its lease expiry while it
is claimed, so the partial indexes on pending rows answer "what is due and unclaimed".
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from watcher.models import Delivery, DeliveryState, Lease
from watcher.store.sqlite_db import SqliteDatabase
from watcher.store.sqlite_rows import (
    _DELIVERY_COLUMNS,
    _DELIVERY_COLUMNS_NO_EVENT,
    _INSERT_DELIVERY,
    _delivery,
    _delivery_params,
)
from watcher.store.tokens import new_token

#: Bound parameters per statement: under SQLite's limit on old builds (999).
PARAMS_CHUNK = 500

_LEASE_DELIVERY = "UPDATE deliveries SET lease_owner = ?, lease_until = ?, due_at = ? WHERE id = ?"
_HELD = "id = ? AND state = 'pending' AND lease_owner = ? AND lease_until > ?"
_RECORD_DELIVERY = (
    "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, due_at = ?,"  # noqa: S608
    f" last_error = ?, lease_owner = NULL, lease_until = NULL WHERE {_HELD}"
)


class SqliteOutbox(SqliteDatabase):
    """Deliveries and meta of a SQLite store (SqliteStore adds the jobs)."""

    async def add_deliveries(self, deliveries: Iterable[Delivery]) -> int:
        """Insert deliveries not tied to an outcome (alerts); ids already present are skipped."""
        params = [_delivery_params(d) for d in deliveries]
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT_DELIVERY, params)
            return conn.total_changes - before

    def _claim(
        self, index: str, where: str, order: str, params: Sequence[object], owner: str, until: float
    ) -> list[Delivery]:
        """Select pending rows matching `where` (limit last in `params`) through `index` (named: the
        planner would otherwise take deliveries_state and read every pending row) and lease each."""
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries INDEXED BY {index}"  # noqa: S608
                f" WHERE state = 'pending' AND {where}"
                f" ORDER BY {order} LIMIT ?",
                params,
            ).fetchall()
            tokens = [new_token(owner) for _ in rows]
            conn.executemany(
                _LEASE_DELIVERY, [(token, until, until, row["id"]) for token, row in zip(tokens, rows, strict=True)]
            )
        return [_delivery(row, Lease(token, until)) for token, row in zip(tokens, rows, strict=True)]

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
        if notifiers is None:
            return self._claim("deliveries_due", "due_at <= ?", "due_at, id", (now, max(0, limit)), owner, now + lease)
        names = sorted(set(notifiers))[:PARAMS_CHUNK]
        if not names:
            return []
        # Filtered in SQL, before the LIMIT: rows to other notifiers are never handed out and
        # never fill the batch (deliveries_notifier_due serves each name).
        marks = ",".join("?" * len(names))
        where = f"notifier IN ({marks}) AND due_at <= ?"
        return self._claim(
            "deliveries_notifier_due", where, "due_at, id", (*names, now, max(0, limit)), owner, now + lease
        )

    async def claim_expired_deliveries(self, *, now: float, limit: int, owner: str, lease: float) -> list[Delivery]:
        """Pending deliveries to any notifier past their deadline with no live lease."""
        where = "deadline_at <= ? AND (lease_owner IS NULL OR lease_until <= ?)"
        params = (now, now, max(0, limit))
        return self._claim("deliveries_deadline", where, "deadline_at, id", params, owner, now + lease)

    async def renew_deliveries(self, leases: Sequence[tuple[str, str]], *, now: float, lease: float) -> list[bool]:
        """Extend each (delivery id, token) held within its lease to now + lease."""
        if not leases:
            return []
        until = now + lease
        sql = f"UPDATE deliveries SET lease_until = ?, due_at = ? WHERE {_HELD}"  # noqa: S608
        with self._write() as conn:
            execute = conn.cursor().execute
            return [
                execute(sql, (until, until, delivery_id, token, now)).rowcount == 1 for delivery_id, token in leases
            ]

    async def record_delivery(
        self, delivery: Delivery, *, token: str, now: float, alerts: Sequence[Delivery] = ()
    ) -> bool:
        """Write the delivery's new state and end its lease, and insert `alerts`, in one transaction."""
        return (await self.record_deliveries([(delivery, token, alerts)], now=now))[0]

    async def record_deliveries(
        self, records: Sequence[tuple[Delivery, str, Sequence[Delivery]]], *, now: float
    ) -> list[bool]:
        """`record_delivery` for each (delivery, token, alerts) in one transaction; the answers in order."""
        if not records:
            return []
        answers = []
        with self._write() as conn:
            execute = conn.cursor().execute  # one cursor for the batch, not one per row
            for delivery, token, alerts in records:
                params = (
                    DeliveryState(delivery.state).value, delivery.attempts, delivery.next_attempt_at,
                    delivery.next_attempt_at, delivery.last_error, delivery.id, token, now,
                )  # fmt: skip
                changed = execute(_RECORD_DELIVERY, params).rowcount == 1
                if changed and alerts:  # a refused record (stale token) adds no alerts either
                    conn.executemany(_INSERT_DELIVERY, [_delivery_params(d) for d in alerts])
                answers.append(changed)
        return answers

    async def release_delivery(self, delivery_id: str, *, token: str) -> None:
        """Give a delivery's lease back unchanged; only the token decides, not the clock."""
        self._update(
            "UPDATE deliveries SET due_at = next_attempt_at, lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND state = 'pending' AND lease_owner = ?",
            (delivery_id, token),
        )

    async def list_deliveries(
        self, job_ids: Iterable[str] | None = None, *, with_events: bool = True
    ) -> list[Delivery]:
        """Deliveries of these jobs (all when None), oldest first; bodies only when asked."""
        columns = _DELIVERY_COLUMNS if with_events else _DELIVERY_COLUMNS_NO_EVENT
        if job_ids is None:
            rows = self._query(f"SELECT {columns} FROM deliveries ORDER BY created_at, id")  # noqa: S608
            return [_delivery(row) for row in rows]
        found: list[Delivery] = []
        ids = sorted(set(job_ids))
        for start in range(0, len(ids), PARAMS_CHUNK):
            chunk = ids[start : start + PARAMS_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT {columns} FROM deliveries WHERE job_id IN ({marks})", chunk)  # noqa: S608
            found.extend(_delivery(row) for row in rows)
        return sorted(found, key=lambda d: (d.created_at, d.id))

    async def dead_deliveries(self, *, since: float, until: float, limit: int = 1000) -> list[Delivery]:
        """Dead deliveries created in [since, until), oldest first, without their event bodies."""
        sql = (
            f"SELECT {_DELIVERY_COLUMNS_NO_EVENT} FROM deliveries INDEXED BY deliveries_dead"  # noqa: S608
            " WHERE state = 'dead' AND created_at >= ? AND created_at < ? ORDER BY created_at, id LIMIT ?"
        )
        return [_delivery(row) for row in self._query(sql, (since, until, max(0, limit)))]

    async def next_delivery_due_at(self) -> float | None:
        """Earliest due time among pending deliveries (a leased one counts at its lease expiry)."""
        sql = "SELECT min(due_at) FROM deliveries INDEXED BY deliveries_due WHERE state = 'pending'"
        value = self._query(sql)[0][0]
        return None if value is None else float(value)

    # --- meta ---------------------------------------------------------------

    async def set_meta(self, key: str, value: str) -> None:
        self._update(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def transition_meta(
        self, key: str, *, expected: str | None, value: str, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        """Compare-and-set `key` and insert `deliveries`, in one transaction, only on a match."""
        with self._write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if (None if row is None else str(row[0])) != expected:
                return False
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            conn.executemany(_INSERT_DELIVERY, [_delivery_params(d) for d in deliveries])
        return True
