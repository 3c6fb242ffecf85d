"""Shared peers for notifier tests: a scriptable HTTP server, an SMTP server, deliveries."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from watcher.logs import configure_logging
from watcher.models import Delivery
from watcher.notify.base import BaseNotifier


@dataclass
class Answer:
    """One scripted HTTP answer."""

    status: int = 200
    body: str | bytes = "ok"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Request:
    """What the fake server saw."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeHttp:
    """Records every request; answers from `script` in order, then with `default`."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=Answer)
    check: Callable[[Request], Answer | None] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        seen = Request(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
        )
        self.requests.append(seen)
        answer = self.check(seen) if self.check else None
        if answer is None:
            answer = self.script.pop(0) if self.script else self.default
        body = answer.body.encode() if isinstance(answer.body, str) else answer.body
        return web.Response(status=answer.status, body=body, headers=dict(answer.headers))


StartHttp = Callable[..., Awaitable[FakeHttp]]


@pytest.fixture
async def http_server() -> AsyncIterator[StartHttp]:
    """Start FakeHttp servers on 127.0.0.1:<free port>; all are stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(
        *,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
        **options: Any,
    ) -> FakeHttp:
        fake = FakeHttp(**options)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler or fake.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}"
        return fake

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def make_delivery() -> Callable[..., Delivery]:
    """Build a Delivery for an event; the id is the idempotency key under test."""

    def make(event: Mapping[str, Any], *, id: str = "msg_test0001", notifier: str = "n") -> Delivery:
        return Delivery(
            id=id,
            notifier=notifier,
            event=event,
            created_at=0.0,
            next_attempt_at=0.0,
            deadline_at=1e12,
        )

    return make


@pytest.fixture
def start_notifier(
    session: aiohttp.ClientSession,
) -> Callable[[BaseNotifier], Awaitable[BaseNotifier]]:
    async def start(notifier: BaseNotifier) -> BaseNotifier:
        await notifier.start(session)
        return notifier

    return start


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every log line of the test (structlog and stdlib, debug up) as the JSON the daemon writes."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("debug", "json", out)
    try:
        yield out
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
