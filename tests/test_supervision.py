"""Loops never end silently: a crash is logged with its traceback, counted, restarted; readiness says so meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.helpers import WebhookReceiver, config_text, eventually, make_config, write_jobs
from tests.test_engine import FakeSendGrid as PendingSendGrid
from tests.test_engine import add_jobs
from watcher.clock import SystemClock
from watcher.daemon import Daemon
from watcher.engine import Engine
from watcher.errors import StoreUnavailable
from watcher.models import JobRef, JobState, Outcome, Snapshot
from watcher.notify.outbox import Backoff
from watcher.outcomes import Recipient, make_delivery
from watcher.policy import PollPolicy
from watcher.store import MemoryStore
from watcher.supervise import Supervisor, nothing_left
from watcher.testing.fake_sendgrid import FakeSendGrid

FAST = Backoff(initial=0.05, maximum=0.2)


class FaultyStore(MemoryStore):
    """A memory store whose claims raise a bug-like error, or whose poll records are refused, while told to."""

    def __init__(self) -> None:
        super().__init__()
        self.claims_crash = False
        self.records_refused = False

    async def claim_due_jobs(self, *, now: float, limit: int, owner: str, lease: float) -> list[JobState]:
        if self.claims_crash:
            raise RuntimeError("claim exploded")
        return await super().claim_due_jobs(now=now, limit=limit, owner=owner, lease=lease)

    async def record_polls(self, updates: Any, *, now: float) -> list[bool]:
        if self.records_refused:
            raise StoreUnavailable("database or disk is full")
        return await super().record_polls(updates, now=now)

    async def renew_jobs(self, leases: Any, *, now: float, lease: float) -> list[bool]:
        # A job whose answer does not change is held, not written: its lease renewals are its writes.
        if self.records_refused:
            raise StoreUnavailable("database or disk is full")
        return await super().renew_jobs(leases, now=now, lease=lease)

    async def set_meta(self, key: str, value: str) -> None:
        if self.records_refused:
            raise StoreUnavailable("database or disk is full")
        await super().set_meta(key, value)


async def test_a_crashing_loop_is_logged_with_its_traceback_and_restarted() -> None:
    """Each crash is one supervisor.loop_crashed with exc_info; the loop runs again after a backoff."""
    supervisor, stop, runs = Supervisor(initial=0.01, maximum=0.02), asyncio.Event(), []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise ValueError(f"crash {len(runs)}")
        await stop.wait()

    with capture_logs() as logs:
        task = supervisor.start("flaky", flaky, stop)
        await eventually(lambda: len(runs) == 3, timeout=2, what="third run")
        stop.set()
        await task
    crashes = [entry for entry in logs if entry["event"] == "supervisor.loop_crashed"]
    assert (["flaky", "flaky"], 2) == ([c["loop"] for c in crashes], supervisor.crashes["flaky"])
    assert all(isinstance(c["exc_info"], ValueError) for c in crashes)
    assert [] == supervisor.down()


async def test_a_failing_periodic_job_is_down_until_it_succeeds_again() -> None:
    """A periodic job's exception marks it down (not lost in the scheduler); the next good run clears it."""
    supervisor, fail = Supervisor(), [True]

    async def job() -> None:
        if fail[0]:
            raise KeyError("boom")

    run = supervisor.periodic("housekeeping", job)
    await run()
    assert (["housekeeping"], 1) == (supervisor.down(), supervisor.crashes["housekeeping"])
    fail[0] = False
    await run()
    assert [] == supervisor.down()


async def test_a_poll_that_crashes_is_logged_and_its_job_polled_again() -> None:
    """An unexpected exception in one poll is engine.poll_crashed with a traceback; the job is not dropped."""

    class CrashOnce(PendingSendGrid):
        async def get_import(self, job_id: str) -> Snapshot:
            if not self.calls:
                self.calls.append(job_id)
                raise OverflowError("count out of range")
            return await super().get_import(job_id)

    store, clock = MemoryStore(), SystemClock()
    [job_id] = await add_jobs(store, 1, clock.now())
    client = CrashOnce(clock)
    policy = PollPolicy(initial_delay=0, min_interval=300, max_interval=0.2)
    engine = Engine(store=store, client=client, policy=policy, clock=clock, owner="w1", recipients=[], lease=30)
    stop = asyncio.Event()
    with capture_logs() as logs:
        loop = asyncio.create_task(engine.run(stop))

        async def polled() -> bool:
            job = await store.get_job(job_id)
            return job is not None and job.polls == 1

        await eventually(polled, timeout=5, what="polled after the crash")
        stop.set()
        await loop
        await engine.drain(1)
    [crash] = [entry for entry in logs if entry["event"] == "engine.poll_crashed"]
    assert (job_id, OverflowError) == (crash["job_id"], type(crash["exc_info"]))
    assert ([job_id, job_id], {}) == (client.calls, engine.held)


async def test_a_loop_down_makes_the_daemon_not_ready_until_it_runs_again(tmp_path: Path) -> None:
    """While the engine loop keeps crashing, not_ready_reason says so; once the fault goes, the same
    daemon is ready again and finishes its jobs."""
    store = FaultyStore()
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("sv-1", outcome="completed")
        config = make_config(tmp_path, config_text(
            fake.base_url, "memory://", hook_url=hook.url, jobs_file=write_jobs(tmp_path / "jobs.yaml", ["sv-1"]),
        ))
        daemon = Daemon(config, store=store, delivery_backoff=FAST, supervisor=Supervisor(initial=0.2, maximum=0.4))
        store.claims_crash = True
        running = asyncio.create_task(daemon.run(until_idle=True, install_signals=False))
        await eventually(lambda: daemon.supervisor.crashes.get("engine", 0) >= 2, timeout=5, what="engine crashes")
        assert "engine loop down" == await daemon.not_ready_reason()
        store.claims_crash = False
        await eventually(lambda: hook.received, timeout=5, what="the job's notification")
        assert 0 == await asyncio.wait_for(running, 10)
    assert {"sv-1": "completed"} == hook.statuses()


async def test_a_refused_write_makes_the_daemon_not_ready_until_a_write_works(tmp_path: Path) -> None:
    """StoreUnavailable on the poll records marks the store unavailable; a later write clears it."""
    store = FaultyStore()
    async with FakeSendGrid() as fake:
        fake.script_job("sw-1", outcome="pending")
        config = make_config(tmp_path, config_text(
            fake.base_url, "memory://", jobs_file=write_jobs(tmp_path / "jobs.yaml", ["sw-1"]),
            polling="initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 100ms\n  deadline: 60s",
        ))
        daemon = Daemon(config, store=store, lease=1.0)
        started = asyncio.Event()
        daemon.on_started.append(lambda _: started.set())
        running = asyncio.create_task(daemon.run(install_signals=False))
        await asyncio.wait_for(started.wait(), 5)

        async def ready() -> bool:
            return await daemon.not_ready_reason() is None

        await eventually(ready, timeout=5, what="ready (the job file read)")
        store.records_refused = True
        await eventually(daemon.not_ready_reason, timeout=5, what="not ready")
        assert "state store unavailable" == await daemon.not_ready_reason()
        store.records_refused = False
        await eventually(ready, timeout=5, what="ready again")
        polls_before = fake.polls["sw-1"]
        await eventually(lambda: fake.polls["sw-1"] > polls_before + 2, timeout=5, what="polling goes on")
        daemon.stop()
        assert 0 == await asyncio.wait_for(running, 10)


class SummarisedDuringCounts(MemoryStore):
    """A store whose open batch is summarised by another replica right after `counts` has read it."""

    summarise: Any = None

    async def counts(self) -> Any:
        counts = await super().counts()
        if self.summarise is not None:
            summarise, self.summarise = self.summarise, None
            await summarise()
        return counts


async def test_until_idle_never_misses_a_summary_written_between_its_reads() -> None:
    """`--until-idle` asks whether any batch is open before it counts the deliveries: a summary written
    in between (its deliveries in the batch's last transaction) is then counted, never skipped."""
    store, now = SummarisedDuringCounts(), 1000.0
    await store.add_job(JobRef("b-1", batch="night"), now=now, first_poll_at=now)
    (job,) = await store.claim_due_jobs(now=now, limit=1, owner="a", lease=60)
    assert job.lease is not None
    assert await store.record_outcome("b-1", token=job.lease.token, now=now, outcome=Outcome.COMPLETED,
                                      snapshot=None, polls=1, detected_at=now, deliveries=[])

    async def summarise() -> None:
        (batch,) = await store.claim_settled_batches(now=now + 10, settle=1.0, limit=1, owner="b", lease=60)
        assert batch.lease is not None
        summary = make_delivery(Recipient("hook", 3600.0), {"type": "contact_import.batch_finished"}, now + 10,
                                None, "night", "1")
        assert await store.finish_batch("night", token=batch.lease.token, now=now + 10, summary_id="s-1",
                                        deliveries=[summary])

    store.summarise = summarise
    assert not await nothing_left(store, [], [])  # the batch was open when asked
    assert not await nothing_left(store, [], [])  # its summary is pending now
