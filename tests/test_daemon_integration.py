"""The whole loop against the fake SendGrid and a real webhook receiver: outcomes, faults, restarts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import (
    WebhookReceiver,
    config_text,
    eventually,
    free_port,
    make_config,
    require_binary,
    write_jobs,
)
from watcher.daemon import Daemon
from watcher.models import Delivery, DeliveryState
from watcher.notify.outbox import Backoff
from watcher.store import open_store
from watcher.testing.fake_sendgrid import FakeSendGrid

FAST = Backoff(initial=0.05, maximum=0.2)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


async def run_until_idle(daemon: Daemon, timeout: float = 20.0) -> int:
    return await asyncio.wait_for(daemon.run(until_idle=True, install_signals=False), timeout)


async def test_every_outcome_is_delivered_once(tmp_path: Path) -> None:
    """Five jobs end in the five outcomes and each outcome arrives once, signed, at the receiver."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("ok-1", outcome="completed", pending_for=0.2, requested=100)
        fake.script_job("err-1", outcome="errored", pending_for=0.3, requested=50, errored=3,
                        error_rows=[("a@x", "invalid email"), ("b@x", "invalid email"), ("c@x", "bad field")])
        fake.script_job("fail-1", outcome="failed", pending_for=0.1, job_type="delete")
        fake.script_job("stuck-1", outcome="pending")
        jobs = write_jobs(tmp_path / "jobs.yaml", ["ok-1", "err-1", "fail-1", "stuck-1", "ghost-1"])
        config = make_config(tmp_path, config_text(fake.base_url, sqlite_url(tmp_path), hook_url=hook.url, jobs_file=jobs))
        assert 0 == await run_until_idle(Daemon(config, delivery_backoff=FAST))
    assert {"ok-1": "completed", "err-1": "errored", "fail-1": "failed", "stuck-1": "timed_out",
            "ghost-1": "not_found"} == hook.statuses()
    assert all(1 == len(items) for items in hook.by_job().values())
    errored = hook.by_job()["err-1"][0].body
    assert "contact_import.errored" == errored["type"]
    assert {"rows": 3, "top_reasons": [{"reason": "invalid email", "count": 2}, {"reason": "bad field", "count": 1}]} == errored["data"]["errors"]
    assert 50 == errored["data"]["results"]["requested_count"]
    assert {"type", "timestamp", "data"} == set(errored)
    assert "delete" == hook.by_job()["fail-1"][0].body["data"]["job_type"]


async def test_rate_limit_is_obeyed(tmp_path: Path) -> None:
    """Against a fake allowing 20 requests per second, 40 jobs finish with almost no 429s."""
    async with FakeSendGrid(rate_limit=20, rate_window=1.0) as fake, WebhookReceiver() as hook:
        ids = [f"rl-{i}" for i in range(40)]
        for job_id in ids:
            fake.script_job(job_id, outcome="completed", pending_for=0.5)
        config = make_config(tmp_path, config_text(
            fake.base_url, sqlite_url(tmp_path), hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ids),
            # max_interval bounds every rate-limit wait: it must cover the fake's 1 s window.
            polling="initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 2s\n  deadline: 30s",
        ))
        assert 0 == await run_until_idle(Daemon(config, delivery_backoff=FAST), timeout=30)
        assert {job_id: "completed" for job_id in ids} == hook.statuses()
        # Only the opening burst, before the first X-RateLimit headers are known, may overshoot.
        assert fake.responses_by_status[429] <= 1
        assert fake.responses_by_status[200] >= 40


async def test_faults_are_retried_until_the_true_outcome(tmp_path: Path) -> None:
    """With 5xx, malformed bodies and dropped connections, every job still reaches its outcome once."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.set_faults(error_rate=0.3, malformed_rate=0.1, drop_rate=0.05, seed=7)
        ids = [f"flaky-{i}" for i in range(15)]
        for i, job_id in enumerate(ids):
            fake.script_job(job_id, outcome=("completed", "errored", "failed")[i % 3], pending_for=0.2)
        config = make_config(tmp_path, config_text(
            fake.base_url, sqlite_url(tmp_path), hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ids),
            polling="initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 200ms\n  deadline: 60s",
        ))
        assert 0 == await run_until_idle(Daemon(config, delivery_backoff=FAST), timeout=40)
        assert fake.responses_by_status[500] > 0
    expected = {job_id: ("completed", "errored", "failed")[i % 3] for i, job_id in enumerate(ids)}
    assert expected == hook.statuses()
    assert all(1 == len(items) for items in hook.by_job().values())


async def test_restart_resumes_without_a_second_outcome(tmp_path: Path) -> None:
    """A daemon stopped mid-run leaves work that the next one finishes, with one delivery per job."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        ids = [f"rs-{i}" for i in range(10)]
        for i, job_id in enumerate(ids):
            fake.script_job(job_id, outcome="completed", pending_for=0.1 + 0.15 * i)
        config = make_config(tmp_path, config_text(
            fake.base_url, sqlite_url(tmp_path), hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ids),
        ))
        first = Daemon(config, delivery_backoff=FAST)
        running = asyncio.create_task(first.run(install_signals=False))
        while len(hook.received) < 3:
            await asyncio.sleep(0.02)
        first.stop()
        assert 0 == await asyncio.wait_for(running, 10)
        assert len(hook.received) < len(ids)
        assert 0 == await run_until_idle(Daemon(config, delivery_backoff=FAST))
    assert {job_id: "completed" for job_id in ids} == hook.statuses()
    assert len(ids) == len(hook.received)
    assert len(ids) == len({r.webhook_id for r in hook.received})


async def test_receiver_outage_then_recovery(tmp_path: Path) -> None:
    """A receiver that fails for a while still gets each notification exactly once, same webhook-id."""
    async with FakeSendGrid() as fake, WebhookReceiver(fail_with=503, fail_times=6) as hook:
        ids = ["out-1", "out-2"]
        for job_id in ids:
            fake.script_job(job_id, outcome="completed")
        config = make_config(tmp_path, config_text(
            fake.base_url, sqlite_url(tmp_path), hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ids),
        ))
        assert 0 == await run_until_idle(Daemon(config, delivery_backoff=FAST))
    assert 6 == hook.rejected
    assert {"out-1": "completed", "out-2": "completed"} == hook.statuses()
    assert 2 == len(hook.received)
    store = open_store(sqlite_url(tmp_path))
    await store.open()
    try:
        deliveries = await store.list_deliveries(ids)
    finally:
        await store.close()
    assert {DeliveryState.DELIVERED} == {d.state for d in deliveries}
    assert 8 == sum(d.attempts for d in deliveries)


async def test_refused_key_alerts_once_and_recovers(tmp_path: Path) -> None:
    """A 401 sends one watcher.alert, jobs keep waiting, and a second alert says the key works again."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("key-1", outcome="completed")
        fake.refuse_key(True, status=401)
        config = make_config(tmp_path, config_text(
            fake.base_url, sqlite_url(tmp_path), hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ["key-1"]),
            polling="initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 100ms\n  deadline: 30s",
        ))
        daemon = Daemon(config, delivery_backoff=FAST)
        running = asyncio.create_task(run_until_idle(daemon))
        while not hook.received:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)  # several refused polls, still one alert
        fake.refuse_key(False)
        assert 0 == await running
    alerts = [r.body["data"]["alert"] for r in hook.received if r.body["type"] == "watcher.alert"]
    assert ["key_refused", "key_accepted"] == alerts
    assert {"key-1": "completed"} == hook.statuses()
    assert "SG.fake-key" not in str([r.raw for r in hook.received])


@pytest.mark.parametrize("store_url", ["memory://", "sqlite"])
async def test_until_idle_with_no_jobs_exits_at_once(tmp_path: Path, store_url: str) -> None:
    """--until-idle with nothing to watch exits 0 straight away."""
    url = sqlite_url(tmp_path) if store_url == "sqlite" else store_url
    async with FakeSendGrid() as fake:
        config = make_config(tmp_path, config_text(fake.base_url, url))
        assert 0 == await run_until_idle(Daemon(config), timeout=5)


async def test_retention_purges_at_start_up_and_a_purged_job_is_not_watched_again(tmp_path: Path) -> None:
    """A finished job past `state.retention` is purged when the daemon starts (leaving a tombstone);
    still listed in the job file, it is neither polled nor notified again."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("old-1", outcome="completed")
        jobs = write_jobs(tmp_path / "jobs.yaml", ["old-1"])
        text = config_text(fake.base_url, sqlite_url(tmp_path), hook_url=hook.url, jobs_file=jobs)
        assert 0 == await run_until_idle(Daemon(make_config(tmp_path, text), delivery_backoff=FAST))
        assert 1 == len(hook.received)
        polls_before = fake.requests_total
        await asyncio.sleep(1.1)
        config = make_config(tmp_path, text.replace("state:\n", "state:\n  retention: 1s\n"))
        daemon = Daemon(config, delivery_backoff=FAST)
        running = asyncio.create_task(daemon.run(install_signals=False))

        async def purged() -> bool:
            return daemon.started and await daemon.store.get_job("old-1") is None

        await eventually(purged, timeout=10, what="old-1 purged")
        assert ["old-1"] == list(await daemon.store.tombstones(["old-1"]))
        await asyncio.sleep(2.5)  # past a job file refresh
        daemon.stop()
        assert 0 == await asyncio.wait_for(running, 10)
        assert (polls_before, 1) == (fake.requests_total, len(hook.received))
    store = open_store(sqlite_url(tmp_path))
    await store.open()
    try:
        assert (None, ["old-1"]) == (await store.get_job("old-1"), list(await store.tombstones(["old-1"])))
    finally:
        await store.close()


async def test_a_delivery_nobody_here_knows_waits_and_is_declared_dead_at_its_deadline(tmp_path: Path) -> None:
    """A replica leaves deliveries to notifiers it does not know; housekeeping declares dead the one past
    its deadline (alerting the known notifiers) and leaves the one still in time pending."""
    store = open_store(sqlite_url(tmp_path))
    await store.open()
    now = time.time()
    event = {"type": "contact_import.completed", "data": {"job_id": "rolled-1"}}
    try:
        await store.add_deliveries([
            Delivery(id="msg_late", notifier="elsewhere", event=event, created_at=now - 100,
                     next_attempt_at=now - 100, deadline_at=now - 1, job_id=None),
            Delivery(id="msg_in_time", notifier="elsewhere", event=event, created_at=now,
                     next_attempt_at=now, deadline_at=now + 3600, job_id=None),
        ])
    finally:
        await store.close()
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        config = make_config(tmp_path, config_text(fake.base_url, sqlite_url(tmp_path), hook_url=hook.url))
        daemon = Daemon(config, delivery_backoff=FAST)
        running = asyncio.create_task(daemon.run(install_signals=False))
        await eventually(lambda: hook.received, timeout=10, what="the delivery_dead alert")
        states = {d.id: d.state for d in await daemon.store.list_deliveries(with_events=False)}
        daemon.stop()
        assert 0 == await asyncio.wait_for(running, 10)
    [alert] = [r.body["data"] for r in hook.received]
    assert ("delivery_dead", "elsewhere", "msg_late") == (alert["alert"], alert["notifier"], alert["delivery_id"])
    assert DeliveryState.DEAD == states["msg_late"]
    assert DeliveryState.PENDING == states["msg_in_time"]


async def test_the_store_down_at_start_is_retried_until_it_answers(tmp_path: Path) -> None:
    """A daemon started before its Redis waits (logging daemon.store_unavailable) and then does its work."""
    binary = require_binary("redis-server")
    port = free_port()
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("late-store-1", outcome="completed")
        config = make_config(tmp_path, config_text(
            fake.base_url, f"redis://127.0.0.1:{port}/0?prefix=iw-late", hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ["late-store-1"]),
        ))
        with capture_logs() as logs:
            running = asyncio.create_task(run_until_idle(Daemon(config, delivery_backoff=FAST), timeout=30))
            await eventually(lambda: any(e["event"] == "daemon.store_unavailable" for e in logs), timeout=10,
                             what="the first failed open")
            server = await asyncio.create_subprocess_exec(
                binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                assert 0 == await running
            finally:
                server.terminate()
                await server.wait()
    assert {"late-store-1": "completed"} == hook.statuses()
