"""POST /imports (multipart) and POST /exports, served by ImportRoutes in an app of their own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.helpers import serve_app
from watcher.accounts import Account
from watcher.api_imports import ImportRoutes
from watcher.clock import SystemClock
from watcher.httpinput import ApiError
from watcher.models import JobKind
from watcher.policy import PollPolicy
from watcher.ratelimit import LocalRateBudget
from watcher.schema import Secret
from watcher.sendgrid import SendGridClient, SendGridSettings
from watcher.sources.base import Intake
from watcher.store.memory import MemoryStore
from watcher.testing.fake_sendgrid import DEFAULT_API_KEY, FakeSendGrid

TOKEN = "Bearer secret-token"


@dataclass
class Accounts:
    main: Account

    def get(self, name: str | None) -> Account:
        if name not in (None, "main"):
            raise ValueError(f"unknown account {name!r} (configured: main)")
        return self.main


@dataclass
class Daemon:
    store: MemoryStore
    intake: Intake
    clock: SystemClock
    accounts: Accounts


def require_write(request: web.Request) -> None:
    if request.headers.get("Authorization") != TOKEN:
        raise ApiError.refused()


@web.middleware
async def errors(request: web.Request, handler: object) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[operator]
    except ApiError as exc:  # as the server's middleware renders them
        return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)


@contextlib.asynccontextmanager
async def api(fake: FakeSendGrid, tmp_path: Path, max_upload: int = 1 << 20) -> AsyncIterator[tuple[str, Daemon]]:
    settings = SendGridSettings(api_key=Secret(DEFAULT_API_KEY), base_url=fake.base_url, allow_private=True,
                                allow_insecure=True)
    clock = SystemClock()
    budget = LocalRateBudget(max_rate=None, clock=clock)
    store = MemoryStore()
    await store.open()
    async with aiohttp.ClientSession() as session:
        client = SendGridClient(settings, session=session, budget=budget, clock=clock)
        daemon = Daemon(store, Intake(store, PollPolicy(), clock, ()), clock,
                        Accounts(Account("main", settings, session, budget, client)))
        app = web.Application(middlewares=[errors])
        ImportRoutes(daemon, require_write=require_write, max_upload=max_upload, temp_dir=tmp_path).register(app.router)
        runner, port = await serve_app(app)
        try:
            yield f"http://127.0.0.1:{port}", daemon
        finally:
            await runner.cleanup()
            await store.close()


def form(csv: bytes, **fields: str | list[str]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            data.add_field(name, item)
    data.add_field("file", csv, filename="contacts.csv", content_type="text/csv")
    return data


async def test_post_imports_uploads_and_tracks_the_job(tmp_path: Path) -> None:
    """A multipart CSV with options is mapped, uploaded and tracked: 202 with the job's view."""
    async with FakeSendGrid() as fake, api(fake, tmp_path) as (url, daemon), aiohttp.ClientSession() as http:
        csv = b"Email,favorite_color,notes\na@example.com,red,x\n"
        async with http.post(f"{url}/imports", headers={"Authorization": TOKEN},
                             data=form(csv, label="team=crm", skip="notes", list="l1", batch="b1")) as response:
            assert 202 == response.status, await response.text()
            view = await response.json()
        (upload,) = fake.imports.uploads.values()
        job = await daemon.store.get_job(view["id"])
    assert (upload.job_id, ("l1",), 1) == (view["id"], upload.list_ids, upload.rows)
    assert (JobKind.IMPORT, "main", {"team": "crm"}, "b1") == (job.kind, job.account, dict(job.labels), job.batch)
    assert [] == list(tmp_path.iterdir())  # the temporary file is gone


async def test_post_imports_refusals(tmp_path: Path) -> None:
    """No token 401, not multipart 415, cross-site 403, bad column 400, too big 413: one line each, no import."""
    async with FakeSendGrid() as fake, api(fake, tmp_path, max_upload=1000) as (url, _), \
            aiohttp.ClientSession() as http:
        auth = {"Authorization": TOKEN}
        cases = [
            ({}, form(b"email\na@example.com\n"), 401, "unauthorized"),
            (auth, b"email\na@example.com\n", 415, "unsupported_media_type"),
            ({**auth, "Sec-Fetch-Site": "cross-site"}, form(b"email\na@example.com\n"), 403, "cross_origin"),
            (auth, form(b"email,shoe_size\na@example.com,1\n"), 400, "invalid_csv"),
            (auth, form(b"email\n" + b"a@example.com\n" * 100), 413, "file_too_large"),
            (auth, form(b"email\na@example.com\n", account="other"), 400, "unknown_account"),
            (auth, form(b"email\na@example.com\n", surprise="1"), 400, "invalid_form"),
        ]
        for headers, body, status, code in cases:
            async with http.post(f"{url}/imports", headers=headers, data=body) as response:
                answer = await response.json()
            assert (status, code) == (response.status, answer["error"]), answer
            assert "\n" not in answer["message"]
        assert {} == dict(fake.imports.uploads)
    assert [] == list(tmp_path.iterdir())


async def test_post_exports_starts_and_tracks_an_export(tmp_path: Path) -> None:
    """POST /exports {file_type, labels} is 202 with an export job; a bad body is 400."""
    async with FakeSendGrid() as fake, api(fake, tmp_path) as (url, daemon), aiohttp.ClientSession() as http:
        auth = {"Authorization": TOKEN}
        async with http.post(f"{url}/exports", headers=auth,
                             json={"file_type": "json", "labels": {"k": "v"}}) as response:
            assert 202 == response.status, await response.text()
            view = await response.json()
        async with http.post(f"{url}/exports", headers=auth, json={"file_type": "xml"}) as response:
            assert 400 == response.status
        job = await daemon.store.get_job(view["id"])
    assert (JobKind.EXPORT, "main", {"k": "v"}) == (job.kind, job.account, dict(job.labels))
