"""Shutdown: in-flight work gets its grace, the rest is given back, a second signal stops at once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers import SECRET, DaemonProcess, config_text, eventually, make_config, write_jobs
from tests.resilience.conftest import serving
from watcher.daemon import SHUTDOWN_MARGIN, Daemon
from watcher.errors import StoreUnavailable
from watcher.store import open_store
from watcher.testing.fake_sendgrid import FakeSendGrid

LEASE = 60.0  # far longer than any wait below: work resumed "at once" cannot be waiting out a lease


class HangingReceiver:
    """A webhook receiver that holds every request open until `release` is set; notes every arrival
    and every answer the sender was still connected for."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived: list[tuple[float, str]] = []
        self.answered: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append((time.monotonic(), request.headers["webhook-id"]))
        await self.release.wait()
        if request.transport is not None and not request.transport.is_closing():
            self.answered.append(request.headers["webhook-id"])  # the sender is still there to hear it
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[HangingReceiver, str]]:
    hanging = HangingReceiver()
    async with serving(hanging.handle) as url:
        yield hanging, f"{url}/hook"


def subprocess_config(tmp_path: Path, fake_url: str, hook_url: str, grace: str) -> Path:
    """A config whose one job ends at once and whose webhook is `hook_url`, with the lease far away."""
    text = config_text(
        fake_url, f"sqlite:///{tmp_path}/state.db", jobs_file=write_jobs(tmp_path / "jobs.yaml", ["sd-1"]),
        extra=f"heartbeat_file: {tmp_path}/hb\n",
    ).replace("shutdown_grace: 2s", f"shutdown_grace: {grace}").replace("state:\n", f"state:\n  lease: {LEASE:.0f}s\n")
    text += f"notifiers:\n  hook:\n    type: webhook\n    url: {hook_url}\n    secret: {SECRET}\n    timeout: 50s\n"
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def resumed_at_once(config: Path, hanging: HangingReceiver, daemons: list[DaemonProcess]) -> None:
    """A restarted daemon sends the given-back delivery again within seconds, with the same webhook-id."""
    hanging.release.set()
    restarted = await DaemonProcess.start(config, "--until-idle")
    daemons.append(restarted)
    began = time.monotonic()
    await restarted.exits_with(0, timeout=20)
    assert time.monotonic() - began < LEASE / 4, restarted.tail()
    assert 1 == len(hanging.answered)
    assert {hanging.answered[0]} == {webhook_id for _, webhook_id in hanging.arrived}


async def test_sigterm_cancels_a_hung_send_after_the_grace_and_gives_its_claim_back(
    tmp_path: Path, receiver: tuple[HangingReceiver, str], daemons: list[DaemonProcess]
) -> None:
    """One SIGTERM: the hung send gets shutdown_grace, the process exits within grace + SHUTDOWN_MARGIN,
    and a restart sends the delivery at once (its claim was released, not left to expire)."""
    hanging, hook_url = receiver
    async with FakeSendGrid() as fake:
        fake.script_job("sd-1", outcome="completed")
        config = subprocess_config(tmp_path, fake.base_url, hook_url, grace="1s")
        daemon = await DaemonProcess.start(config)
        daemons.append(daemon)
        await eventually(lambda: hanging.arrived, timeout=15, what="the send in flight", watch=[daemon])
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        await daemon.exits_with(0, timeout=10)
        took = time.monotonic() - signalled
        assert 1.0 <= took <= 1.0 + SHUTDOWN_MARGIN, daemon.tail()
        await resumed_at_once(config, hanging, daemons)


async def test_a_second_sigterm_stops_at_once_and_the_work_resumes_at_once(
    tmp_path: Path, receiver: tuple[HangingReceiver, str], daemons: list[DaemonProcess]
) -> None:
    """With a 30 s grace, a second SIGTERM ends the wait for the hung send: exit within the margin,
    claims given back, a restart delivers at once."""
    hanging, hook_url = receiver
    async with FakeSendGrid() as fake:
        fake.script_job("sd-1", outcome="completed")
        config = subprocess_config(tmp_path, fake.base_url, hook_url, grace="30s")
        daemon = await DaemonProcess.start(config)
        daemons.append(daemon)
        await eventually(lambda: hanging.arrived, timeout=15, what="the send in flight", watch=[daemon])
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert daemon.returncode is None, "the first SIGTERM waits for the send in flight"
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        await daemon.exits_with(0, timeout=10)
        assert time.monotonic() - signalled <= SHUTDOWN_MARGIN, daemon.tail()
        assert "daemon.stopping_now" in daemon.text()
        await resumed_at_once(config, hanging, daemons)


async def test_a_poll_in_flight_at_stop_is_recorded_within_the_grace(tmp_path: Path) -> None:
    """A poll answering 0.5 s after the stop, with a 2 s grace, is recorded: the drain waited for it."""
    async with FakeSendGrid() as fake:
        fake.script_job("drain-1", outcome="completed")
        config = make_config(tmp_path, config_text(
            fake.base_url, f"sqlite:///{tmp_path}/state.db", jobs_file=write_jobs(tmp_path / "jobs.yaml", ["drain-1"]),
        ))
        assert 2.0 == config.shutdown_grace
        fake.set_latency(0.5)
        daemon = Daemon(config)
        running = asyncio.create_task(daemon.run(install_signals=False))
        await eventually(lambda: fake.requests_total >= 1, timeout=10, what="the poll in flight")
        daemon.stop()
        assert 0 == await asyncio.wait_for(running, 10)
        assert daemon.engine is not None
        assert (0, {"completed": 1}) == (daemon.engine.in_flight, daemon.engine.stats.outcomes)
    store = open_store(config.state.url)
    await store.open()
    try:
        job = await store.get_job("drain-1")
    finally:
        await store.close()
    assert job is not None
    assert "completed" == job.state


_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(120)
"""


async def test_a_state_file_locked_by_another_process_does_not_hold_the_exit(tmp_path: Path) -> None:
    """Another process holds the SQLite write lock when the daemon is stopped with 20 jobs claimed. Each
    write would wait BUSY_TIMEOUT_MS (5 s) with the event loop blocked, one after another; shutting down,
    the first waits briefly and the rest not at all: the exit comes within the grace and its margin, and
    the claims not given back expire with their leases."""
    ids = [f"locked-{i:02d}" for i in range(20)]
    db = tmp_path / "state.db"
    async with FakeSendGrid() as fake:
        for job_id in ids:
            fake.script_job(job_id, outcome="pending")
        config = make_config(tmp_path, config_text(
            fake.base_url, f"sqlite:///{db}", jobs_file=write_jobs(tmp_path / "jobs.yaml", ids),
            polling="initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 100ms\n  deadline: 1h",
        ))
        daemon = Daemon(config)
        running = asyncio.create_task(daemon.run(install_signals=False))
        await eventually(lambda: all(fake.polls[job_id] >= 2 for job_id in ids), timeout=15, what="each job polled")
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _HOLD_LOCK, str(db), stdout=asyncio.subprocess.PIPE)
        try:
            assert holder.stdout is not None
            assert b"locked\n" == await asyncio.wait_for(holder.stdout.readline(), 10)
            started = time.monotonic()
            daemon.stop()
            # A write before the shutdown task runs (a renew, a record) hurries too: it once waited
            # the whole busy timeout with the loop blocked, and the exit took 5.2 s.
            with contextlib.suppress(StoreUnavailable):
                await daemon.store.set_meta("probe", "1")
            assert time.monotonic() - started < 1.0, "a write right after stop() waited the busy timeout"
            assert 0 == await asyncio.wait_for(running, 120)
            took = time.monotonic() - started
        finally:
            holder.kill()
            await holder.wait()
    assert took < config.shutdown_grace + SHUTDOWN_MARGIN + 1.0, f"the exit took {took:.1f} s"
