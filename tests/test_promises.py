"""Promises of README and issue 16 that had no test: an unknown status logged once, a store down at start,
and CI that cannot pass without the services the tests need."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.storekit import NOW, add, claim_one, make_delivery, token
from tests.helpers import (
    DaemonProcess,
    WebhookReceiver,
    config_text,
    delete_redis_prefix,
    eventually,
    free_port,
    make_config,
    require_binary,
    write_jobs,
)
from tests.resilience.conftest import counted_log_events
from watcher.daemon import Daemon
from watcher.errors import WatcherError
from watcher.models import Outcome
from watcher.store import SqliteStore
from watcher.testing.fake_sendgrid import FakeSendGrid

POLLING = "initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 100ms\n  deadline: 1500ms\n  not_found_grace: 500ms"


async def test_an_unknown_status_is_logged_once_per_job(tmp_path: Path) -> None:
    """README: "an unknown status is logged once and treated as still running": one line over many polls."""
    async with FakeSendGrid() as fake:
        fake.script_job("odd-1", outcome="pending", status_override="weird")
        fake.script_job("odd-2", outcome="pending", status_override="Reticulating")
        jobs = write_jobs(tmp_path / "jobs.yaml", ["odd-1", "odd-2"])
        config = make_config(tmp_path, config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db", jobs_file=jobs,
                                                   polling=POLLING))
        with counted_log_events() as events:
            assert 0 == await asyncio.wait_for(Daemon(config).run(until_idle=True, install_signals=False), 30)
        polls = dict(fake.polls)
    assert min(polls.values()) >= 5, polls  # polled again and again while "running"
    assert 2 == events["engine.unknown_status"]
    assert 2 == events["job.finished"]  # treated as running until the deadline: timed out, not stuck


async def test_an_outcome_whose_deliveries_fail_to_insert_is_not_written(tmp_path: Path) -> None:
    """README: "A final outcome and its deliveries are written in one transaction": when SQLite refuses a delivery, the job stays unfinished."""
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    try:
        await add(store, "job-1")
        held = await claim_one(store, "job-1")
        with sqlite3.connect(tmp_path / "state.db") as other:  # a real failure inside the transaction
            other.execute("CREATE TRIGGER refuse BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'refused'); END")
        with pytest.raises((WatcherError, sqlite3.Error)):
            await store.record_outcome("job-1", token=token(held), now=NOW, outcome=Outcome.COMPLETED, snapshot=None,
                                       polls=1, detected_at=NOW, deliveries=[make_delivery("d1")])
        job = await store.get_job("job-1")
        assert job is not None and None is job.outcome
        assert [] == await store.list_deliveries()
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def redis_server_later(port: int, log: Path) -> AsyncIterator[asyncio.Event]:
    """Set the yielded event to start a real redis-server on `port` (no persistence); stopped at the end."""
    binary = require_binary("redis-server")
    start = asyncio.Event()
    procs: list[asyncio.subprocess.Process] = []

    async def serve() -> None:
        await start.wait()
        with log.open("ab") as out:
            procs.append(await asyncio.create_subprocess_exec(
                binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip

    task = asyncio.create_task(serve())
    try:
        yield start
    finally:
        task.cancel()
        for proc in procs:
            proc.terminate()
            await proc.wait()


async def test_the_daemon_waits_for_a_store_that_is_down_at_start(tmp_path: Path) -> None:
    """With Redis unreachable at start the daemon logs daemon.store_unavailable and retries; once Redis is up it does the work."""
    port = free_port()
    state_url = f"redis://127.0.0.1:{port}/0?prefix=iw-late"
    async with FakeSendGrid() as fake, WebhookReceiver() as hook, redis_server_later(port, tmp_path / "redis.log") as up:
        fake.script_job("late-1", outcome="completed")
        config = tmp_path / "config.yaml"
        config.write_text(config_text(fake.base_url, state_url, hook_url=hook.url, polling=POLLING.replace("1500ms", "20s"),
                                      jobs_file=write_jobs(tmp_path / "jobs.yaml", ["late-1"]),
                                      extra="logging:\n  level: info\n  format: json\n"), encoding="utf-8")
        daemon = await DaemonProcess.start(config, "--until-idle")
        try:
            await eventually(lambda: any(e["event"] == "daemon.store_unavailable" for e in daemon.events()), 20,
                             what="daemon.store_unavailable", watch=[daemon])
            assert 0 == fake.requests_total  # nothing happens without the store
            up.set()
            await daemon.exits_with(0, 40)
        finally:
            await daemon.kill()
            with contextlib.suppress(Exception):
                await delete_redis_prefix(state_url.partition("?")[0], "iw-late")
    assert {"late-1": ["completed"]} == hook.notifications()


HOOKED_TESTS = '''
import pytest
from tests.helpers import require_chromium, require_redis

def test_redis_missing():
    require_redis("redis://127.0.0.1:1/0")

@pytest.mark.skipif(True, reason="needs chromium at /nowhere")
def test_chromium_skipif():
    pass

def test_unrelated_skip():
    pytest.skip("only on a full moon")
'''


# A skipif fires at setup, so under REQUIRE_SERVICES it is reported as an error; either way pytest exits 1.
@pytest.mark.parametrize(("required", "outcomes"), [("1", {"failed": 1, "errors": 1, "skipped": 1}), ("", {"skipped": 3})])
def test_require_services_turns_service_skips_into_failures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: str, outcomes: dict[str, int]
) -> None:
    """Under REQUIRE_SERVICES=1 a missing Redis (require_redis) or Chromium (any skip naming it) fails; other skips stay skips."""
    monkeypatch.setenv("REQUIRE_SERVICES", required)
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_services=HOOKED_TESTS)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(**outcomes)
