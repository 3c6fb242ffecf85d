"""The state disk fills up under a running daemon, then is freed: readiness tells the truth, nothing is lost.

A small tmpfs holds the SQLite file; a filler file takes every byte left while jobs are
watched (and finish at SendGrid meanwhile). The same process must report 503 with a
reason and an unhealthy heartbeat, then carry on by itself once the filler is deleted,
notifying every job exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import WebhookReceiver, config_text, eventually, fill, make_config, mounted_tmpfs, write_jobs
from watcher.daemon import Daemon
from watcher.heartbeat import check_health
from watcher.notify.outbox import Backoff
from watcher.testing.fake_sendgrid import FakeSendGrid

FAST = Backoff(initial=0.05, maximum=0.2)
IDS = [f"disk-{i:02d}" for i in range(20)]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of our own (skipped only where mounting is not permitted)."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as disk:
        yield disk


async def readiness(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with session.get(f"{url}/readyz") as response:
        return response.status, (await response.json()).get("reason")


async def test_a_full_state_disk_is_reported_and_survived(tmp_path: Path, tmpfs: Path) -> None:
    """Disk full: /readyz 503 and healthcheck unhealthy, with the reason; freed: the same process is
    ready again and every job is notified exactly once."""
    heartbeat = tmp_path / "hb.json"
    async with FakeSendGrid() as fake, WebhookReceiver() as hook, aiohttp.ClientSession() as http:
        for job_id in IDS:
            fake.script_job(job_id, outcome="completed", pending_for=2.0)
        text = config_text(
            fake.base_url, f"sqlite:///{tmpfs}/state.db", hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", IDS),
            polling="initial_delay: 0s\n  min_interval: 100ms\n  max_interval: 300ms\n  deadline: 120s",
            extra=f"heartbeat_file: {heartbeat}\nserver:\n  listen: 127.0.0.1:0\n",
        ).replace("state:\n", "state:\n  lease: 11s\n")
        config = make_config(tmp_path, text)
        daemon = Daemon(config, delivery_backoff=FAST)
        running = asyncio.create_task(daemon.run(install_signals=False))
        await eventually(heartbeat.exists, timeout=10, what="the daemon started")
        assert daemon.server is not None
        url = daemon.server.url
        assert (200, None) == await readiness(http, url)

        filler = fill(tmpfs)
        await eventually(lambda: _status_is(http, url, 503), timeout=15, what="/readyz 503")
        assert (503, "state store unavailable") == await readiness(http, url)
        await eventually(lambda: not check_health(config)[0], timeout=15, what="healthcheck unhealthy")
        assert "state store unavailable" in check_health(config)[1]
        await asyncio.sleep(2.5)  # every job finishes at SendGrid while the disk is still full
        assert {} == hook.by_job()

        filler.unlink()
        await eventually(lambda: _status_is(http, url, 200), timeout=20, what="/readyz 200 again")
        await eventually(lambda: len(hook.by_job()) == len(IDS), timeout=30, what="every job notified")
        await eventually(lambda: check_health(config)[0], timeout=15, what="healthcheck healthy again")
        daemon.stop()
        assert 0 == await asyncio.wait_for(running, 15)
    assert {job_id: "completed" for job_id in IDS} == hook.statuses()
    assert {job_id: 1 for job_id in IDS} == {job: len(items) for job, items in hook.by_job().items()}
    assert not running.cancelled()


async def _status_is(http: aiohttp.ClientSession, url: str, status: int) -> bool:
    return (await readiness(http, url))[0] == status
