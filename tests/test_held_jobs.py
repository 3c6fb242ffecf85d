"""Held jobs: a poll that changes nothing but the next poll time is not written, yet fencing,
tombstones, draining and lost leases behave as if it were (watcher/engine_held.py)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DaemonProcess, config_text, eventually, write_jobs
from watcher.clock import SystemClock
from watcher.engine import Engine
from watcher.models import JobRef, PollUpdate, Snapshot
from watcher.policy import PollPolicy
from watcher.store import SqliteStore
from watcher.testing.fake_sendgrid import FakeSendGrid

POLICY = PollPolicy(initial_delay=0.0, min_interval=0.05, max_interval=0.05, deadline=3600.0, jitter=0.0)
LEASE = 3.0  # renewals every second; the hold horizon (half a lease) is far beyond 50 ms


class Answers:
    """SendGrid as the engine sees it: `pending` with the same counts until told otherwise."""

    def __init__(self) -> None:
        self.polls: dict[str, int] = {}
        self.rows: dict[str, int] = {}

    async def get_import(self, job_id: str) -> Snapshot:
        self.polls[job_id] = self.polls.get(job_id, 0) + 1
        return Snapshot("pending", "upsert", {"requested_count": 10, "created_count": self.rows.get(job_id, 0)})

    async def get_export(self, export_id: str) -> Snapshot:
        raise AssertionError("no exports here")


class CountingStore(SqliteStore):
    """The real SQLite store, counting the polls written."""

    written: list[str]

    async def record_polls(self, updates: Any, *, now: float) -> list[bool]:
        self.written.extend(job_id for job_id, _, _ in updates)
        return await super().record_polls(updates, now=now)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = CountingStore(str(tmp_path / "state.db"))
    opened.written = []
    await opened.open()
    yield opened
    await opened.close()


async def start(store: CountingStore, answers: Answers, *ids: str) -> tuple[Engine, asyncio.Event, asyncio.Task[None]]:
    clock = SystemClock()
    for job_id in ids:
        await store.add_job(JobRef(job_id), now=clock.now(), first_poll_at=clock.now())
    engine = Engine(store=store, client=answers, policy=POLICY, clock=clock, owner="w1", recipients=[], lease=LEASE)
    stop = asyncio.Event()
    return engine, stop, asyncio.create_task(engine.run(stop))


async def stop_engine(engine: Engine, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task
    await engine.drain(2.0)


async def test_unchanged_polls_are_not_written_a_changed_answer_is_and_drain_writes_planned_times(
    store: CountingStore,
) -> None:
    """Pending answers that change nothing cost no write; a changed answer is written at once; the
    drain writes each held job with its planned next poll and its true polls count, lease ended."""
    answers = Answers()
    engine, stop, task = await start(store, answers, "same", "moving")
    await eventually(lambda: min(answers.polls.values(), default=0) >= 6, what="six polls each")
    assert ["moving", "same"] == sorted(store.written)  # the first answer only: it differs from none
    answers.rows["moving"] = 5
    await eventually(lambda: 2 == store.written.count("moving"), what="the changed answer written")
    assert 1 == store.written.count("same")
    await stop_engine(engine, stop, task)
    jobs = {job.id: job for job in await store.list_jobs()}
    assert answers.polls == {job_id: job.polls for job_id, job in jobs.items()}
    for job in jobs.values():
        assert job.lease is None and job.snapshot is not None
        assert engine.clock.now() - 1.0 < job.next_poll_at < engine.clock.now() + 1.0  # planned, not "now"
    assert {"requested_count": 10, "created_count": 5} == dict(jobs["moving"].snapshot.results)  # type: ignore[union-attr]


async def test_a_job_stopped_while_held_is_not_polled_after_the_next_renewal(store: CountingStore) -> None:
    """remove_job deletes the row; the renewal that follows is refused, and the held copy is dropped."""
    answers = Answers()
    engine, stop, task = await start(store, answers, "stopped", "kept")
    await eventually(lambda: answers.polls.get("stopped", 0) >= 3, what="held polls")
    assert await store.remove_job("stopped", now=engine.clock.now())
    await engine.renew_held()
    polls = answers.polls["stopped"]
    await eventually(lambda: answers.polls["kept"] >= answers.polls["stopped"] + 5, what="more polls of the other")
    assert polls == answers.polls["stopped"]
    assert "stopped" not in engine.held
    await stop_engine(engine, stop, task)
    assert ["kept"] == [job.id for job in await store.list_jobs()]


async def test_a_held_job_whose_renewal_is_refused_is_dropped_and_left_to_its_new_holder(
    store: CountingStore,
) -> None:
    """Another replica holds the job now (its lease was given away): the held copy is neither polled
    nor written again, and the drain leaves the other holder's lease alone."""
    answers = Answers()
    engine, stop, task = await start(store, answers, "taken")
    await eventually(lambda: answers.polls.get("taken", 0) >= 3, what="held polls")
    written, token = len(store.written), engine.held["taken"]
    await store.release_job("taken", token=token)  # as if the lease had run out under a stalled renewer
    (theirs,) = await store.claim_due_jobs(now=engine.clock.now() + 1, limit=1, owner="w2", lease=60.0)
    await engine.renew_held()
    polls = answers.polls["taken"]
    await asyncio.sleep(0.3)  # six planned polls' time
    assert polls == answers.polls["taken"]
    await stop_engine(engine, stop, task)
    assert written == len(store.written)
    stored = await store.get_job("taken")
    assert stored is not None and stored.polls == 1  # its first poll's write; untouched by the lost holder since
    assert [True] == await store.record_polls(
        [("taken", theirs.lease.token, PollUpdate(1.0, 1, 0, None))],
        now=engine.clock.now(),  # type: ignore[union-attr]
    )


async def test_kill_9_while_held_polls_the_job_again_once_its_lease_runs_out(tmp_path: Path) -> None:
    """A daemon killed while it holds a job unwritten: nobody polls the job while that lease lives,
    and a restarted daemon polls it again within about one lease of the kill."""
    lease = 3.0
    async with FakeSendGrid() as fake:
        fake.script_job("held-1", outcome="completed", pending_for=3600)
        config = tmp_path / "config.yaml"
        config.write_text(
            config_text(
                fake.base_url,
                f"sqlite:///{tmp_path}/state.db",
                jobs_file=write_jobs(tmp_path / "jobs.yaml", ["held-1"]),
                polling="initial_delay: 0s\n  min_interval: 100ms\n  max_interval: 100ms\n  deadline: 60s",
                extra=f"heartbeat_file: {tmp_path}/hb\nlogging:\n  level: warning\n",
            ).replace("state:\n", f"state:\n  lease: {lease:g}s\n"),
            encoding="utf-8",
        )
        proc = await DaemonProcess.start(config)
        await eventually(lambda: fake.polls.get("held-1", 0) >= 8, timeout=30, what="held polls", watch=[proc])
        proc.proc.send_signal(signal.SIGKILL)
        assert -signal.SIGKILL == await proc.wait(10)
        killed, polls = time.time(), fake.polls["held-1"]
        store = SqliteStore(str(tmp_path / "state.db"))
        await store.open()
        try:
            stored = await store.get_job("held-1")
            assert stored is not None and stored.polls < polls - 5  # held: most polls were never written
            assert [] == await store.claim_due_jobs(now=killed, limit=5, owner="peek", lease=0.001)
        finally:
            await store.close()
        again = await DaemonProcess.start(config)
        try:
            await eventually(
                lambda: fake.polls["held-1"] > polls, timeout=lease + 10, what="polled again", watch=[again]
            )
            after = time.time() - killed
        finally:
            again.proc.send_signal(signal.SIGTERM)
            await again.wait(10)
    assert lease / 2 <= after <= lease + 3.0  # fenced while the lease lived; due again once it ran out
