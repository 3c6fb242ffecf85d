"""Stuck warnings: one `contact_import.stuck` per job pending past warn_after, one per batch window."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import WebhookReceiver, config_text, delete_redis_prefix, make_config, require_redis, write_jobs
from watcher.clock import ManualClock
from watcher.daemon import Daemon
from watcher.engine import Engine
from watcher.models import Delivery, JobRef, JobState, Snapshot
from watcher.notify.outbox import Backoff
from watcher.outcomes import BatchChoice, Recipient, stuck_deliveries
from watcher.policy import PollPolicy
from watcher.routing import Route
from watcher.store import RedisStore, SqliteStore, StateStore
from watcher.testing.fake_sendgrid import FakeSendGrid

T0 = 1_800_000_000.0  # a whole minute: windows start here
POLICY = PollPolicy(initial_delay=0.0, min_interval=10.0, max_interval=10.0, deadline=3600.0, warn_after=120.0,
                    jitter=0.0)
RECIPIENTS = [Recipient("chat", 3600.0, BatchChoice(per_job=False)), Recipient("hook", 3600.0)]


class Answers:
    """SendGrid as the engine sees it: `pending` for every job until it is told an outcome."""

    def __init__(self) -> None:
        self.final: dict[str, str] = {}
        self.polls: dict[str, int] = {}

    async def get_import(self, job_id: str) -> Snapshot:
        self.polls[job_id] = self.polls.get(job_id, 0) + 1
        return Snapshot(self.final.get(job_id, "pending"), "upsert", {"requested_count": 10})


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    """A real SQLite file, or a fresh namespace on the test Redis (skipped when it is unreachable)."""
    url, prefix = "", f"iw-test-{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        opened: StateStore = SqliteStore(str(tmp_path / "state.db"))
    else:
        url = require_redis()
        # Leases on the test's manual clock (years from the server's TIME), like the contract suite.
        opened = RedisStore(url, prefix=prefix, server_time=False)
    await opened.open()
    yield opened
    await opened.close()
    if url:
        await delete_redis_prefix(url, prefix)


async def run_for(engine: Engine, store: StateStore, clock: ManualClock, seconds: float) -> None:
    """Move the clock on in 10 s steps, letting the engine poll whatever falls due at each."""
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    loop = asyncio.get_running_loop()
    for _ in range(int(seconds // 10)):
        clock.advance(10)
        # Settled, not only "nothing in flight": a job taken from the held queue waits in the ready
        # queue while the claim's store call is answered, and a loaded CI machine under coverage left
        # such polls for the next step (pending_for 130 or 140, not 120). The engine also rechecks
        # what is due every RECHECK_SECONDS of its clock, which this clock passes only in 10 s steps:
        # settled with work due, it is woken, as the recheck would; what it still leaves (a claim
        # not ours to take) is left after 0.2 s.
        deadline, settled_since = loop.time() + 10.0, None
        while loop.time() < deadline:
            due = await engine.next_due_at()
            if not engine.settled:
                settled_since = None
            elif due is None or due > clock.now():
                break
            elif settled_since is None:
                settled_since = loop.time()
                engine.wake()
            elif loop.time() - settled_since > 0.2:
                break
            await asyncio.sleep(0.002)
    stop.set()
    await task
    await engine.drain(1.0)


def listed(delivery: Delivery) -> str:
    """The jobs a warning names: a batch's listed jobs, or the one job."""
    data = delivery.event["data"]
    return " ".join(j["job_id"] for j in data["jobs"]) if "jobs" in data else str(data["job_id"])


def stuck_of(deliveries: list[Delivery]) -> list[Delivery]:
    return [d for d in deliveries if d.event_type == "contact_import.stuck"]


async def test_each_stuck_job_warns_once_a_batch_window_once_and_all_are_watched_on(store: StateStore) -> None:
    """A lone job and three batch mates pending past warn_after: one warning for the lone job, one for the
    three together (a fourth mate, added 70 s later, gets its own), per notifier, also for a notifier
    without per_job; afterwards the jobs are still polled and their outcomes arrive as usual."""
    clock, answers = ManualClock(T0), Answers()
    for job_id in ("solo-1", "b-1", "b-2", "b-3"):
        batch = None if job_id == "solo-1" else "slow"
        await store.add_job(JobRef(job_id, {"team": "growth"}, batch=batch), now=T0, first_poll_at=T0)
    engine = Engine(store=store, client=answers, policy=POLICY, clock=clock, owner="w1", recipients=RECIPIENTS)
    await run_for(engine, store, clock, 70)
    await store.add_job(JobRef("b-4", batch="slow"), now=clock.now(), first_poll_at=clock.now())
    await run_for(engine, store, clock, 200)
    answers.final.update(dict.fromkeys(("solo-1", "b-1", "b-2", "b-3", "b-4"), "completed"))
    await run_for(engine, store, clock, 20)

    warnings = stuck_of(await store.list_deliveries())
    by_message: dict[str, list[str]] = {}
    for d in warnings:
        by_message.setdefault(listed(d), []).append(d.notifier)
    assert {"solo-1": ["chat", "hook"], "b-1 b-2 b-3": ["chat", "hook"], "b-4": ["chat", "hook"]} == {
        jobs: sorted(notifiers) for jobs, notifiers in by_message.items()
    }
    solo = next(d.event["data"] for d in warnings if d.job_id == "solo-1")
    # Warned at the first poll at or past warn_after (120 s): each 10 s step polls what is due.
    assert ("pending", "solo-1") == (solo["status"], solo["job_id"])
    assert 120 == solo["pending_for"]
    jobs = {job.id: job for job in await store.list_jobs()}
    assert {"completed"} == {job.state for job in jobs.values()}
    assert jobs["b-3"].stuck_at is not None and T0 + 120 <= jobs["b-3"].stuck_at <= T0 + 130
    assert answers.polls["b-1"] > 13  # polled every 10 s from 0 to 290 s, warned at 120 s
    # Outcomes as usual: the chat notifier has batched completions in the summary, the webhook each.
    outcomes = [d for d in await store.list_deliveries() if d.event_type == "contact_import.completed"]
    assert ["chat", "hook", "hook", "hook", "hook", "hook"] == sorted(d.notifier for d in outcomes)


def test_stuck_warnings_are_routed_as_status_pending() -> None:
    """A route naming `pending` gets warnings, one naming only outcomes does not, one without status does."""
    job = JobState("p-1", {"team": "growth"}, None, T0, T0)
    recipients = {r: Recipient(r, 60.0) for r in ("pager", "failures", "everything")}
    routes = (
        Route(("pager",), statuses=frozenset({"pending", "failed"})),
        Route(("failures",), statuses=frozenset({"failed"})),
        Route(("everything",)),
    )
    deliveries = stuck_deliveries(job, T0 + 200, warn_after=120.0, mates=[], routes=routes, recipients=recipients)
    assert ["pager", "everything"] == [d.notifier for d in deliveries]


async def test_a_stuck_job_warns_once_and_is_still_watched_to_its_outcome(tmp_path: Path) -> None:
    """Through the daemon: a job pending past warn_after sends one stuck event, then its outcome."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("slow-1", outcome="completed", pending_for=1.0)
        polling = "initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 100ms\n  deadline: 5s\n  warn_after: 300ms"
        text = config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url,
                           jobs_file=write_jobs(tmp_path / "jobs.yaml", ["slow-1"]), polling=polling)
        daemon = Daemon(make_config(tmp_path, text), delivery_backoff=Backoff(initial=0.05, maximum=0.2))
        assert 0 == await asyncio.wait_for(daemon.run(until_idle=True, install_signals=False), 20)
    assert [["contact_import.stuck", "contact_import.completed"]] == [
        [r.body["type"] for r in items] for items in hook.by_job().values()
    ]
    stuck = hook.by_job()["slow-1"][0].body["data"]
    assert ("pending", True) == (stuck["status"], stuck["pending_for"] >= 0)
