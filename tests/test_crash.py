"""kill -9 in the middle of a run, then a restart: every job ends once and nothing is lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

from tests.helpers import DaemonProcess, WebhookReceiver, config_text, eventually, write_jobs
from watcher.testing.fake_sendgrid import FakeSendGrid

OUTCOMES = ("completed", "errored", "failed")


async def test_kill_9_then_restart_loses_nothing(tmp_path: Path) -> None:
    """Two SIGKILLs at random moments, then a restart: each job's outcome arrives, never two different ids."""
    rng = random.Random(1234)
    ids = [f"crash-{i:02d}" for i in range(30)]
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        for i, job_id in enumerate(ids):
            fake.script_job(job_id, outcome=OUTCOMES[i % 3], pending_for=0.2 + 0.1 * i)
        config = tmp_path / "config.yaml"
        config.write_text(config_text(
            fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ids),
            polling="initial_delay: 0s\n  min_interval: 100ms\n  max_interval: 300ms\n  deadline: 60s",
            extra=f"heartbeat_file: {tmp_path}/hb\nlogging:\n  level: warning\n",
        ).replace("state:\n", "state:\n  lease: 11s\n"), encoding="utf-8")
        for kill_after in (rng.randint(3, 8), rng.randint(12, 18)):
            proc = await DaemonProcess.start(config)
            await eventually(lambda: len(hook.received) >= kill_after, timeout=60,  # noqa: B023
                             what=f"{kill_after} notifications", watch=[proc])
            proc.proc.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == await proc.wait(10)
        assert len(hook.received) < len(ids)
        final = await DaemonProcess.start(config, "--until-idle")
        await final.exits_with(0, timeout=60)
    expected = {job_id: OUTCOMES[i % 3] for i, job_id in enumerate(ids)}
    assert expected == hook.statuses()
    for job_id, items in hook.by_job().items():
        # At least once: a resend after a crash reuses the same webhook-id and the same body.
        assert 1 == len({item.webhook_id for item in items}), job_id
        assert 1 == len({item.raw for item in items}), job_id


async def test_sigterm_finishes_in_flight_work_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM stops the daemon with exit 0 and the next run picks up what was left."""
    ids = [f"term-{i}" for i in range(6)]
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.set_faults(latency=0.3)
        for job_id in ids:
            fake.script_job(job_id, outcome="completed", pending_for=1.0)
        config = tmp_path / "config.yaml"
        config.write_text(config_text(
            fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url,
            jobs_file=write_jobs(tmp_path / "jobs.yaml", ids),
            extra=f"heartbeat_file: {tmp_path}/hb\n",
        ).replace("deadline: 3s", "deadline: 60s"), encoding="utf-8")
        proc = await DaemonProcess.start(config)
        await eventually(lambda: fake.requests_total >= 3, timeout=30, what="three polls", watch=[proc])
        proc.proc.send_signal(signal.SIGTERM)
        await proc.exits_with(0, timeout=10)
        final = await DaemonProcess.start(config, "--until-idle")
        await final.exits_with(0, timeout=30)
    assert {job_id: "completed" for job_id in ids} == hook.statuses()
    assert len(ids) == len(hook.received)


async def test_sighup_rereads_the_job_file(tmp_path: Path) -> None:
    """SIGHUP re-reads the job file even when its size and mtime did not change."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("hup-aaa1", outcome="completed")
        fake.script_job("hup-bbb2", outcome="completed")
        jobs = write_jobs(tmp_path / "jobs.yaml", ["hup-aaa1"])
        config = tmp_path / "config.yaml"
        config.write_text(config_text(
            fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url, jobs_file=jobs,
            extra=f"heartbeat_file: {tmp_path}/hb\n",
        ).replace("deadline: 3s", "deadline: 60s"), encoding="utf-8")
        proc = await DaemonProcess.start(config)
        try:
            await eventually(lambda: hook.received, timeout=30, what="the first notification", watch=[proc])
            stat = jobs.stat()
            write_jobs(jobs, ["hup-bbb2"])  # same length, same mtime: the periodic check cannot tell
            os.utime(jobs, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            await asyncio.sleep(2.5)  # longer than the periodic refresh
            assert ["hup-aaa1"] == list(hook.statuses())
            proc.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: "hup-bbb2" in hook.statuses(), timeout=10, what="hup-bbb2 notified after SIGHUP",
                             watch=[proc])
        finally:
            assert 0 == await proc.terminate(10), proc.tail()
    assert {"hup-aaa1": "completed", "hup-bbb2": "completed"} == hook.statuses()
