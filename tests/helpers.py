"""Real local peers for integration tests: services, ports, waits, the subprocess daemon, receivers, configs.

The fixtures built on these (redis_url, redis_prefix, smtp_server, daemon) are in tests/conftest.py,
which also turns a missing service into a failure under REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web
from aiosmtpd.smtp import Envelope, Session
from standardwebhooks.webhooks import Webhook

from watcher.config import Config, load_config
from watcher.models import JobState
from watcher.store.base import StateStore

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
API_KEY = "SG.fake-key"


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1 at a free port: its runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@dataclass
class Received:
    webhook_id: str
    body: dict[str, Any]
    raw: bytes


@dataclass
class WebhookReceiver:
    """An aiohttp receiver that verifies every signature and can be told to fail for a while."""

    secret: str = SECRET
    fail_with: int | None = None
    fail_times: int = 0
    received: list[Received] = field(default_factory=list)
    rejected: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner, port = await serve_app(app)
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.fail_with is not None and self.fail_times != 0:
            self.fail_times -= 1
            self.rejected += 1
            return web.Response(status=self.fail_with, text="not now")
        Webhook(self.secret).verify(raw, dict(request.headers))  # raises on a bad signature
        self.received.append(Received(request.headers["webhook-id"], json.loads(raw), raw))
        self._arrived.set()
        return web.Response(status=204)

    def by_job(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for item in self.received:
            job_id = item.body["data"].get("job_id")
            if item.body["type"].startswith("contact_import.") and job_id:
                out.setdefault(job_id, []).append(item)
        return out

    def statuses(self) -> dict[str, str]:
        """The last status each job notified (see notifications() for how many there were)."""
        return {job: items[-1].body["data"]["status"] for job, items in self.by_job().items()}

    def notifications(self) -> dict[str, list[str]]:
        """Per job, the status of every distinct notification (webhook-id) in arrival order; resends of one id count once."""
        out: dict[str, list[str]] = {}
        for job, items in self.by_job().items():
            seen: dict[str, str] = {}
            for item in items:
                seen.setdefault(item.webhook_id, item.body["data"]["status"])
            out[job] = list(seen.values())
        return out

    def resends(self) -> int:
        """Deliveries that repeated a webhook-id already received (at least once: after a crash)."""
        return len(self.received) - len({item.webhook_id for item in self.received})


@dataclass
class SlackReceiver:
    """A local stand-in for a Slack incoming webhook: answers `ok` and keeps every message posted."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> SlackReceiver:
        app = web.Application()
        app.router.add_post("/services/T0/B0/x", self._handle)
        self._runner, port = await serve_app(app)
        self.url = f"http://127.0.0.1:{port}/services/T0/B0/x"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append(json.loads(await request.read()))
        return web.Response(text="ok")


def config_text(
    fake_url: str,
    state_url: str,
    *,
    hook_url: str | None = None,
    jobs_file: Path | None = None,
    polling: str = "initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 200ms\n  deadline: 3s\n  not_found_grace: 500ms",
    extra: str = "",
) -> str:
    """A config for fast integration runs against the fake."""
    text = f"""\
sendgrid:
  api_key: {API_KEY}
  base_url: {fake_url}
  request_timeout: 2s
  allow_private: true    # the fake serves errors files on plain-http loopback
  allow_insecure: true
polling:
  {polling}
state:
  url: {state_url}
shutdown_grace: 2s
"""
    if jobs_file is not None:
        text += f"sources:\n  - type: file\n    path: {jobs_file}\n"
    if hook_url is not None:
        text += f"notifiers:\n  hook:\n    type: webhook\n    url: {hook_url}\n    secret: {SECRET}\n"
    return text + textwrap.dedent(extra)


def make_config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={})


def write_jobs(path: Path, ids: list[str]) -> Path:
    path.write_text("jobs:\n" + "".join(f"  - {i}\n" for i in ids), encoding="utf-8")
    return path


# -- services: REQUIRE_SERVICES=1 (CI) turns "not here" into a failure --------------------------

REDIS_URL = os.environ.get("WATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CHROMIUM = Path(os.environ.get("WATCHER_TEST_CHROMIUM", "/usr/bin/chromium"))
#: Words in a skip reason that name a service CI must have; tests/conftest.py fails such skips there.
SERVICE_WORDS = ("redis", "chromium")


def services_required() -> bool:
    """True in CI (.ci/run sets REQUIRE_SERVICES=1): a missing service fails instead of skipping."""
    return os.environ.get("REQUIRE_SERVICES", "") not in ("", "0")


def missing_service(reason: str) -> None:
    """Skip the test locally; fail it when services are required."""
    if services_required():
        pytest.fail(f"REQUIRE_SERVICES=1: {reason}", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _redis_problem(url: str) -> str | None:
    """None when Redis at `url` answers PING, else why not (asked once per URL and session)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        return f"Redis at {url} is unreachable ({exc}); start it (make services) or set WATCHER_TEST_REDIS_URL"
    finally:
        client.close()
    return None


def require_redis(url: str = REDIS_URL) -> str:
    """The test Redis URL; skips (fails under REQUIRE_SERVICES=1) when it does not answer."""
    if (problem := _redis_problem(url)) is not None:
        missing_service(problem)
    return url


async def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix` on the Redis at `url` (what a test left behind)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


def require_chromium() -> Path:
    """The Chromium binary; skips (fails under REQUIRE_SERVICES=1) when it is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        missing_service(f"needs chromium at {CHROMIUM} (apt-get install chromium; .ci/services installs it in CI)")
    return CHROMIUM


def require_binary(name: str) -> str:
    """The path of a service binary such as redis-server; skips (fails under REQUIRE_SERVICES=1) without it."""
    path = shutil.which(name)
    if path is None:
        missing_service(f"{name} is not installed (Debian: apt-get install redis-server)")
    return str(path)


def free_port() -> int:
    """A local port nothing listens on right now (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- waiting with a deadline ---------------------------------------------------------------------


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, *, what: str = "condition",
    watch: Iterable[DaemonProcess] = (), interval: float = 0.02,
) -> None:
    """Wait until `check()` (sync or async) is truthy; fail after `timeout` s, or at once if a watched daemon exits.

    The failure names `what` and carries the tail of each watched daemon's output, so a hung
    run says why instead of waiting for the global pytest timeout.
    """
    deadline = time.monotonic() + timeout
    watched = list(watch)
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        for daemon in watched:
            if daemon.returncode is not None:
                raise AssertionError(f"{what}: the daemon exited with {daemon.returncode} first\n{daemon.tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(daemon.tail() for daemon in watched)
            raise AssertionError(f"{what}: not met within {timeout}s\n{tails}".rstrip())
        await asyncio.sleep(interval)


# -- the daemon as a subprocess -------------------------------------------------------------------


@dataclass
class DaemonProcess:
    """`python -m watcher run -c CONFIG ...` in its own process; its stdout and stderr go to `log`."""

    proc: asyncio.subprocess.Process
    log: Path

    @classmethod
    async def start(
        cls, config: Path, *args: str, log: Path | None = None, env: Mapping[str, str] | None = None,
        command: str = "run",
    ) -> DaemonProcess:
        """Start it; the log is appended to (a restarted daemon keeps one log)."""
        log = log or config.with_name("daemon.log")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "watcher", command, "-c", str(config), *args,
                stdout=out, stderr=out, env=full_env, stdin=asyncio.subprocess.DEVNULL,
            )
        return cls(proc, log)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines (a SIGKILL may cut the last one short, and it is left out)."""
        parsed = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    parsed.append(event)
        return parsed

    def tail(self, lines: int = 40) -> str:
        """The last lines of its output, for assertion messages."""
        kept = self.text().splitlines()[-lines:]
        return f"--- last {len(kept)} lines of {self.log.name} (pid {self.proc.pid}) ---\n" + "\n".join(kept)

    async def wait(self, timeout: float) -> int:
        """Its exit code; past `timeout` it is killed and the test fails with its output."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"the daemon did not exit within {timeout}s\n{self.tail()}") from None

    async def exits_with(self, expected: int, timeout: float) -> None:
        """Assert it exits with `expected` within `timeout`, showing its output otherwise."""
        code = await self.wait(timeout)
        assert expected == code, self.tail()

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then its exit code (killed, and a failure, past `timeout`)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        """SIGKILL it (if still running) and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


# -- an SMTP sink ------------------------------------------------------------------------------------


@dataclass
class SmtpSink:
    """An aiosmtpd handler that keeps every envelope; refuses the recipients in `refuse` with `refusal`."""

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


# -- a small disk that fills up -------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `directory` (created), unmounted afterwards; skipped where
    mounting is not permitted (it needs root or CAP_SYS_ADMIN, which CI has)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Take every byte left on the file system of `directory`; the filler file, to free it again."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65_536)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:  # the last partial block
        for _ in range(128):
            out.write(b"\0" * 512)
    return filler


# -- a store whose batch reads are slow ----------------------------------------------------------


class StallsOnce:
    """A store handle whose first batch read (across all handles sharing `stalls`) outlasts the lease."""

    def __init__(self, store: StateStore, stalls: list[float]) -> None:
        self._store = store
        self.stalls = stalls

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def batch_jobs(self, name: str) -> list[JobState]:
        if self.stalls:
            await asyncio.sleep(self.stalls.pop())
        return await self._store.batch_jobs(name)
