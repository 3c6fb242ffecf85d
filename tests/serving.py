"""A Daemon with its HTTP server on a free port, and the server alone on a real store, for the API tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from tests.helpers import config_text, make_config
from tests.helpers import eventually as eventually  # the API tests import it from here
from watcher.clock import Clock, ManualClock
from watcher.config import ServerSettings
from watcher.metrics import WatcherMetrics
from watcher.models import Delivery
from watcher.notify.base import BaseNotifier, Notifier
from watcher.notify.outbox import Backoff
from watcher.policy import PollPolicy
from watcher.schema import Secret
from watcher.server import WatcherServer
from watcher.sources.base import Intake
from watcher.store.base import StateStore
from watcher.store.memory import MemoryStore

if TYPE_CHECKING:
    from watcher.daemon import Daemon

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
    from watcher.daemon import Daemon
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


def api_headers(token: str = TOKEN) -> dict[str, str]:
    """What an API client sends: the token, and the JSON media type POST and DELETE need."""
    return {**bearer(token), "Content-Type": "application/json"}


async def all_settled(session: aiohttp.ClientSession, url: str, count: int, token: str = TOKEN) -> bool:
    """True when `count` jobs are final and every delivery is delivered."""
    async with session.get(f"{url}/jobs", headers=bearer(token)) as response:
        jobs = await response.json()
    return (
        len(jobs) == count
        and all(job["state"] != "watching" for job in jobs)
        and all(d["state"] == "delivered" for job in jobs for d in job["deliveries"])
    )


@dataclass
class ApiHost:
    """What the server reads of a daemon (watcher.server.ServedDaemon), made of real parts: a real
    store, the real Intake and a clock; no engine, so the API is tested apart from polling."""

    store: StateStore
    intake: Intake
    clock: Clock
    notifiers: dict[str, object]
    metrics: WatcherMetrics = field(default_factory=WatcherMetrics)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    engine: None = None
    outbox: None = None
    client: None = None
    budget: None = None
    accounts: None = None
    learned: None = None
    loop_crashes: dict[str, int] = field(default_factory=dict)

    async def not_ready_reason(self) -> str | None:
        return "shutting down" if self.stop_event.is_set() else None

    def close_time_left(self) -> float:
        return 2.0


@contextlib.asynccontextmanager
async def serving_api(
    store: StateStore | None = None,
    *,
    token: str | None = TOKEN,
    clock: Clock | None = None,
    notifiers: tuple[str, ...] = ("hook",),
    max_body: int = 2048,
) -> AsyncIterator[tuple[WatcherServer, ApiHost]]:
    """The HTTP server alone on 127.0.0.1 (port 0) over `store` (a MemoryStore by default)."""
    store = store if store is not None else MemoryStore()
    clock = clock or ManualClock(1_764_000_000.0)
    await store.open()
    host = ApiHost(store, Intake(store, PollPolicy(), clock, notifiers), clock, dict.fromkeys(notifiers, object()))
    settings = ServerSettings(host="127.0.0.1", port=0, token=Secret(token) if token else None, max_body=max_body)
    server = WatcherServer(host, settings)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await server.start(stack)
            yield server, host
    finally:
        await store.close()
