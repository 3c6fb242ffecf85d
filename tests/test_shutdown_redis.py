"""Shutdown with the Redis store hung: every store call at stop is bounded, so SIGTERM still ends in time."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis

from tests.contract.test_redis_store import redis_server
from tests.helpers import DaemonProcess, config_text, eventually, write_jobs
from watcher.daemon import SHUTDOWN_MARGIN
from watcher.testing.fake_sendgrid import FakeSendGrid

GRACE = 2.0


async def test_sigterm_with_redis_paused_exits_within_the_grace_and_margin(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """Redis paused (CLIENT PAUSE) while the daemon polls on it: SIGTERM still exits 0 within
    shutdown_grace + SHUTDOWN_MARGIN, and the daemon said why its releases did not land."""
    async with FakeSendGrid() as fake:
        for i in range(20):
            fake.script_job(f"rp-{i}", outcome="pending")
        with redis_server() as port:
            text = config_text(
                fake.base_url, f"redis://127.0.0.1:{port}/0",
                jobs_file=write_jobs(tmp_path / "jobs.yaml", [f"rp-{i}" for i in range(20)]),
            ).replace("shutdown_grace: 2s", f"shutdown_grace: {GRACE:g}s")
            config = tmp_path / "config.yaml"
            config.write_text(text, encoding="utf-8")
            daemon = await DaemonProcess.start(config)
            daemons.append(daemon)
            await eventually(lambda: fake.requests_total >= 20, timeout=20, what="polling on Redis", watch=[daemon])
            admin = redis.Redis(port=port, socket_timeout=5)
            try:
                # Longer than the exit may take (GRACE + SHUTDOWN_MARGIN), not more: Redis holds even
                # CLIENT UNPAUSE until a PAUSE ALL ends, so a 30 s pause made the test take 31 s.
                admin.execute_command("CLIENT", "PAUSE", str(int((GRACE + SHUTDOWN_MARGIN + 2) * 1000)), "ALL")
                signalled = time.monotonic()
                daemon.proc.send_signal(signal.SIGTERM)
                await daemon.exits_with(0, timeout=20)
                took = time.monotonic() - signalled
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
                admin.close()
    assert took <= GRACE + SHUTDOWN_MARGIN + 0.5, daemon.tail()
