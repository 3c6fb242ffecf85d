"""Real local peers for integration tests: a Standard Webhooks receiver and config builders."""

from __future__ import annotations

import asyncio
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from watcher.config import Config, load_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
API_KEY = "SG.fake-key"


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
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
        return {job: items[-1].body["data"]["status"] for job, items in self.by_job().items()}


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
