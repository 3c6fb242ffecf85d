"""Batches end to end: the daemon against the fake SendGrid, a webhook receiver and a fake Slack endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import Received, SlackReceiver, WebhookReceiver, config_text, eventually, make_config
from watcher.batchloop import BatchLoop, summary_deliveries
from watcher.clock import ManualClock
from watcher.daemon import Daemon
from watcher.models import Batch, BatchPhase, DeliveryState, JobRef, JobState, Outcome, Snapshot
from watcher.notify.outbox import Backoff
from watcher.outcomes import BatchChoice, Recipient
from watcher.routing import Route
from watcher.store import MemoryStore, StateStore, open_store
from watcher.testing.fake_sendgrid import FakeSendGrid

FAST = Backoff(initial=0.05, maximum=0.2)
T0 = 1_800_000_000.0
BATCH_FINISHED = "contact_import.batch_finished"
INVALID = [("a@x", "invalid email"), ("b@x", "invalid email"), ("c@x", "bad field")]


def batch_config(tmp_path: Path, fake_url: str, hook_url: str, slack_url: str, *, settle: str = "300ms") -> str:
    """The fast test config with a Slack notifier (batch defaults: summary and early failures only)."""
    text = config_text(fake_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook_url)
    return text + f"  chat:\n    type: slack\n    webhook_url: {slack_url}\nbatches:\n  settle: {settle}\n"


async def add_batch(url: str, ids: Sequence[str], batch: str, labels: dict[str, str] | None = None) -> None:
    """Put jobs in a batch straight into the store, before a daemon starts on it."""
    store = open_store(url)
    await store.open()
    try:
        now = time.time()
        for job_id in ids:
            assert await store.add_job(JobRef(job_id, labels or {}, batch=batch), now=now, first_poll_at=now)
    finally:
        await store.close()


def batch_events(hook: WebhookReceiver) -> list[Received]:
    return [r for r in hook.received if r.body["type"] == BATCH_FINISHED]


def script_forty(fake: FakeSendGrid) -> list[str]:
    """40 jobs: 3 failed, 5 errored (3 error rows each), 2 never found, 30 completed."""
    ids = [f"nb-{i:02d}" for i in range(40)]
    for i, job_id in enumerate(ids):
        pending = 0.05 + (i % 8) * 0.05
        if i < 3:
            fake.script_job(job_id, outcome="failed", requested=20, pending_for=pending,
                            error_rows=[("z@x", "list too large")])
        elif i < 8:
            fake.script_job(job_id, outcome="errored", requested=100, pending_for=pending, error_rows=INVALID)
        elif i >= 10:
            fake.script_job(job_id, outcome="completed", requested=100, updated=10, pending_for=pending)
    return ids


async def test_a_batch_of_40_gives_chat_one_summary_plus_each_failure_and_the_webhook_everything(
    tmp_path: Path,
) -> None:
    """40 batched jobs with mixed outcomes: Slack gets one summary and the 3 failures early; the webhook
    gets all 40 job events and one summary whose counts, sums and merged error reasons are right."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook, SlackReceiver() as slack:
        ids = script_forty(fake)
        config = make_config(tmp_path, batch_config(tmp_path, fake.base_url, hook.url, slack.url))
        await add_batch(config.state.url, ids, "nightly", {"team": "growth"})
        daemon = Daemon(config, delivery_backoff=FAST)
        assert 0 == await asyncio.wait_for(daemon.run(until_idle=True, install_signals=False), 30)
        deliveries = await delivered_by_notifier(config.state.url)
    assert 40 == len(hook.by_job())
    [summary] = batch_events(hook)
    data = summary.body["data"]
    assert ("nightly", "failed", 40) == (data["batch"], data["status"], data["jobs"])
    assert {"failed": 3, "errored": 5, "not_found": 2, "completed": 30} == data["outcomes"]
    assert {"requested_count": 3560, "created_count": 3185, "updated_count": 300, "deleted_count": 0,
            "errored_count": 75} == data["totals"]
    assert {"rows": 18, "top_reasons": [{"reason": "invalid email", "count": 10},
                                        {"reason": "bad field", "count": 5},
                                        {"reason": "list too large", "count": 3}]} == data["errors"]
    assert ids[:10] == [item["job_id"] for item in data["not_completed"]]
    assert ({"team": "growth"}, None) == (data["labels"], data["continues"])
    # Slack: the three failures at once, then the one summary; nothing per completed or errored job.
    assert 4 == len(slack.posts)
    assert ["contact_import.batch_finished"] + ["contact_import.failed"] * 3 == sorted(deliveries["chat"])
    assert 41 == len(deliveries["hook"])


async def delivered_by_notifier(url: str) -> dict[str, list[str]]:
    """Event types of the delivered deliveries, per notifier (every one must be delivered)."""
    store = open_store(url)
    await store.open()
    try:
        out: dict[str, list[str]] = {}
        for delivery in await store.list_deliveries():
            assert DeliveryState.DELIVERED == delivery.state, delivery
            out.setdefault(delivery.notifier, []).append(delivery.event_type)
        return out
    finally:
        await store.close()


async def test_a_job_joining_after_the_summary_reopens_the_batch_and_the_next_summary_continues(
    tmp_path: Path,
) -> None:
    """A batch summarised, then a job joins it: the batch reopens, and its second summary covers only
    the new job and names the first summary in `continues`; the metrics count it finished."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook, SlackReceiver() as slack:
        for job_id in ("early-1", "early-2", "late-1"):
            fake.script_job(job_id, outcome="completed", pending_for=0.05)
        config = make_config(tmp_path, batch_config(tmp_path, fake.base_url, hook.url, slack.url))
        await add_batch(config.state.url, ["early-1", "early-2"], "weekly")
        daemon = Daemon(config, delivery_backoff=FAST)
        running = asyncio.create_task(daemon.run(install_signals=False))
        try:
            await eventually(lambda: batch_events(hook), timeout=15, what="the first summary")
            assert await daemon._require(daemon.intake).add(JobRef("late-1", batch="weekly"))
            await eventually(lambda: len(batch_events(hook)) == 2, timeout=15, what="the second summary")
            batch = await daemon.store.get_batch("weekly")
            scraped = (await daemon.metrics.render(daemon)).decode()
        finally:
            daemon.stop()
            assert 0 == await asyncio.wait_for(running, 10)
    first, second = (r.body["data"] for r in batch_events(hook))
    assert (2, None) == (first["jobs"], first["continues"])
    assert (1, first["summary_id"]) == (second["jobs"], second["continues"])
    assert {"completed": 1} == second["outcomes"]
    assert batch is not None and (BatchPhase.FINISHED, 2, 3) == (batch.phase, batch.summaries, batch.jobs)
    assert 2 == len(slack.posts)  # the two summaries, no per-job message
    assert 'import_watcher_batches{state="finished"} 1.0' in scraped
    assert 'import_watcher_batches{state="open"} 0.0' in scraped


# --- the batch loop on its own, with a manual clock -------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[StateStore]:
    memory = MemoryStore()
    await memory.open()
    yield memory
    await memory.close()


async def finish_jobs(store: StateStore, clock: ManualClock, outcomes: dict[str, Outcome], batch: str) -> None:
    """Add each job to `batch` and record its outcome now."""
    now = clock.now()
    for job_id in outcomes:
        await store.add_job(JobRef(job_id, {"team": "growth"}, batch=batch), now=now, first_poll_at=now)
    for job in await store.claim_due_jobs(now=now, limit=100, owner="t", lease=30):
        assert job.lease is not None
        assert await store.record_outcome(
            job.id, token=job.lease.token, now=now, outcome=outcomes[job.id],
            snapshot=Snapshot(outcomes[job.id].value, "upsert", {"requested_count": 5}), polls=1,
            detected_at=now, deliveries=[],
        )


async def test_a_batch_is_summarised_only_after_it_settled(store: StateStore) -> None:
    """All jobs final is not enough: the summary waits `settle` after the last change, then comes once."""
    clock = ManualClock()
    recipients = [Recipient("chat", 3600.0, BatchChoice(per_job=False)), Recipient("hook", 3600.0)]
    loop = BatchLoop(store=store, clock=clock, owner="w1", settle=60.0, recipients=recipients)
    await finish_jobs(store, clock, {"s-1": Outcome.COMPLETED, "s-2": Outcome.ERRORED}, "daily")
    clock.advance(59)
    assert 0 == await loop._claim()
    clock.advance(1)
    assert 1 == await loop._claim()
    await asyncio.gather(*loop._inflight)
    clock.advance(600)
    assert 0 == await loop._claim()
    summaries = await store.list_deliveries()
    assert ["chat", "hook"] == sorted(d.notifier for d in summaries)
    assert {("errored", 2)} == {(d.event["data"]["status"], d.event["data"]["jobs"]) for d in summaries}


def finished(job_id: str, outcome: Outcome) -> JobState:
    return JobState(job_id, {"team": "growth"}, None, T0, T0, polls=1, snapshot=Snapshot(outcome.value, "upsert"),
                    outcome=outcome, detected_at=T0 + 60, batch="b")


def test_summaries_route_by_worst_outcome_and_common_labels_and_respect_batches_summary() -> None:
    """A summary is routed like an outcome with the batch's worst status and common labels; a notifier
    with `batches.summary: false` gets none; delivery ids follow the summary id."""
    jobs = [finished("r-1", Outcome.COMPLETED), finished("r-2", Outcome.TIMED_OUT)]
    recipients = {
        "ops": Recipient("ops", 60.0),
        "growth": Recipient("growth", 60.0),
        "quiet": Recipient("quiet", 60.0, BatchChoice(summary=False)),
    }
    routes = (
        Route(("ops",), statuses=frozenset({"timed_out"})),
        Route(("growth", "quiet"), labels={"team": frozenset({"growth"})}),
    )
    settled = Batch("b", BatchPhase.OPEN, 2, 2, {"completed": 1, "timed_out": 1}, T0, T0)
    summary_id, deliveries = summary_deliveries(
        settled, jobs, T0 + 100, routes=routes, recipients=recipients, public_url=None
    )
    assert ["ops", "growth"] == [d.notifier for d in deliveries]
    again = summary_deliveries(settled, jobs, T0 + 200, routes=routes, recipients=recipients, public_url=None)
    assert (summary_id, [d.id for d in deliveries]) == (again[0], [d.id for d in again[1]])
    assert {"timed_out"} == {d.event["data"]["status"] for d in deliveries}
