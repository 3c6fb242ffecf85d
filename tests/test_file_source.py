"""The job file source at scale: large files load, in batches, and a store outage loses nothing."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

import pytest

from watcher.clock import ManualClock
from watcher.errors import StoreUnavailable
from watcher.models import JobRef
from watcher.policy import PollPolicy
from watcher.sources.base import Intake
from watcher.sources.file import ADD_BATCH, FileSource, load_job_file
from watcher.store import MemoryStore, SqliteStore
from watcher.store.base import AddsJobs


def job_file(path: Path, count: int) -> Path:
    path.write_text(
        "jobs:\n"
        + "".join(f"  - id: 0b5f1c9e-6a3d-4a8e-9f43-{i:012d}\n    labels: {{team: growth}}\n" for i in range(count))
    )
    return path


def test_a_job_file_larger_than_any_alias_budget_loads(tmp_path: Path) -> None:
    """30,000 jobs are 150,000 YAML nodes: more than an alias bomb may expand to, yet all plain text."""
    path = job_file(tmp_path / "jobs.yaml", 30_000)
    gc_was_enabled = gc.isenabled()
    refs, problems = load_job_file(path)
    assert ([], 30_000) == (problems, len(refs))
    assert (JobRef("0b5f1c9e-6a3d-4a8e-9f43-000000029999", {"team": "growth"}), gc_was_enabled) == (
        refs[-1],
        gc.isenabled(),
    )


def test_a_problem_deep_in_a_large_file_keeps_its_line(tmp_path: Path) -> None:
    """The fast parser keeps every value's line: the 5,001st job is on line 10,002."""
    path = job_file(tmp_path / "jobs.yaml", 5_000)
    path.write_text(path.read_text() + "  - id: 'bad id!'\n")
    refs, problems = load_job_file(path)
    assert 5_000 == len(refs)
    expected = "jobs[5000]: invalid job id 'bad id!': expected 1 to 64 characters of A-Z a-z 0-9 - _"
    assert [f"{path}:10002: {expected}"] == problems


class FlakyStore(MemoryStore):
    """A store whose add_jobs fails once after `fail_after` batches; counts its calls."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.batches: list[int] = []

    async def add_jobs(
        self, refs: Sequence[JobRef], *, now: float, first_poll_at: float, again: bool = False
    ) -> list[bool]:
        if len(self.batches) == self.fail_after:
            self.fail_after = -1
            raise StoreUnavailable("database is locked")
        self.batches.append(len(refs))
        return await super().add_jobs(refs, now=now, first_poll_at=first_poll_at, again=again)


async def test_jobs_are_added_in_batches_and_an_outage_is_retried(tmp_path: Path) -> None:
    """A store outage part-way leaves the file to the next refresh, which adds the rest exactly once."""
    path = job_file(tmp_path / "jobs.yaml", 2 * ADD_BATCH + 10)
    store = FlakyStore(fail_after=1)
    added: list[int] = []
    intake = Intake(store, PollPolicy(), ManualClock(), [])
    intake.on_added.append(lambda: added.append(1))
    source = FileSource(path, intake)
    await source.start()
    assert ([ADD_BATCH], ADD_BATCH) == (store.batches, (await store.counts()).watching)
    await source.refresh()  # the file did not change, but the last read did not finish
    assert [ADD_BATCH, ADD_BATCH, 10] == store.batches
    assert (2 * ADD_BATCH + 10, 3) == ((await store.counts()).watching, len(added))
    await source.refresh(force=True)  # nothing new: no store call at all
    assert 3 == len(store.batches)


class AddJobOnly(MemoryStore):
    """A third-party store without the optional add_jobs."""

    add_jobs = None  # type: ignore[assignment]


@pytest.mark.parametrize("store_kind", ["add_job only", "sqlite"])
async def test_every_store_gets_every_job_once(tmp_path: Path, store_kind: str) -> None:
    store = AddJobOnly() if store_kind == "add_job only" else SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    assert isinstance(store, AddsJobs) == (store_kind == "sqlite")
    path = job_file(tmp_path / "jobs.yaml", ADD_BATCH + 1)
    intake = Intake(store, PollPolicy(), ManualClock(), [])
    await FileSource(path, intake).start()
    # A second source over the same file (a restart): every id is known to the store already.
    assert [False, False] == (await intake.add_many([JobRef("0b5f1c9e-6a3d-4a8e-9f43-000000000000")] * 2))
    jobs = await store.list_jobs()
    assert (ADD_BATCH + 1, {"team": "growth"}) == (len(jobs), jobs[-1].labels)
    await store.close()
