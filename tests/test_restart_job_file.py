"""A restart with the job file still configured: the file is parsed only when its bytes changed
(while running or while down), and readiness tells the truth while a changed file is read."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from tests.helpers import config_text, eventually, make_config, write_jobs
from tests.test_file_source import FlakyStore
from tests.test_restart_file_source import GatedStore
from watcher.clock import ManualClock
from watcher.daemon import Daemon
from watcher.heartbeat import check_health
from watcher.models import JobRef, Outcome
from watcher.policy import PollPolicy
from watcher.sources import file as file_source
from watcher.sources.base import Intake
from watcher.sources.file import ADD_BATCH, FileSource, fingerprint_key
from watcher.store import SqliteStore
from watcher.store.base import StateStore
from watcher.testing.fake_sendgrid import FakeSendGrid


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SqliteStore]:
    """One run of a daemon's store: opened, then closed (the file stays for the next run)."""
    store = SqliteStore(str(path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every job file the file source parses, in order."""
    seen: list[Path] = []
    parse = file_source.parse_job_text

    def counted(path: Path, text: str, notifiers: tuple[str, ...] | None = None) -> Any:
        seen.append(path)
        return parse(path, text, notifiers)

    monkeypatch.setattr(file_source, "parse_job_text", counted)
    return seen


def source(path: Path, store: StateStore) -> FileSource:
    return FileSource(path, Intake(store, PollPolicy(), ManualClock(1000.0), []))


def events(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs if entry["event"].startswith("source.")]


async def ids(store: StateStore) -> list[str]:
    return sorted(job.id for job in await store.list_jobs())


async def test_an_unchanged_file_is_not_parsed_after_a_restart_yet_a_change_is_read(
    tmp_path: Path, parses: list[Path]
) -> None:
    path = write_jobs(tmp_path / "jobs.yaml", ["job-1", "job-2"])
    async with opened(tmp_path / "state.db") as store:
        await source(path, store).start()
    assert [path] == parses
    async with opened(tmp_path / "state.db") as store:  # the restart
        restarted = source(path, store)
        with structlog.testing.capture_logs() as logs:
            await restarted.start()
        assert ([path], True, ["source.job_file_unchanged"]) == (parses, restarted.started, events(logs))
        write_jobs(path, ["job-1", "job-2", "job-3"])  # changed while running: read at the next refresh
        with structlog.testing.capture_logs() as logs:
            await restarted.refresh()
        assert ([path, path], ["source.jobs_added"]) == (parses, events(logs))
        assert ["job-1", "job-2", "job-3"] == await ids(store)


async def test_a_file_changed_while_the_daemon_was_down_is_read(tmp_path: Path, parses: list[Path]) -> None:
    """Same size, same mtime, other bytes: the content decides, not the file's metadata."""
    path = write_jobs(tmp_path / "jobs.yaml", ["job-1", "job-2"])
    async with opened(tmp_path / "state.db") as store:
        await source(path, store).start()
    before = os.stat(path)
    write_jobs(path, ["job-1", "job-9"])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (before.st_size, before.st_mtime_ns) == (os.stat(path).st_size, os.stat(path).st_mtime_ns)
    async with opened(tmp_path / "state.db") as store:
        await source(path, store).start()
        assert ([path, path], ["job-1", "job-2", "job-9"]) == (parses, await ids(store))


async def test_a_file_with_a_problem_is_parsed_and_its_problem_logged_at_every_restart(
    tmp_path: Path, parses: list[Path]
) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  - job-1\n  - 'bad id!'\n", encoding="utf-8")
    for _run in range(2):
        async with opened(tmp_path / "state.db") as store:
            with structlog.testing.capture_logs() as logs:
                await source(path, store).start()
        assert "source.job_file_problem" in events(logs)
    assert [path, path] == parses


async def test_a_read_cut_by_a_store_outage_leaves_no_fingerprint_until_it_completes(tmp_path: Path) -> None:
    path = write_jobs(tmp_path / "jobs.yaml", [f"job-{i}" for i in range(ADD_BATCH + 5)])
    store = FlakyStore(fail_after=1)
    reader = source(path, store)
    await reader.start()
    assert (None, ADD_BATCH) == (await store.get_meta(fingerprint_key(path)), (await store.counts()).watching)
    await reader.refresh()
    assert (await store.get_meta(fingerprint_key(path))) is not None
    assert ADD_BATCH + 5 == (await store.counts()).watching


async def readyz(http: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, str | None]:
    assert daemon.server is not None
    async with http.get(f"{daemon.server.url}/readyz") as response:
        return response.status, (await response.json()).get("reason")


async def started(daemon: Daemon, heartbeat: Path) -> asyncio.Task[int]:
    running = asyncio.create_task(daemon.run(install_signals=False))
    await eventually(heartbeat.exists, timeout=10, what="the daemon started")
    return running


async def stopped(daemon: Daemon, running: asyncio.Task[int]) -> None:
    daemon.stop()
    assert 0 == await asyncio.wait_for(running, 10)


async def test_polls_start_from_the_store_while_a_changed_file_is_read_and_readiness_says_so(
    tmp_path: Path,
) -> None:
    """The read of a changed file is held up: the stored job is polled to its end meanwhile, while
    /readyz and the heartbeat say the source has not started; once read, both say ready. The
    restart that follows, with the file unchanged, adds nothing (an add would hang) and is ready."""
    heartbeat = tmp_path / "hb.json"
    path = write_jobs(tmp_path / "jobs.yaml", ["stored-1", "new-1"])
    store = GatedStore()
    store.gate.set()
    now = time.time()
    await store.add_jobs([JobRef("stored-1")], now=now, first_poll_at=now)
    store.gate.clear()  # from now on the file's jobs wait to be stored
    async with FakeSendGrid() as fake, aiohttp.ClientSession() as http:
        fake.script_job("stored-1", outcome="completed")
        fake.script_job("new-1", outcome="completed", pending_for=60)
        config = make_config(tmp_path, config_text(
            fake.base_url, "memory://", extra=f"heartbeat_file: {heartbeat}\nserver:\n  listen: 127.0.0.1:0\n",
        ).replace("shutdown_grace: 2s\n", f"shutdown_grace: 2s\nsources:\n  - type: file\n    path: {path}\n"))
        not_read = f"source file:{path} has not started"

        def healthy() -> bool:
            return check_health(config)[0]

        daemon = Daemon(config, store=store)
        running = await started(daemon, heartbeat)
        await eventually(lambda: _outcome(store, "stored-1"), timeout=10, what="stored-1 polled to its end")
        assert Outcome.COMPLETED == await _outcome(store, "stored-1")
        assert (503, not_read) == await readyz(http, daemon)
        assert (False, False) == (healthy(), daemon.sources[0].started)
        assert not_read in check_health(config)[1]
        store.gate.set()
        await eventually(lambda: _status_is(http, daemon, 200), timeout=10, what="ready once the file is read")
        await eventually(healthy, timeout=3, what="the heartbeat rewritten at once")
        assert ["new-1", "stored-1"] == await ids(store)
        await stopped(daemon, running)

        store.gate.clear()
        restarted = Daemon(config, store=store)
        with structlog.testing.capture_logs() as logs:
            running = await started(restarted, heartbeat)
            await eventually(lambda: _status_is(http, restarted, 200), timeout=10, what="ready at once")
            await stopped(restarted, running)
        assert "source.job_file_unchanged" in events(logs)


async def _outcome(store: StateStore, job_id: str) -> Outcome | None:
    job = await store.get_job(job_id)
    return None if job is None else job.outcome


async def _status_is(http: aiohttp.ClientSession, daemon: Daemon, status: int) -> bool:
    return (await readyz(http, daemon))[0] == status
