"""Sources never bring back a job that was stopped or purged; only an explicit `again` does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from watcher.clock import ManualClock
from watcher.models import Outcome
from watcher.policy import PollPolicy
from watcher.sources.base import Intake
from watcher.sources.file import FileSource
from watcher.store import MemoryStore, SqliteStore
from watcher.store.base import StateStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    made: StateStore = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "state.db"))
    await made.open()
    yield made
    await made.close()


def job_file(tmp_path: Path, *ids: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n" + "".join(f"  - {job_id}\n" for job_id in ids), encoding="utf-8")
    return path


def tombstoned_logs(logs: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["job_id"], e["reason"]) for e in logs if e["event"] == "source.job_tombstoned"]


async def test_a_stopped_job_in_the_file_is_skipped_and_logged_once(tmp_path: Path, store: StateStore) -> None:
    """After DELETE, the job file still listing the id (a restart, then more refreshes) adds nothing; logged once."""
    clock = ManualClock(1000.0)
    path = job_file(tmp_path, "stopped-1", "other-1")
    await FileSource(path, Intake(store, PollPolicy(), clock, [])).start()
    assert await store.remove_job("stopped-1", now=clock.now())
    intake = Intake(store, PollPolicy(), clock, [])  # a restarted daemon
    source = FileSource(path, intake)
    with structlog.testing.capture_logs() as logs:
        await source.start()
        await source.refresh(force=True)
        await FileSource(path, intake).start()  # a second file source listing it too
    assert ["other-1"] == [job.id for job in await store.list_jobs()]
    assert [("stopped-1", "stopped")] == tombstoned_logs(logs)


async def test_a_purged_finished_job_is_not_added_again(tmp_path: Path, store: StateStore) -> None:
    """A finished job purged by retention stays gone although the job file still lists it."""
    clock = ManualClock(1000.0)
    path = job_file(tmp_path, "done-1")
    intake = Intake(store, PollPolicy(initial_delay=0.0), clock, [])
    await FileSource(path, intake).start()
    clock.advance(10)
    [job] = await store.claim_due_jobs(now=clock.now(), limit=10, owner="me", lease=60)
    assert job.lease is not None
    assert await store.record_outcome(
        "done-1", token=job.lease.token, now=clock.now(), outcome=Outcome.COMPLETED, snapshot=None, polls=1,
        detected_at=clock.now(), deliveries=[],
    )
    assert 1 == await store.purge_finished(before=clock.now() + 1, now=clock.now())
    with structlog.testing.capture_logs() as logs:  # unchanged: a restart does not read it again
        await FileSource(path, Intake(store, PollPolicy(), clock, [])).start()
    assert ([], []) == ([j.id for j in await store.list_jobs()], tombstoned_logs(logs))
    job_file(tmp_path, "done-1", "new-1")  # changed: read, and the purged job is still not added
    with structlog.testing.capture_logs() as logs:
        await FileSource(path, Intake(store, PollPolicy(), clock, [])).start()
    assert (["new-1"], [("done-1", "finished")]) == ([j.id for j in await store.list_jobs()], tombstoned_logs(logs))


async def test_again_starts_a_new_watch_on_a_stopped_job(store: StateStore) -> None:
    """Intake.add(ref, again=True) lifts the tombstone a plain add respects."""
    from watcher.models import JobRef

    clock = ManualClock(1000.0)
    intake = Intake(store, PollPolicy(), clock, [])
    assert await intake.add(JobRef("j1"))
    assert await store.remove_job("j1", now=clock.now())
    assert (False, ["j1"]) == (await intake.add(JobRef("j1")), list(await store.tombstones(["j1"])))
    assert (True, {}) == (await intake.add(JobRef("j1"), again=True), dict(await store.tombstones(["j1"])))
    assert ["watching"] == [job.state for job in await store.list_jobs()]
