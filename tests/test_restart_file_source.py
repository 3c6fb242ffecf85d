"""A job file read in the background: `begin` returns at once, the source is not started (nor idle)
until the read is done, a refresh meanwhile is skipped, and polls go on while the file is parsed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from tests.test_file_source import job_file
from watcher.clock import ManualClock
from watcher.models import JobRef
from watcher.policy import PollPolicy
from watcher.sources.base import Intake
from watcher.sources.file import ADD_BATCH, FileSource
from watcher.store import MemoryStore


class GatedStore(MemoryStore):
    """add_jobs waits for `gate`; counts the jobs it was asked to add."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.asked = 0

    async def add_jobs(
        self, refs: Sequence[JobRef], *, now: float, first_poll_at: float, again: bool = False
    ) -> list[bool]:
        await self.gate.wait()
        self.asked += len(refs)
        return await super().add_jobs(refs, now=now, first_poll_at=first_poll_at, again=again)


async def test_begin_does_not_wait_for_the_file(tmp_path: Path) -> None:
    store = GatedStore()
    source = FileSource(job_file(tmp_path / "jobs.yaml", ADD_BATCH + 5), Intake(store, PollPolicy(), ManualClock(), []))
    source.begin()  # returns at once: the store has not taken a single job yet
    await asyncio.sleep(0.05)
    assert (False, False) == (source.started, await source.idle())
    await asyncio.wait_for(source.refresh(), 1)  # the periodic refresh meanwhile: skipped, not a second read
    store.gate.set()
    await asyncio.wait_for(source.ready(), 10)
    assert (True, True) == (source.started, await source.idle())
    assert (ADD_BATCH + 5, ADD_BATCH + 5) == (store.asked, (await store.counts()).watching)


async def test_the_event_loop_runs_while_a_large_file_is_parsed(tmp_path: Path) -> None:
    """20,000 jobs take a while to parse: the loop keeps turning meanwhile (the parse is in a thread)."""
    store = MemoryStore()
    source = FileSource(job_file(tmp_path / "jobs.yaml", 20_000), Intake(store, PollPolicy(), ManualClock(), []))
    began = time.perf_counter()
    source.begin()
    longest, last = 0.0, time.perf_counter()
    while not source.started:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    took = time.perf_counter() - began
    assert 20_000 == (await store.counts()).watching
    assert longest < took / 3, (longest, took)  # the loop never stood still for most of the read


async def test_a_failed_first_read_leaves_the_source_not_started_until_a_refresh_works(tmp_path: Path) -> None:
    class Broken(MemoryStore):
        fail = True

        async def add_jobs(
            self, refs: Sequence[JobRef], *, now: float, first_poll_at: float, again: bool = False
        ) -> list[bool]:
            if self.fail:
                raise RuntimeError("a bug")
            return await super().add_jobs(refs, now=now, first_poll_at=first_poll_at, again=again)

    store = Broken()
    source = FileSource(job_file(tmp_path / "jobs.yaml", 3), Intake(store, PollPolicy(), ManualClock(), []))
    source.begin()
    await source.ready()  # the failure is logged by the read, not raised here
    assert not source.started
    store.fail = False
    await source.refresh()
    assert (True, 3) == (source.started, (await store.counts()).watching)
