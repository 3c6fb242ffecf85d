"""Fixtures every test directory shares, and REQUIRE_SERVICES=1: in CI a missing service fails, never skips.

The plain helpers behind them (require_redis, require_chromium, free_port, eventually,
DaemonProcess, SmtpSink) are in tests/helpers.py, importable by any test.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.helpers import (
    SERVICE_WORDS,
    DaemonProcess,
    SmtpSink,
    delete_redis_prefix,
    free_port,
    require_redis,
    services_required,
)

pytest_plugins = ["pytester"]  # tests/test_promises.py runs pytest on the REQUIRE_SERVICES hook

SMTP_USER = "watcher"
SMTP_PASSWORD = "s3cret-smtp-password"
_SERVICE_SKIP = re.compile("|".join(SERVICE_WORDS), re.IGNORECASE)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under REQUIRE_SERVICES=1, a skip whose reason names Redis or Chromium is a failure.

    require_redis()/require_chromium() already fail there; this also catches a skip written
    another way (a skipif marker, a fixture's own pytest.skip), so CI cannot go green without them.
    """
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and services_required() and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if _SERVICE_SKIP.search(reason):
            report.outcome = "failed"
            report.longrepr = f"REQUIRE_SERVICES=1 and a service is missing: {reason}"


@pytest.fixture
def redis_url() -> str:
    """The test Redis (WATCHER_TEST_REDIS_URL, default db 15 on 127.0.0.1:6379); skipped without it, failed in CI."""
    return require_redis()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A random key prefix on the test Redis; every key under it is deleted after the test."""
    prefix = f"iw-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_redis_prefix(redis_url, prefix)


@pytest.fixture
async def daemons() -> AsyncIterator[list[DaemonProcess]]:
    """A list to append started DaemonProcess objects to; any still running at the end are killed."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        await daemon.kill()


def _authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (SMTP_USER, SMTP_PASSWORD)
    # handled=False: aiosmtpd answers "535 authentication failed" itself.
    return AuthResult(success=ok, handled=ok)


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SmtpSink]]:
    """Start aiosmtpd SMTP sinks (optionally requiring AUTH as SMTP_USER/SMTP_PASSWORD); all stop after the test."""
    controllers: list[Controller] = []

    def start(*, auth: bool = False, **options: Any) -> SmtpSink:
        sink = SmtpSink(port=free_port(), **options)
        extra: dict[str, Any] = {}
        if auth:
            extra = {"authenticator": _authenticator, "auth_required": True, "auth_require_tls": False}
        controller = Controller(sink, hostname=sink.host, port=sink.port, **extra)
        controller.start()
        controllers.append(controller)
        return sink

    yield start
    for controller in controllers:
        controller.stop()

