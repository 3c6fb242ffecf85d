"""Whole `import-watcher run`s at debug level, as subprocesses, with and without failures: no secret in any log line.

Plus the masking itself, in process: exception values and nested fields, where no run of
today's code happens to put a secret, but the next log call might.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.helpers import DaemonProcess, WebhookReceiver, eventually, free_port, write_jobs
from tests.serving import all_settled
from watcher.logs import configure_logging
from watcher.schema import Secret
from watcher.testing.fake_sendgrid import FakeSendGrid

API_KEY = f"SG.redaction-{secrets.token_hex(12)}"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
SMTP_USER = "watcher"
SMTP_PASSWORD = f"smtp-{secrets.token_hex(12)}"
SERVER_TOKEN = f"api-{secrets.token_hex(12)}"
SECRETS = {"api key": API_KEY, "webhook secret": WEBHOOK_SECRET, "SMTP password": SMTP_PASSWORD,
           "server token": SERVER_TOKEN}
JOBS = {"log-done-1": "completed", "log-err-1": "errored", "log-fail-1": "failed"}
API_JOB = "log-api-1"


class _Sink:
    """An SMTP server that requires AUTH with SMTP_PASSWORD and keeps what it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 accepted"


def _authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == (SMTP_USER, SMTP_PASSWORD)
    return AuthResult(success=ok, handled=ok)


def write_config(tmp_path: Path, fake_url: str, hook_url: str, smtp_port: int, http_port: int) -> Path:
    """The API key from the environment, the SMTP password from a file, the rest inline: every way in."""
    password_file = tmp_path / "smtp-password"
    password_file.write_text(SMTP_PASSWORD + "\n", encoding="utf-8")
    jobs = write_jobs(tmp_path / "jobs.yaml", list(JOBS))
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        sendgrid:
          api_key: ${{SENDGRID_API_KEY}}
          base_url: {fake_url}
          request_timeout: 2s
          allow_insecure: true  # the fake's errors files are plain http,
          allow_private: true  # on loopback
        polling: {{initial_delay: 0s, min_interval: 50ms, max_interval: 200ms, deadline: 30s}}
        state:
          url: sqlite:///{tmp_path}/state.db
        heartbeat_file: {tmp_path}/heartbeat
        sources:
          - type: file
            path: {jobs}
        notifiers:
          hook:
            type: webhook
            url: {hook_url}
            secret: {WEBHOOK_SECRET}
          mail:
            type: email
            host: 127.0.0.1
            port: {smtp_port}
            starttls: false
            username: {SMTP_USER}
            password_file: {password_file}
            from: watcher@example.com
            to: [ops@example.com]
        server:
          listen: 127.0.0.1:{http_port}
          token: {SERVER_TOKEN}
        logging: {{level: debug, format: json}}
        shutdown_grace: 5s
        """), encoding="utf-8")
    return config


async def drive_api(url: str, daemon: DaemonProcess) -> None:
    """Use the API the way people do, token included, so the token has every chance to be logged."""
    auth = {"Authorization": f"Bearer {SERVER_TOKEN}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await eventually(lambda: _ready(http, url), 20, what="/readyz 200", watch=[daemon])
        async with http.get(f"{url}/?token={SERVER_TOKEN}") as response:
            assert 200 == response.status
        async with http.post(f"{url}/jobs", json={"id": API_JOB, "labels": {"via": "api"}}, headers=auth) as response:
            assert 202 == response.status
        async with http.get(f"{url}/jobs/{API_JOB}", headers=auth) as response:
            assert 200 == response.status
        wrong = {"Authorization": f"Bearer {SERVER_TOKEN}x"}
        async with http.post(f"{url}/jobs", json={"id": "log-never-1"}, headers=wrong) as response:
            assert 401 == response.status
        await eventually(lambda: all_settled(http, url, len(JOBS) + 1, SERVER_TOKEN), 20, what="every job settled",
                         watch=[daemon])


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_no_secret_reaches_the_log(tmp_path: Path) -> None:
    """Through polls, errors files, webhook and SMTP deliveries and API calls, stderr never shows a secret."""
    sink, smtp_port, http_port = _Sink(), free_port(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port, authenticator=_authenticator,
                            auth_required=True, auth_require_tls=False)
    controller.start()
    try:
        async with FakeSendGrid(api_keys=[API_KEY]) as fake, WebhookReceiver(secret=WEBHOOK_SECRET) as hook:
            for job_id, outcome in {**JOBS, API_JOB: "completed"}.items():
                fake.script_job(job_id, outcome=outcome, pending_for=0.2)
            config = write_config(tmp_path, fake.base_url, hook.url, smtp_port, http_port)
            daemon = await DaemonProcess.start(config, env={"SENDGRID_API_KEY": API_KEY})
            try:
                await drive_api(f"http://127.0.0.1:{http_port}", daemon)
            finally:
                code = await daemon.terminate(20)
    finally:
        controller.stop()
    log = daemon.text()
    check_lines(log, SECRETS)  # first: a failure message below may quote the log
    assert 0 == code, daemon.tail()
    assert len(JOBS) + 1 == len(sink.envelopes)  # the password was used: every e-mail went through AUTH
    check_events(log)


def check_lines(log: str, secrets_by_name: dict[str, str]) -> list[dict[str, Any]]:
    """Every line is a JSON event with a level and no secret; every line naming a job carries job_id."""
    lines = log.splitlines()
    assert len(lines) > 20
    events = []
    for number, line in enumerate(lines, 1):
        for what, value in secrets_by_name.items():
            assert value not in line, f"line {number} shows the {what}: {line}"
        event = json.loads(line)
        assert {"event", "level"} <= set(event), line
        events.append(event)
        if any(job_id in line for job_id in (*JOBS, API_JOB)):
            assert "job_id" in event, f"line {number} names a job without job_id: {line}"
    assert "debug" in {e["level"] for e in events}
    return events


def check_events(log: str) -> None:
    """The run did what it was driven to do: every job finished, and SIGTERM stopped it."""
    events = [json.loads(line) for line in log.splitlines()]
    assert {*JOBS, API_JOB} == {e["job_id"] for e in events if e["event"] == "job.finished"}
    assert "SIGTERM" == next(e["signal"] for e in events if e["event"] == "daemon.stopping")
    assert "daemon.stopped" in {e["event"] for e in events}


# -- a run where things fail ------------------------------------------------------------------------

SLACK_PATH_TOKEN = f"hook{secrets.token_hex(12)}"  # the incoming-webhook URL's own secret part
BOT_TOKEN = f"xoxb-{secrets.token_hex(12)}"
FAILING_JOBS = {f"log-flaky-{i}": ("completed", "errored", "failed")[i % 3] for i in range(6)}


class FlakySlack:
    """A Slack stand-in: the incoming webhook answers 500 twice, chat.postMessage says ratelimited once, then both work."""

    def __init__(self) -> None:
        self.hook_failures = 2
        self.api_failures = 1
        self.posts: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(request.path)
        if request.path.endswith("/chat.postMessage"):
            if self.api_failures:
                self.api_failures -= 1
                return web.json_response({"ok": False, "error": "ratelimited"}, headers={"Retry-After": "0"})
            return web.json_response({"ok": True, "ts": "1.2"})
        if self.hook_failures:
            self.hook_failures -= 1
            return web.Response(status=500, text="internal_error")
        return web.Response(text="ok")


def failing_config(tmp_path: Path, fake_url: str, hook_url: str, slack_url: str) -> Path:
    """Two Slack notifiers (webhook URL and bot token) and a webhook, each failing at first; debug logs."""
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        sendgrid:
          api_key: {API_KEY}
          base_url: {fake_url}
          request_timeout: 1s
          allow_insecure: true  # the fake's errors files are plain http,
          allow_private: true  # on loopback
        polling: {{initial_delay: 0s, min_interval: 50ms, max_interval: 200ms, deadline: 30s}}
        state:
          url: sqlite:///{tmp_path}/state.db
        heartbeat_file: {tmp_path}/heartbeat
        sources:
          - type: file
            path: {write_jobs(tmp_path / "jobs.yaml", list(FAILING_JOBS))}
        notifiers:
          hook:
            type: webhook
            url: {hook_url}
            secret: {WEBHOOK_SECRET}
          slack-hook:
            type: slack
            webhook_url: {slack_url}/services/T000/B000/{SLACK_PATH_TOKEN}
          slack-bot:
            type: slack
            bot_token: {BOT_TOKEN}
            channel: C0123
            api_url: {slack_url}/api
        logging: {{level: debug, format: json}}
        shutdown_grace: 5s
        """), encoding="utf-8")
    return config


@pytest.fixture
async def flaky_slack() -> Any:
    """FlakySlack served on 127.0.0.1:<free port>; yields (it, base URL)."""
    slack = FlakySlack()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slack.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield slack, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_no_secret_reaches_the_log_when_things_fail(tmp_path: Path, flaky_slack: Any) -> None:
    """SendGrid faults, webhook 503s and Slack 500s and rate limits, all retried at debug level: no line shows a secret."""
    slack, slack_url = flaky_slack
    async with FakeSendGrid(api_keys=[API_KEY]) as fake, WebhookReceiver(secret=WEBHOOK_SECRET) as hook:
        fake.set_faults(error_rate=0.2, malformed_rate=0.1, drop_rate=0.05, status_429_rate=0.05, seed=7)
        for job_id, outcome in FAILING_JOBS.items():
            fake.script_job(job_id, outcome=outcome, pending_for=0.2)
        hook.fail_with, hook.fail_times = 503, 4
        daemon = await DaemonProcess.start(failing_config(tmp_path, fake.base_url, hook.url, slack_url), "--until-idle")
        await daemon.exits_with(0, 60)
    log = daemon.text()
    events = check_lines(log, {"api key": API_KEY, "webhook secret": WEBHOOK_SECRET, "bot token": BOT_TOKEN,
                               "Slack webhook token": SLACK_PATH_TOKEN})
    names = {e["event"] for e in events}
    # The failures really happened, and each was logged on its way to a retry.
    assert {"notify.webhook_failed", "notify.slack_failed", "engine.poll_deferred"} <= names, sorted(names)
    assert 4 == hook.rejected
    assert {job_id: [outcome] for job_id, outcome in FAILING_JOBS.items()} == hook.notifications()
    assert 2 * len(FAILING_JOBS) + 3 == len(slack.posts)  # one post per job and notifier, plus the 3 refusals


# -- the masking itself --------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """configure_logging at debug into a buffer; yields a reader of its JSON lines. Restores logging afterwards."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("debug", "json", out)
    try:
        yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_exception_values_and_nested_fields_are_masked(json_log: Callable[[], list[dict[str, Any]]]) -> None:
    """A secret inside an exception value, a traceback, nested dicts, lists and tuples, or a library log is masked."""
    value = f"SG.nested-{secrets.token_hex(8)}"
    key = Secret(value)
    log = structlog.get_logger("watcher.test")
    log.error("x.failed", error=ValueError(f"bad key {value}"), request={"headers": {"Authorization": f"Bearer {value}"},
              "tries": [value, (1, value), {"key": key}]})
    try:
        raise RuntimeError(f"boom {value}")
    except RuntimeError:
        log.exception("x.crashed")
    logging.getLogger("aiohttp.client").warning("retrying %s", value, extra={"detail": {"url": f"https://h/{value}"}})
    failed, crashed, library = json_log()
    assert "ValueError: bad key ********" == failed["error"]
    assert {"headers": {"Authorization": "Bearer ********"}, "tries": ["********", [1, "********"], {"key": "********"}]} == (
        failed["request"])
    assert "RuntimeError: boom ********" in crashed["exception"]
    assert ("retrying ********", {"url": "https://h/********"}) == (library["event"], library["detail"])
    assert value not in json.dumps([failed, crashed, library])
