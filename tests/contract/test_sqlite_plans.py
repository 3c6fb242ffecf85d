"""The SQLite store's hot queries read through their own indexes, never the whole table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.contract.storekit import NOW, add, finish, make_delivery
from watcher.store import SqliteStore


def plans(conn: sqlite3.Connection, statements: list[str]) -> dict[str, str]:
    """Each traced SELECT (with its values bound, as the trace gives it) and its query plan."""
    out: dict[str, str] = {}
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            out[sql] = " | ".join(str(row[-1]) for row in rows)
    return out


async def test_claims_next_due_and_purge_never_scan(tmp_path: Path) -> None:
    """Claims, next-due times, expired deliveries and retention use their partial indexes: no table
    scan, no sort of every row (the outcome and state indexes once pulled the planner off them)."""
    store = SqliteStore(str(tmp_path / "plans.db"))
    await store.open()
    try:
        await add(store, "p1")
        await add(store, "p2")
        assert await finish(store, "p1", [make_delivery("d1", job_id="p1", notifier="hook")])
        conn = store._db
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        await store.claim_due_jobs(now=NOW + 5000, limit=10, owner="o", lease=60)
        await store.next_job_due_at()
        await store.claim_due_deliveries(now=NOW + 5000, limit=10, owner="o", lease=60)
        await store.claim_due_deliveries(now=NOW + 5000, limit=10, owner="o", lease=60, notifiers=["hook"])
        await store.next_delivery_due_at()
        await store.claim_expired_deliveries(now=NOW + 5000, limit=10, owner="o", lease=60)
        await store.purge_finished(before=NOW + 5000, now=NOW + 5000)
        conn.set_trace_callback(None)
        found = plans(conn, statements)
    finally:
        await store.close()
    assert len(found) >= 7
    for sql, plan in found.items():
        assert "SCAN jobs" not in plan and "SCAN deliveries" not in plan, (sql, plan)
        assert "jobs_outcome" not in plan and "deliveries_state" not in plan, (sql, plan)
