"""Three real replicas on one Redis: a shared stream, store and rate budget, and one of them killed with -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.helpers import WebhookReceiver, config_text
from watcher.testing.fake_sendgrid import FakeSendGrid

REDIS_URL = os.environ.get("WATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
OUTCOMES = ("completed", "errored", "failed")
REPLICAS = 3


@dataclass
class Cluster:
    """One random namespace on the test Redis: the state prefix, the stream, and a client to it."""

    redis: aioredis.Redis
    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix}:jobs"

    def config(self, tmp_path: Path, fake_url: str, hook_url: str, polling: str) -> Path:
        """A replica config: Redis state with a 3 s lease, the stream source, one webhook notifier."""
        source = (
            f"sources:\n  - type: redis\n    url: {REDIS_URL}\n    stream: {self.stream}\n"
            f"    group: {self.prefix}-group\n    block: 200ms\n    claim_idle: 2s\n"
        )
        text = config_text(
            fake_url, f"{REDIS_URL}?prefix={self.prefix}", hook_url=hook_url, polling=polling,
            extra=f"{source}heartbeat_file: {tmp_path}/hb\nlogging:\n  level: info\n  format: json\n",
        ).replace("state:\n", "state:\n  lease: 3s\n")
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
async def cluster() -> AsyncIterator[Cluster]:
    """A random prefix on the test Redis (skipped when unreachable); its keys are deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"Redis at {REDIS_URL} is unreachable ({exc}); set WATCHER_TEST_REDIS_URL")
    prefix = f"iw-replicas-{uuid.uuid4().hex[:12]}"
    yield Cluster(client, prefix)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])
    await client.aclose()


@contextlib.asynccontextmanager
async def replicas(config: Path, logs: list[Path]) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """`python -m watcher run --until-idle` once per log file; any still running at the end are killed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    try:
        for log_file in logs:
            with log_file.open("wb") as out:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "watcher", "run", "-c", str(config), "--until-idle",
                    stdout=out, stderr=out, env=env,
                ))  # fmt: skip
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def events(log_file: Path) -> list[dict[str, Any]]:
    """The JSON log lines of one replica (a SIGKILL may cut the last one short)."""
    parsed = []
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            parsed.append(json.loads(line))
    return parsed


def count(log: list[dict[str, Any]], event: str, field: str | None = None) -> int:
    """How often `event` occurs in a log, or the sum of its `field` values."""
    return sum(int(e.get(field, 0)) if field else 1 for e in log if e.get("event") == event)


async def exit_codes(procs: list[asyncio.subprocess.Process], timeout: float) -> list[int]:
    return list(await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout))


async def received(hook: WebhookReceiver, at_least: int, procs: list[asyncio.subprocess.Process]) -> None:
    """Wait until `at_least` webhooks arrived, failing if a replica exits or 30 s pass first."""
    deadline = time.monotonic() + 30
    while len(hook.received) < at_least:
        assert all(p.returncode is None for p in procs), "a replica stopped early"
        assert time.monotonic() < deadline, f"only {len(hook.received)} webhooks after 30 s"
        await asyncio.sleep(0.01)


async def test_three_replicas_one_killed_share_the_work_exactly_once(tmp_path: Path, cluster: Cluster) -> None:
    """300 queued jobs over 3 replicas, one SIGKILLed: every outcome arrives, one webhook-id per job, one poller at a time."""
    ids = [f"rep-{i:03d}" for i in range(300)]
    began = time.monotonic()
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        for i, job_id in enumerate(ids):
            fake.script_job(job_id, outcome=OUTCOMES[i % 3], pending_for=1.0 + (i % 30) * 0.1)
        await cluster.push(ids)
        config = cluster.config(
            tmp_path, fake.base_url, hook.url,
            polling="initial_delay: 0s\n  min_interval: 200ms\n  max_interval: 500ms\n  deadline: 60s",
        )
        logs = [tmp_path / f"replica-{n}.log" for n in range(REPLICAS)]
        async with replicas(config, logs) as procs:
            await received(hook, 100, procs)
            procs[0].send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == await procs[0].wait()
            assert [0, 0] == await exit_codes(procs[1:], timeout=45)
        max_concurrency = dict(fake.max_concurrent_per_job)
        polls = sum(fake.polls.values())
    wall = time.monotonic() - began
    assert {job_id: OUTCOMES[i % 3] for i, job_id in enumerate(ids)} == hook.statuses()
    by_job = hook.by_job()
    assert {1} == {len({item.webhook_id for item in items}) for items in by_job.values()}
    resends = len(hook.received) - len(ids)
    per_replica = [events(log) for log in logs]
    print(
        f"\nreplicas: {len(ids)} jobs, {polls} polls, {resends} same-id resends after the kill, "
        f"max concurrent polls per job {max(max_concurrency.values())}, wall {wall:.1f}s, "
        f"stream intake per replica {[count(log, 'source.job_added') for log in per_replica]}, "
        f"entries reclaimed {sum(count(log, 'source.entries_reclaimed', 'entries') for log in per_replica)}"
    )
    assert resends <= len(ids) // 20  # only what the killed replica had sent but not recorded
    assert {1} == set(max_concurrency.values())
    assert 0 == sum(count(log, "engine.poll_crashed") + count(log, "source.reader_failed") for log in per_replica)


async def test_three_replicas_share_one_rate_budget(tmp_path: Path, cluster: Cluster) -> None:
    """Against a fake allowing 30 requests a second, 3 replicas wanting far more finish 150 jobs with few 429s."""
    ids = [f"rl-{i:03d}" for i in range(150)]
    began = time.monotonic()
    async with FakeSendGrid(rate_limit=30, rate_window=1.0) as fake, WebhookReceiver() as hook:
        for i, job_id in enumerate(ids):
            fake.script_job(job_id, outcome=OUTCOMES[i % 3], pending_for=0.5 + (i % 10) * 0.2)
        await cluster.push(ids)
        config = cluster.config(
            tmp_path, fake.base_url, hook.url,
            polling="initial_delay: 0s\n  min_interval: 200ms\n  max_interval: 500ms\n  deadline: 60s",
        )
        logs = [tmp_path / f"replica-{n}.log" for n in range(REPLICAS)]
        async with replicas(config, logs) as procs:
            assert [0, 0, 0] == await exit_codes(procs, timeout=45)
        statuses = Counter(fake.responses_by_status)
    wall = time.monotonic() - began
    assert {job_id: OUTCOMES[i % 3] for i, job_id in enumerate(ids)} == hook.statuses()
    total = sum(statuses.values())
    print(f"\nshared budget: {len(ids)} jobs, {total} requests {dict(statuses)}, wall {wall:.1f}s")
    assert statuses[429] <= max(3, total // 50)
