"""One summary per batch on the real Redis: three replica processes with one killed, and loops racing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import DaemonProcess, SlackReceiver, StallsOnce, WebhookReceiver, config_text, eventually
from watcher.batchloop import BatchLoop
from watcher.clock import SystemClock
from watcher.models import BatchPhase, JobRef, Outcome, Snapshot
from watcher.outcomes import Recipient
from watcher.store import StateStore, open_store
from watcher.testing.fake_sendgrid import FakeSendGrid

BATCH_FINISHED = "contact_import.batch_finished"
OUTCOMES = ("completed", "completed", "errored", "failed")


@pytest.fixture
async def redis_store(redis_url: str, redis_prefix: str) -> AsyncIterator[str]:
    """The state URL of a fresh namespace on the test Redis (skipped when it is unreachable)."""
    yield f"{redis_url}?prefix={redis_prefix}"


async def opened(url: str) -> StateStore:
    store = open_store(url)
    await store.open()
    return store


def replica_config(tmp_path: Path, fake_url: str, hook_url: str, slack_url: str, state_url: str) -> Path:
    polling = "initial_delay: 0s\n  min_interval: 100ms\n  max_interval: 300ms\n  deadline: 60s"
    text = config_text(fake_url, state_url, hook_url=hook_url, polling=polling, extra=(
        f"  chat:\n    type: slack\n    webhook_url: {slack_url}\n"
        "batches:\n  settle: 300ms\nlogging:\n  level: info\n  format: json\n"
    ))
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("state:\n", "state:\n  lease: 11s\n"), encoding="utf-8")
    return path


async def test_three_replicas_one_killed_mid_batch_still_send_one_summary(tmp_path: Path, redis_store: str) -> None:
    """40 batched jobs over 3 replica processes on one Redis, one SIGKILLed halfway: every job event
    arrives, and exactly one summary (one webhook-id, one `batch.finished`, summaries == 1, one Slack
    summary message besides the failures)."""
    ids = [f"rb-{i:02d}" for i in range(40)]
    store = await opened(redis_store)
    try:
        now = time.time()
        for job_id in ids:
            assert await store.add_job(JobRef(job_id, batch="night"), now=now, first_poll_at=now)
    finally:
        await store.close()
    async with FakeSendGrid(latency=0.02) as fake, WebhookReceiver() as hook, SlackReceiver() as slack:
        for i, job_id in enumerate(ids):
            fake.script_job(job_id, outcome=OUTCOMES[i % 4], pending_for=0.3 + (i % 20) * 0.1)
        config = replica_config(tmp_path, fake.base_url, hook.url, slack.url, redis_store)
        procs = [await DaemonProcess.start(config, "--until-idle", log=tmp_path / f"r{n}.log") for n in range(3)]
        try:
            await eventually(lambda: len(hook.by_job()) >= 15, 60, what="15 job events", watch=procs)
            procs[0].proc.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == await procs[0].wait(10)
            codes = await asyncio.gather(*(proc.wait(60) for proc in procs[1:]))
            assert [0, 0] == codes, "\n".join(proc.tail() for proc in procs)
        finally:
            for proc in procs:
                await proc.kill()
    summaries = [r for r in hook.received if r.body["type"] == BATCH_FINISHED]
    assert 1 == len({r.webhook_id for r in summaries})
    data = summaries[0].body["data"]
    assert (40, {"completed": 20, "errored": 10, "failed": 10}) == (data["jobs"], data["outcomes"])
    assert sorted(ids) == sorted(hook.by_job())
    finished = sum(1 for proc in procs for e in proc.events() if e.get("event") == "batch.finished")
    store = await opened(redis_store)
    try:
        batch = await store.get_batch("night")
    finally:
        await store.close()
    assert batch is not None and (1, BatchPhase.FINISHED, 1) == (finished, batch.phase, batch.summaries)
    # Slack: one summary; besides it only the 10 failures (a same-message resend by the killed replica aside).
    texts = [post["text"] for post in slack.posts]
    summary_posts = [t for t in texts if "Batch night" in t.splitlines()[0]]
    assert 1 == len(summary_posts), texts
    assert all(" failed" in t for t in texts)
    assert 10 <= len(texts) - 1 <= 13


async def test_loops_racing_past_a_lapsed_claim_write_one_summary(redis_store: str) -> None:
    """Three batch loops on one Redis, nothing renewed: the first to claim the batch stalls past its lease,
    another claims and summarises it, and the stalled one's late finish is refused; one summary in all."""
    stores = [await opened(redis_store) for _ in range(3)]
    try:
        now = time.time()
        for job_id in ("rc-1", "rc-2", "rc-3"):
            await stores[0].add_job(JobRef(job_id, batch="race"), now=now, first_poll_at=now)
        for job in await stores[0].claim_due_jobs(now=now, limit=10, owner="t", lease=30):
            assert job.lease is not None
            await stores[0].record_outcome(job.id, token=job.lease.token, now=now, outcome=Outcome.COMPLETED,
                                           snapshot=Snapshot("completed"), polls=1, detected_at=now, deliveries=[])
        stalls = [2.0]
        loops = [
            BatchLoop(store=StallsOnce(store, stalls), clock=SystemClock(), owner=f"w{n}",  # type: ignore[arg-type]
                      settle=0.0, recipients=[Recipient("hook", 3600.0)], lease=1.0)
            for n, store in enumerate(stores)
        ]
        for loop in loops:
            loop.renewing = False  # a stall past the lease, as a paused process would have
        stop = asyncio.Event()
        with capture_logs() as logs:
            runs = [asyncio.create_task(loop.run(stop)) for loop in loops]
            await eventually(lambda: sum(loop.summaries for loop in loops) >= 1, 15, what="a summary")
            await eventually(lambda: not stalls and not any(loop.in_flight for loop in loops), 5,
                             what="the stalled summariser done")
            stop.set()
            await asyncio.gather(*runs)
            await asyncio.gather(*(loop.drain(1.0) for loop in loops))
        batch = await stores[0].get_batch("race")
        deliveries = [d for d in await stores[0].list_deliveries() if d.event_type == BATCH_FINISHED]
    finally:
        for store in stores:
            await store.close()
    assert 1 == sum(loop.summaries for loop in loops)
    assert batch is not None and (1, 1) == (batch.summaries, len(deliveries))
    assert 1 == sum(1 for e in logs if e["event"] == "batches.lease_lost")  # the stalled one's finish refused
