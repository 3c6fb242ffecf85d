"""A Daemon with its HTTP server on a free port, for the server and status page tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import config_text, make_config
from watcher.daemon import Daemon
from watcher.models import Delivery
from watcher.notify.base import BaseNotifier, Notifier
from watcher.notify.outbox import Backoff

TOKEN = "api-token-0123456789abcdef"
FAST = Backoff(initial=0.05, maximum=0.2)


class GatedNotifier(BaseNotifier):
    """A notifier whose sends wait until the test opens the gate: a delivery held in flight."""

    type_name = "gated"

    def __init__(self, name: str = "gated") -> None:
        super().__init__(name, {})
        self.sending = asyncio.Event()
        self.gate = asyncio.Event()
        self.sent: list[Delivery] = []

    async def send(self, delivery: Delivery) -> None:
        self.sending.set()
        await self.gate.wait()
        self.sent.append(delivery)


def server_config_text(fake_url: str, tmp_path: Path, *, token: str | None = TOKEN, **kwargs: Any) -> str:
    """config_text plus `server:` on 127.0.0.1 port 0."""
    server = "server:\n  listen: 127.0.0.1:0\n  max_body: 2048\n"
    if token is not None:
        server += f"  token: {token}\n"
    return config_text(fake_url, f"sqlite:///{tmp_path}/state.db", extra=kwargs.pop("extra", "") + server, **kwargs)


@contextlib.asynccontextmanager
async def running_daemon(
    tmp_path: Path, text: str, *, extra_notifiers: Mapping[str, Notifier] | None = None
) -> AsyncIterator[Daemon]:
    """Run a Daemon until the block ends; `daemon.server.url` is its API."""
    daemon = Daemon(make_config(tmp_path, text), delivery_backoff=FAST, extra_notifiers=extra_notifiers)
    started = asyncio.Event()
    daemon.on_started.append(lambda _: started.set())
    task = asyncio.create_task(daemon.run(install_signals=False))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what stopped the daemon
    assert started.is_set(), "the daemon did not start within 10 s"
    try:
        yield daemon
    finally:
        daemon.stop()
        assert 0 == await asyncio.wait_for(task, 10)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `check()` is true (polling a real daemon, whose work takes real time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def all_settled(session: aiohttp.ClientSession, url: str, count: int, token: str = TOKEN) -> bool:
    """True when `count` jobs are final and every delivery is delivered."""
    async with session.get(f"{url}/jobs", headers=bearer(token)) as response:
        jobs = await response.json()
    return (
        len(jobs) == count
        and all(job["state"] != "watching" for job in jobs)
        and all(d["state"] == "delivered" for job in jobs for d in job["deliveries"])
    )
