"""Every backend keeps a job's kind (import or export) and account, through every read; old data
reads as imports of the default account (SQLite: the V3 migration; Redis: absent hash fields)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.contract.conftest import REDIS_URL
from tests.contract.storekit import LEASE, NOW, StoreFactory, claim_one, get, token
from watcher.models import WATCHING, JobKind, JobRef, Outcome, Snapshot
from watcher.store import RedisStore, SqliteStore, StateStore
from watcher.store.base import AddsJobs
from watcher.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

EXPORT = JobRef("exp-1", {"team": "data"}, batch="nightly", kind=JobKind.EXPORT, account="eu-brand")


async def test_kind_and_account_round_trip_through_every_read(store_factory: StoreFactory) -> None:
    """get_job, list_jobs, batch_jobs, a claim, finished_jobs and another instance all give
    back the kind and account the job was added with (and the defaults for a plain ref)."""
    store = await store_factory()
    assert await store.add_job(EXPORT, now=NOW, first_poll_at=NOW)
    assert await store.add_job(JobRef("imp-1", batch="nightly"), now=NOW + 1, first_poll_at=NOW + 1)
    want = {"exp-1": (JobKind.EXPORT, "eu-brand"), "imp-1": (JobKind.IMPORT, None)}
    other = await store_factory()
    for reader in (store, other):
        assert want == {j.id: (j.kind, j.account) for j in await reader.list_jobs()}
        assert want == {j.id: (j.kind, j.account) for j in await reader.batch_jobs("nightly")}
        assert (JobKind.EXPORT, "eu-brand") == ((job := await get(reader, "exp-1")).kind, job.account)
        assert EXPORT == job.ref
    claimed = await claim_one(store, "exp-1", now=NOW + 5)
    assert (JobKind.EXPORT, "eu-brand") == (claimed.kind, claimed.account)
    assert await store.record_outcome(
        "exp-1", token=token(claimed), now=NOW + 5, outcome=Outcome.READY, snapshot=Snapshot("ready"),
        polls=1, detected_at=NOW + 5, deliveries=[],
    )  # fmt: skip
    (done,) = await store.finished_jobs(since=NOW, until=NOW + 10)
    assert (Outcome.READY, JobKind.EXPORT, "eu-brand") == (done.outcome, done.kind, done.account)
    assert [done] == await store.list_jobs(state="ready")
    counts = (await store.counts()).jobs_by_state
    assert (1, 0, 1) == (counts["ready"], counts["failure"], counts[WATCHING])
    batch = await store.get_batch("nightly")
    assert batch is not None and {"ready": 1} == dict(batch.outcomes)


async def test_add_jobs_keeps_each_refs_kind_and_account(store: StateStore) -> None:
    """add_jobs stores each ref's own kind and account, not the first one's."""
    assert isinstance(store, AddsJobs)
    refs = [JobRef("a"), JobRef("b", kind=JobKind.EXPORT), JobRef("c", account="main"), EXPORT]
    assert [True] * 4 == await store.add_jobs(refs, now=NOW, first_poll_at=NOW)
    assert [(r.kind, r.account) for r in refs] == [(j.kind, j.account) for j in await store.list_jobs()]


async def test_adding_a_known_id_as_another_kind_changes_nothing(store: StateStore) -> None:
    """An id is one job: an add naming another kind or account answers False and the job keeps
    what it was added as (the API and CLI tell the caller); only a new watch (`again` on a final
    job) takes the new kind."""
    await store.add_job(JobRef("job-1"), now=NOW, first_poll_at=NOW)
    clash = JobRef("job-1", kind=JobKind.EXPORT, account="other")
    assert False is await store.add_job(clash, now=NOW + 1, first_poll_at=NOW + 1)
    assert False is await store.add_job(clash, now=NOW + 1, first_poll_at=NOW + 1, again=True)  # still watching
    assert (JobKind.IMPORT, None) == ((job := await get(store, "job-1")).kind, job.account)
    claimed = await store.claim_due_jobs(now=NOW + 2, limit=1, owner="w", lease=LEASE)
    assert await store.record_outcome(
        "job-1", token=token(claimed[0]), now=NOW + 2, outcome=Outcome.COMPLETED, snapshot=None,
        polls=1, detected_at=NOW + 2, deliveries=[],
    )  # fmt: skip
    assert True is await store.add_job(clash, now=NOW + 3, first_poll_at=NOW + 3, again=True)
    assert (JobKind.EXPORT, "other", None) == ((job := await get(store, "job-1")).kind, job.account, job.outcome)


def _v2_database(path: Path) -> None:
    """A state file as the previous release left it: schema V2 with one job in a batch."""
    with sqlite3.connect(path) as conn:
        for script in MIGRATIONS[:2]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO jobs (id, labels, notify, added_at, next_poll_at, due_at, batch)"
            " VALUES ('old-1', '{\"team\":\"a\"}', NULL, ?, ?, ?, 'b1')",
            (NOW, NOW, NOW),
        )
    conn.close()


async def test_sqlite_v2_file_gains_kind_and_account_and_old_rows_read_as_imports(tmp_path: Path) -> None:
    """Opening a V2 file applies the V3 migration: the columns appear, an old job reads as an
    import of the default account and can be claimed, and new exports are kept beside it."""
    path = tmp_path / "state.db"
    _v2_database(path)
    store = SqliteStore(str(path))
    await store.open()
    try:
        old = await get(store, "old-1")
        assert (JobKind.IMPORT, None, {"team": "a"}, "b1") == (old.kind, old.account, dict(old.labels), old.batch)
        assert await store.add_job(EXPORT, now=NOW + 1, first_poll_at=NOW + 1)
        claimed = await store.claim_due_jobs(now=NOW + 1, limit=10, owner="w", lease=LEASE)
        assert [("old-1", JobKind.IMPORT), ("exp-1", JobKind.EXPORT)] == [(j.id, j.kind) for j in claimed]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert SCHEMA_VERSION == 3 == conn.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1]: (row[2], row[3], row[4]) for row in conn.execute("PRAGMA table_info(jobs)")}
    conn.close()
    assert ("TEXT", 1, "'import'") == columns["kind"]
    assert ("TEXT", 0, None) == columns["account"]


async def test_redis_job_without_kind_fields_reads_as_an_import() -> None:
    """A job hash written before exports existed (no kind, no account field) reads as an import
    of the default account."""
    import uuid

    from tests.contract.conftest import _delete_prefix, _redis_reachable

    if (reason := await _redis_reachable()) is not None:
        pytest.skip(reason)
    prefix = f"iw-test-{uuid.uuid4().hex}"
    store = RedisStore(REDIS_URL, prefix=prefix, server_time=False)
    await store.open()
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await store.add_job(EXPORT, now=NOW, first_poll_at=NOW)
        assert 2 == await client.hdel(f"{prefix}:job:exp-1", "kind", "account")
        job = await get(store, "exp-1")
        assert (JobKind.IMPORT, None) == (job.kind, job.account)
    finally:
        await client.aclose()
        await store.close()
        await _delete_prefix(prefix)
