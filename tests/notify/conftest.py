"""Shared peers for notifier tests: a scriptable HTTP server, an SMTP server, deliveries."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from watcher.logs import configure_logging
from watcher.models import Delivery
from watcher.notify.base import BaseNotifier

SMTP_USER = "watcher"
SMTP_PASSWORD = "s3cret-smtp-password"


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


def free_port() -> int:
    """A port nothing listens on right now (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SmtpSink:
    """Collects envelopes; refuses the recipients in `refuse` with `refusal`."""

    host: str = "127.0.0.1"
    port: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    refusal: str = "550 5.1.1 recipient rejected"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        return [
            message_from_bytes(e.original_content or b"", policy=policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


def _authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (SMTP_USER, SMTP_PASSWORD)
    # handled=False: aiosmtpd answers "535 authentication failed" itself.
    return AuthResult(success=ok, handled=ok)


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SmtpSink]]:
    """Start aiosmtpd Controllers (optionally requiring AUTH); all are stopped after the test."""
    controllers: list[Controller] = []

    def start(*, auth: bool = False, **options: Any) -> SmtpSink:
        sink = SmtpSink(port=free_port(), **options)
        extra: dict[str, Any] = {}
        if auth:
            extra = {
                "authenticator": _authenticator,
                "auth_required": True,
                "auth_require_tls": False,
            }
        controller = Controller(sink, hostname=sink.host, port=sink.port, **extra)
        controller.start()
        controllers.append(controller)
        return sink

    yield start
    for controller in controllers:
        controller.stop()


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
