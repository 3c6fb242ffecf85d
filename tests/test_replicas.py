"""Three real replicas on one Redis: a shared stream, store and rate budget, and one of them killed with -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import DaemonProcess, WebhookReceiver, config_text, eventually
from watcher.testing.fake_sendgrid import FakeSendGrid

OUTCOMES = ("completed", "errored", "failed")
REPLICAS = 3
# Short, so the killed replica's claims come free soon after the kill; the survivors' work in
# flight renews its leases meanwhile.
LEASE = "3s"
# Each answer takes this long at the fake, so two polls of one job by two replicas would overlap
# there and show in max_concurrent_per_job (with no latency they never could).
LATENCY = 0.03
# README, "What the replicas guarantee": "300 queued jobs all end with one notification each and one
# `webhook-id` per job (0 to 3 same-id resends from the killed replica)".
MAX_RESENDS_AFTER_KILL = 3


@dataclass
class Cluster:
    """One random namespace on the test Redis: the state prefix, the stream, and a client to it."""

    redis: aioredis.Redis
    url: str
    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix}:jobs"

    def config(self, tmp_path: Path, fake_url: str, hook_url: str, polling: str) -> Path:
        """A replica config: Redis state with a short lease, the stream source, one webhook notifier."""
        source = (
            f"sources:\n  - type: redis\n    url: {self.url}\n    stream: {self.stream}\n"
            f"    group: {self.prefix}-group\n    block: 200ms\n    claim_idle: 2s\n"
        )
        text = config_text(
            fake_url, f"{self.url}?prefix={self.prefix}", hook_url=hook_url, polling=polling,
            extra=f"{source}heartbeat_file: {tmp_path}/hb\nlogging:\n  level: info\n  format: json\n",
        ).replace("state:\n", f"state:\n  lease: {LEASE}\n")
        path = tmp_path / "config.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    async def push(self, job_ids: list[str]) -> None:
        """Queue messages as a producer would send them: half as `job` JSON, half as a bare `id`."""
        pipe = self.redis.pipeline(transaction=False)
        for i, job_id in enumerate(job_ids):
            fields = {"job": json.dumps({"id": job_id, "labels": {"n": i}})} if i % 2 else {"id": job_id}
            pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


@pytest.fixture
async def cluster(redis_url: str, redis_prefix: str) -> AsyncIterator[Cluster]:
    """A random prefix on the test Redis (skipped when unreachable, failed in CI); its keys are deleted afterwards."""
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        yield Cluster(client, redis_url, redis_prefix)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def replicas(config: Path, logs: list[Path]) -> AsyncIterator[list[DaemonProcess]]:
    """`python -m watcher run --until-idle` once per log file; any still running at the end are killed."""
    procs: list[DaemonProcess] = []
    try:
        for log_file in logs:
            procs.append(await DaemonProcess.start(config, "--until-idle", log=log_file))
        yield procs
    finally:
        for proc in procs:
            await proc.kill()


def count(log: list[dict[str, Any]], event: str, field: str | None = None) -> int:
    """How often `event` occurs in a log, or the sum of its `field` values."""
    return sum(int(e.get(field, 0)) if field else 1 for e in log if e.get("event") == event)


async def all_exit_0(procs: list[DaemonProcess], timeout: float) -> None:
    """Every replica exits 0 within `timeout` seconds; otherwise the failure shows their output."""
    codes = await asyncio.gather(*(proc.wait(timeout) for proc in procs))
    assert [0] * len(procs) == codes, "\n".join(proc.tail() for proc in procs)


async def test_three_replicas_one_killed_share_the_work_exactly_once(tmp_path: Path, cluster: Cluster) -> None:
    """300 queued jobs over 3 replicas, one SIGKILLed: every outcome arrives, one webhook-id per job, one poller at a time."""
    ids = [f"rep-{i:03d}" for i in range(300)]
    began = time.monotonic()
    async with FakeSendGrid(latency=LATENCY) as fake, WebhookReceiver() as hook:
        for job_id in ids:
            fake.script_job(job_id, outcome="pending")
        await cluster.push(ids)
        config = cluster.config(
            tmp_path, fake.base_url, hook.url,
            # max_interval above the fake's 1 s window: budget waits are clamped to it (issue #10).
            polling="initial_delay: 0s\n  min_interval: 200ms\n  max_interval: 1500ms\n  deadline: 60s",
        )
        logs = [tmp_path / f"replica-{n}.log" for n in range(REPLICAS)]
        async with replicas(config, logs) as procs:
            # Only jobs polled more than once can show two pollers at once: end them only then,
            # however long the replicas took to start on a busy machine.
            await eventually(lambda: len(fake.polls) == len(ids) and min(fake.polls.values()) >= 2, 60,
                             what="every job polled twice", watch=procs)
            for i, job_id in enumerate(ids):
                fake.script_job(job_id, outcome=OUTCOMES[i % 3], pending_for=0.2 + (i % 30) * 0.1)
            await eventually(lambda: len(hook.received) >= 100, 30, what="100 webhooks", watch=procs)
            procs[0].proc.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == await procs[0].wait(10)
            await all_exit_0(procs[1:], timeout=45)
        max_concurrency = dict(fake.max_concurrent_per_job)
        polls = sum(fake.polls.values())
    wall = time.monotonic() - began
    # One notification (one webhook-id) per job, with its true outcome; repeats only of that id.
    assert {job_id: [OUTCOMES[i % 3]] for i, job_id in enumerate(ids)} == hook.notifications()
    resends = hook.resends()
    per_replica = [proc.events() for proc in procs]
    print(
        f"\nreplicas: {len(ids)} jobs, {polls} polls, {resends} same-id resends after the kill, "
        f"max concurrent polls per job {max(max_concurrency.values())}, wall {wall:.1f}s, "
        f"stream intake per replica {[count(log, 'source.job_added') for log in per_replica]}, "
        f"entries reclaimed {sum(count(log, 'source.entries_reclaimed', 'entries') for log in per_replica)}"
    )
    assert resends <= MAX_RESENDS_AFTER_KILL, f"{resends} same-id resends"  # what the killed replica sent but had not recorded
    assert {1} == set(max_concurrency.values())  # measured at the fake, whose answers take LATENCY
    assert 0 == sum(count(log, "engine.poll_crashed") + count(log, "source.reader_failed") for log in per_replica)


async def test_three_replicas_share_one_rate_budget(tmp_path: Path, cluster: Cluster) -> None:
    """Against a fake allowing 30 requests a second, 3 replicas wanting far more finish 150 jobs with few 429s."""
    ids = [f"rl-{i:03d}" for i in range(150)]
    began = time.monotonic()
    async with FakeSendGrid(rate_limit=30, rate_window=1.0, latency=LATENCY) as fake, WebhookReceiver() as hook:
        for i, job_id in enumerate(ids):
            fake.script_job(job_id, outcome=OUTCOMES[i % 3], pending_for=0.5 + (i % 10) * 0.2)
        await cluster.push(ids)
        config = cluster.config(
            tmp_path, fake.base_url, hook.url,
            # max_interval above the fake's 1 s window: budget waits are clamped to it (issue #10).
            polling="initial_delay: 0s\n  min_interval: 200ms\n  max_interval: 1500ms\n  deadline: 60s",
        )
        logs = [tmp_path / f"replica-{n}.log" for n in range(REPLICAS)]
        async with replicas(config, logs) as procs:
            await all_exit_0(procs, timeout=45)
        statuses = Counter(fake.responses_by_status)
    wall = time.monotonic() - began
    # Every delivery counts: one notification per job, and no resend (nothing crashed).
    assert {job_id: [OUTCOMES[i % 3]] for i, job_id in enumerate(ids)} == hook.notifications()
    assert 0 == hook.resends()
    total = sum(statuses.values())
    print(f"\nshared budget: {len(ids)} jobs, {total} requests {dict(statuses)}, wall {wall:.1f}s")
    assert statuses[429] <= max(3, total // 50)
