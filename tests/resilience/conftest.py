"""Shared instruments for the resilience runs: a per-request log of the fake SendGrid and a log-event counter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from watcher.models import Delivery, JobState
from watcher.sendgrid_answers import parse_snapshot
from watcher.store import open_store
from watcher.testing.fake_sendgrid import FakeSendGrid

IMPORTS_PATH = "/v3/marketing/contacts/imports/"
CRASH_EVENTS = ("engine.poll_crashed", "outbox.delivery_crashed")
# Log events that mean something went wrong inside the watcher, whatever its peers did.
TROUBLE_EVENTS = (
    *CRASH_EVENTS, "engine.record_failed", "engine.lease_lost", "engine.outcome_not_written",
    "delivery.lease_lost", "delivery.dead", "engine.store_unavailable", "outbox.store_unavailable",
    "source.refresh_failed",
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RequestLog:
    """Every status request the fake saw, per job: (arrival time, how it was answered)."""

    arrivals: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    kinds: Counter[str] = field(default_factory=Counter)

    def attach(self, fake: FakeSendGrid) -> None:
        """Watch `fake` from inside its middleware chain (call before the fake starts)."""
        fake.app.middlewares.append(self._record)

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "GET" or not request.path.startswith(IMPORTS_PATH):
            return await handler(request)
        job_id = request.match_info.get("id", request.path[len(IMPORTS_PATH):])
        at = time.time()  # the daemon's SystemClock
        try:
            response = await handler(request)
        except asyncio.CancelledError:  # the client timed out and hung up (handler_cancellation)
            self._note(job_id, at, "timeout")
            raise
        transport = request.transport
        if transport is None or transport.is_closing():
            kind = "dropped"
        else:
            kind = _kind(response)
        self._note(job_id, at, kind)
        return response

    def _note(self, job_id: str, at: float, kind: str) -> None:
        self.arrivals[job_id].append((at, kind))
        self.kinds[kind] += 1


def _kind(response: web.StreamResponse) -> str:
    """'pending', 'final', 'not_found', 'malformed' or the HTTP status of an error answer."""
    if response.status == 404:
        return "not_found"
    if response.status != 200:
        return str(response.status)
    body = response.body if isinstance(response, web.Response) else None
    try:
        snapshot = parse_snapshot(bytes(body) if isinstance(body, bytes | bytearray) else b"")
    except ValueError:
        return "malformed"
    return "pending" if snapshot.normalized_status == "pending" else "final"


@contextlib.contextmanager
def counted_log_events() -> Iterator[Counter[str]]:
    """Count every structlog event name emitted inside the block (nothing is printed)."""
    counts: Counter[str] = Counter()

    def count(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        counts[str(event.get("event"))] += 1
        raise structlog.DropEvent

    saved = structlog.get_config()
    structlog.configure(processors=[count])
    try:
        yield counts
    finally:
        structlog.configure(**saved)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """Serve `handler` for every path on 127.0.0.1:<free port>; yields the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def stored(url: str) -> tuple[dict[str, JobState], list[Delivery]]:
    """Every job and delivery a daemon left in the store at `url`."""
    store = open_store(url)
    await store.open()
    try:
        return {job.id: job for job in await store.list_jobs()}, await store.list_deliveries()
    finally:
        await store.close()
