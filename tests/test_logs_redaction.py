"""A whole `import-watcher run` at debug level, as a subprocess: no secret in any log line, every line JSON."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.helpers import WebhookReceiver, write_jobs
from tests.serving import all_settled, eventually
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


async def drive_api(url: str) -> None:
    """Use the API the way people do, token included, so the token has every chance to be logged."""
    auth = {"Authorization": f"Bearer {SERVER_TOKEN}"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await eventually(lambda: _ready(http, url), timeout=20)
        async with http.get(f"{url}/?token={SERVER_TOKEN}") as response:
            assert 200 == response.status
        async with http.post(f"{url}/jobs", json={"id": API_JOB, "labels": {"via": "api"}}, headers=auth) as response:
            assert 202 == response.status
        async with http.get(f"{url}/jobs/{API_JOB}", headers=auth) as response:
            assert 200 == response.status
        wrong = {"Authorization": f"Bearer {SERVER_TOKEN}x"}
        async with http.post(f"{url}/jobs", json={"id": "log-never-1"}, headers=wrong) as response:
            assert 401 == response.status
        await eventually(lambda: all_settled(http, url, len(JOBS) + 1, SERVER_TOKEN), timeout=20)


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
            env = {**os.environ, "SENDGRID_API_KEY": API_KEY}
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "watcher", "run", "-c", str(config), env=env, cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            output = asyncio.ensure_future(process.communicate())
            driving = asyncio.ensure_future(drive_api(f"http://127.0.0.1:{http_port}"))
            # Whichever ends first: the drive (then SIGTERM), or the daemon (then the drive failed).
            await asyncio.wait({output, driving}, return_when=asyncio.FIRST_COMPLETED)
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(output, 20)
    finally:
        controller.stop()
    log = stderr.decode()
    assert driving.done() and driving.exception() is None, _tail(log, driving)
    assert 0 == process.returncode, log[-3000:]
    assert len(JOBS) + 1 == len(sink.envelopes)  # the password was used: every e-mail went through AUTH
    check_lines(log, stdout.decode())


def _tail(log: str, driving: asyncio.Future[None]) -> str:
    """What went wrong while driving the API, and the daemon's last log lines (already checked free of secrets)."""
    lines = [line for line in log.splitlines() if '"sendgrid.response"' not in line]
    problem = driving.exception() if driving.done() else "the daemon exited first"
    return f"{problem!r}\n" + "\n".join(lines[-40:])


def check_lines(log: str, stdout: str) -> None:
    """Every line is a JSON event with a level and no secret; every line naming a job carries job_id."""
    lines = log.splitlines()
    assert len(lines) > 20
    events = []
    for number, line in enumerate(lines, 1):
        for what, value in SECRETS.items():
            assert value not in line, f"line {number} shows the {what}: {line}"
        event = json.loads(line)
        assert {"event", "level"} <= set(event), line
        events.append(event)
        if any(job_id in line for job_id in (*JOBS, API_JOB)):
            assert "job_id" in event, f"line {number} names a job without job_id: {line}"
    for value in SECRETS.values():
        assert value not in stdout
    assert "debug" in {e["level"] for e in events}
    assert {*JOBS, API_JOB} == {e["job_id"] for e in events if e["event"] == "job.finished"}
    assert "SIGTERM" == next(e["signal"] for e in events if e["event"] == "daemon.stopping")
    assert "daemon.stopped" in {e["event"] for e in events}
