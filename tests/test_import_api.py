"""POST /imports (multipart) and POST /exports, served by ImportRoutes in an app of their own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import eventually, mounted_tmpfs, serve_app
from watcher import api_imports
from watcher.accounts import Account
from watcher.api_imports import UPLOAD_PREFIX, ImportRoutes
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
        return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status, headers=exc.headers)


@contextlib.asynccontextmanager
async def api(
    fake: FakeSendGrid, tmp_path: Path, max_upload: int = 1 << 20, max_uploads: int = 4
) -> AsyncIterator[tuple[str, Daemon]]:
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
        ImportRoutes(daemon, require_write=require_write, max_upload=max_upload, temp_dir=tmp_path,
                     max_uploads=max_uploads).register(app.router)
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


async def test_post_imports_refuses_gzip_bombs_quickly(tmp_path: Path) -> None:
    """A few kB of gzip holding 8 MB of one line of commas, or of blank lines: 400 with one line, no import."""
    def bomb(filler: bytes) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        chunks = [compressor.compress(b"email\n")]
        chunks += [compressor.compress(filler * (1 << 20)) for _ in range(8)]
        return b"".join([*chunks, compressor.compress(b"\na@example.com\n"), compressor.flush()])

    async with FakeSendGrid() as fake, api(fake, tmp_path, max_upload=1 << 30) as (url, _), \
            aiohttp.ClientSession() as http:
        for filler, refusal in ((b",", "the record at line 2 is longer than"), (b"\n", "more than 1,000,000 blank")):
            started = time.monotonic()
            async with http.post(f"{url}/imports", headers={"Authorization": TOKEN}, data=form(bomb(filler))) as response:
                answer = await response.json()
            assert (400, "invalid_csv") == (response.status, answer["error"]), answer
            assert refusal in answer["message"] and "\n" not in answer["message"]
            assert time.monotonic() - started < 10
        assert {} == dict(fake.imports.uploads)


async def test_post_imports_past_the_concurrent_uploads_is_503_busy(tmp_path: Path) -> None:
    """While MAX_UPLOADS bodies are being received, another POST /imports is 503 `busy` with a Retry-After."""
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nemail\r\n'
        await release.wait()
        yield b"a@example.com\r\n\r\n--b--\r\n"

    async with FakeSendGrid() as fake, api(fake, tmp_path, max_uploads=1) as (url, _), \
            aiohttp.ClientSession() as http:
        first = asyncio.create_task(http.post(f"{url}/imports", data=slow_body(), headers={
            "Authorization": TOKEN, "Content-Type": "multipart/form-data; boundary=b"}))
        await eventually(lambda: list(tmp_path.iterdir()), what="the first upload's temporary file")
        async with http.post(f"{url}/imports", headers={"Authorization": TOKEN},
                             data=form(b"email\na@example.com\n")) as response:
            busy = (response.status, (await response.json())["error"], response.headers.get("Retry-After"))
        release.set()
        async with await first as response:
            assert 202 == response.status, await response.text()
        async with http.post(f"{url}/imports", headers={"Authorization": TOKEN},
                             data=form(b"email\na@example.com\n")) as response:
            assert 202 == response.status  # the slot is free again
    assert (503, "busy", "30") == busy


async def test_post_imports_without_free_space_is_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary directory with less room than the declared body and the margin: 507, nothing written."""
    real = os.statvfs(tmp_path)
    free_blocks = api_imports.FREE_MARGIN // real.f_frsize + 2  # room for the margin and a small body

    def statvfs(path: object) -> os.statvfs_result:
        return os.statvfs_result((*real[:4], free_blocks, *real[5:]))

    monkeypatch.setattr(api_imports.os, "statvfs", statvfs)
    async with FakeSendGrid() as fake, api(fake, tmp_path) as (url, _), aiohttp.ClientSession() as http:
        async with http.post(f"{url}/imports", headers={"Authorization": TOKEN},
                             data=form(b"email\n" + b"a@example.com\n" * 4000)) as response:
            answer = await response.json()
        assert (507, "no_space") == (response.status, answer["error"])
        assert "not enough free space" in answer["message"]
        async with http.post(f"{url}/imports", headers={"Authorization": TOKEN},
                             data=form(b"email\na@example.com\n")) as response:
            assert 202 == response.status, await response.text()  # a small one fits
        assert 1 == len(fake.imports.uploads)
    assert [] == list(tmp_path.iterdir())


def test_stale_temporary_uploads_are_removed_at_start(tmp_path: Path) -> None:
    """Uploads a killed daemon left over a day ago are removed; fresh ones and other files stay."""
    old, fresh = tmp_path / f"{UPLOAD_PREFIX}abc_1234.csv", tmp_path / f"{UPLOAD_PREFIX}def_5678.csv"
    other = tmp_path / "import-contacts.csv"  # someone's own file, whatever its age
    for path in (old, fresh, other):
        path.write_text("email\n")
    day_ago = time.time() - 86400 - 60
    os.utime(old, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))
    ImportRoutes(None, require_write=require_write, temp_dir=tmp_path)  # type: ignore[arg-type]
    assert {fresh.name, other.name} == {p.name for p in tmp_path.iterdir()}


async def test_post_imports_filling_the_disk_is_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills while the body is stored (the free-space check passed): 507, the file removed."""
    real = os.statvfs(tmp_path)
    monkeypatch.setattr(api_imports.os, "statvfs", lambda path: os.statvfs_result((*real[:4], 1 << 40, *real[5:])))
    with mounted_tmpfs(tmp_path / "small", "64k") as small:
        async with FakeSendGrid() as fake, api(fake, small) as (url, _), aiohttp.ClientSession() as http:
            async with http.post(f"{url}/imports", headers={"Authorization": TOKEN},
                                 data=form(b"email\n" + b"a@example.com\n" * 20_000)) as response:
                answer = await response.json()
            assert (507, "no_space") == (response.status, answer["error"])
            assert "No space left on device" in answer["message"]
        assert [] == list(small.iterdir())
