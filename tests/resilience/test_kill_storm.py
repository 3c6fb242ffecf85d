"""kill -9 again and again during a run with many jobs and deliveries, then a last restart: nothing lost, nothing forked."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import (
    DaemonProcess,
    WebhookReceiver,
    config_text,
    delete_redis_prefix,
    eventually,
    require_redis,
    write_jobs,
)
from watcher.models import DeliveryState
from watcher.testing.fake_sendgrid import FakeSendGrid

from .conftest import TROUBLE_EVENTS, stored

pytestmark = pytest.mark.resilience

SEED = 6_1409
JOBS = 60
KILLS = 4
HELD_BACK = 6  # jobs that end only after the storm, so the last run always has work left
OUTCOMES = ("completed", "errored", "failed", "completed", "not_found")
POLLING = "initial_delay: 0s\n  min_interval: 100ms\n  max_interval: 300ms\n  deadline: 60s\n  not_found_grace: 1s"


@dataclass
class SlowReceiver(WebhookReceiver):
    """A WebhookReceiver that takes a moment to answer after accepting: a kill then lands between the two."""

    delay: float = 0.05

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        await asyncio.sleep(self.delay)
        return response


async def wait_until(count: Callable[[], int], target: int, timeout: float) -> None:
    """Poll `count()` every 10 ms until it reaches `target` or `timeout` seconds pass (then go on: a kill moment, not a check)."""
    deadline = time.monotonic() + timeout
    while count() < target and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def script(fake: FakeSendGrid) -> dict[str, str]:
    """Jobs ending one every 0.2 s for ~11 s, the held-back ones pending until released; returns id -> true outcome."""
    expected = {}
    for i in range(JOBS):
        job_id, outcome = f"ks-{i:02d}", OUTCOMES[i % len(OUTCOMES)]
        if i >= JOBS - HELD_BACK:
            fake.script_job(job_id, outcome="pending")
            outcome = "completed"
        elif outcome != "not_found":
            fake.script_job(job_id, outcome=outcome, pending_for=0.5 + 0.2 * i)
        expected[job_id] = outcome
    return expected


async def kill_storm(config: Path, log: Path, fake: FakeSendGrid, hook: WebhookReceiver, rng: random.Random) -> list[str]:
    """Start and SIGKILL the daemon KILLS times, alternately a random 0.2-1.5 s after it first polls and
    after a random 3-10 more deliveries; returns what triggered each kill."""
    kills = []
    for n in range(KILLS):
        polled, delivered = fake.requests_total, len(hook.received)
        daemon = await DaemonProcess.start(config, log=log)
        await eventually(lambda polled=polled: fake.requests_total > polled, 20, what=f"run {n + 1}'s first poll", watch=[daemon])
        if n % 2 == 0:
            pause = rng.uniform(0.2, 1.5)
            await asyncio.sleep(pause)
            kills.append(f"{pause:.2f}s after its first poll")
        else:
            more = rng.randint(3, 10)
            await wait_until(lambda: len(hook.received), delivered + more, 3)
            kills.append(f"after {len(hook.received) - delivered} deliveries (aimed at {more})")
        daemon.proc.send_signal(signal.SIGKILL)
        assert -signal.SIGKILL == await daemon.wait(10)
    return kills


@pytest.fixture(params=["sqlite", "redis"])
async def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The state store of the run: a SQLite file, or a fresh namespace on the test Redis (failed in CI without it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
        return
    redis_url = require_redis()
    prefix = f"iw-kill-{uuid.uuid4().hex}"
    yield f"{redis_url}?prefix={prefix}"
    await delete_redis_prefix(redis_url, prefix)


async def test_kill_9_storm_then_restart_loses_and_forks_nothing(tmp_path: Path, state_url: str) -> None:
    """Four SIGKILLs at seeded random moments, then --until-idle: every outcome arrives, under one webhook-id per job with one body per id."""
    rng = random.Random(SEED)
    log = tmp_path / "daemon.log"
    async with FakeSendGrid() as fake, SlowReceiver() as hook:
        fake.set_faults(error_rate=0.1, seed=SEED)
        expected = script(fake)
        config = tmp_path / "config.yaml"
        text = config_text(
            fake.base_url, state_url, hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", list(expected)), polling=POLLING,
            extra=f"heartbeat_file: {tmp_path}/hb\nlogging:\n  level: info\n  format: json\n",
        )
        text = text.replace("request_timeout: 2s", "request_timeout: 1s")
        # Short, so a killed daemon's claims come free soon after each kill; long enough that a
        # survivor's renewals (every third of it) never miss on a loaded 2-core CI machine under
        # coverage (2 s did once: a harmless but logged engine.lease_lost).
        config.write_text(text.replace("state:\n", "state:\n  lease: 5s\n"), encoding="utf-8")
        started = time.monotonic()
        kills = await kill_storm(config, log, fake, hook, rng)
        before_final = len(hook.received)
        for job_id in list(expected)[-HELD_BACK:]:
            fake.script_job(job_id, outcome="completed")
        final = await DaemonProcess.start(config, "--until-idle", log=log)
        await final.exits_with(0, 60)
        wall = time.monotonic() - started

    bodies: dict[str, set[bytes]] = defaultdict(set)
    ids: dict[str, set[str]] = defaultdict(set)
    for item in hook.received:
        bodies[item.webhook_id].add(item.raw)
        ids[item.body["data"].get("job_id") or item.body["type"]].add(item.webhook_id)
    resends = len(hook.received) - len(bodies)
    events = [json.loads(line).get("event") for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
    print(f"\nkill storm ({state_url.partition(':')[0]}): {JOBS} jobs, kills {kills}, {before_final} deliveries before the final run, "
          f"{len(hook.received)} in all, {resends} same-id resends, wall {wall:.1f}s, "
          f"logged {dict(Counter(events))}")

    assert expected == hook.statuses()
    assert {webhook_id: 1 for webhook_id in bodies} == {webhook_id: len(raw) for webhook_id, raw in bodies.items()}
    assert {job_id: 1 for job_id in expected} == {job_id: len(ids[job_id]) for job_id in expected}
    assert set(expected) == set(ids)  # no alert either: nothing went dead
    assert [] == [event for event in events if event in TROUBLE_EVENTS]
    assert "Traceback" not in log.read_text(encoding="utf-8")
    jobs, deliveries = await stored(state_url)
    assert expected == {job.id: job.state for job in jobs.values()}
    assert {DeliveryState.DELIVERED} == {d.state for d in deliveries}
