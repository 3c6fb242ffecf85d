"""`import-watcher import` end to end against the bundled fake SendGrid (and a stand-in daemon API)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import config_text, serve_app
from watcher import cli
from watcher.models import JobKind
from watcher.store import open_store
from watcher.testing.fake_sendgrid import FakeSendGrid

CSV = "email,First_Name,favorite_color,loyalty_points\na@example.com,Ann,red,3\nb@example.com,Bob,,\n"


def setup(tmp_path: Path, fake: FakeSendGrid, extra: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(fake.base_url, f"sqlite:///{tmp_path / 'state.db'}", extra=extra)
                      + f"heartbeat_file: {tmp_path / 'no-daemon.heartbeat'}\n", encoding="utf-8")
    (tmp_path / "contacts.csv").write_text(CSV, encoding="utf-8")
    return config


async def main(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def stored(tmp_path: Path, job_id: str) -> Any:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    try:
        return await store.get_job(job_id)
    finally:
        await store.close()


async def test_import_uploads_tracks_and_waits_for_completion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reserved and custom columns are mapped, the file uploaded as the fake's S3 wants, the job stored, and
    --wait (no daemon: polling SendGrid itself) exits 0 once it completed; the contacts are then in the fake."""
    async with FakeSendGrid() as fake:
        fake.set_lifecycle(import_seconds=0.1)
        config = setup(tmp_path, fake)
        code = await main("import", "-c", str(config), str(tmp_path / "contacts.csv"), "--label", "team=crm",
                          "--batch", "nightly", "--wait")
        out = capsys.readouterr().out
        assert 0 == code, out
        (upload,) = fake.imports.uploads.values()
        assert ("completed", 2) == (upload.outcome, upload.rows)
        assert [("reserved", "email"), ("reserved", "first_name"), ("custom", "e1_T"),
                ("custom", "e2_N")] == upload.columns
    job_id = upload.job_id
    assert f"import {job_id}: started, 2 contacts uploaded (default)" in out
    assert f"{job_id}: completed: requested 2, created 2" in out
    job = await stored(tmp_path, job_id)
    assert (JobKind.IMPORT, "default", {"team": "crm"}, "nightly") == (job.kind, job.account, dict(job.labels),
                                                                       job.batch)


async def test_a_failed_import_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--wait exits 1 when the job ends other than completed."""
    async with FakeSendGrid() as fake:
        fake.set_lifecycle(import_seconds=0.0, import_outcome="failed")
        config = setup(tmp_path, fake)
        assert 1 == await main("import", "-c", str(config), str(tmp_path / "contacts.csv"), "--wait")
    assert ": failed: requested 2" in capsys.readouterr().out


async def test_a_bad_column_is_refused_before_the_import_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown column is exit 2 with the known names; the fake saw only the field definitions read."""
    async with FakeSendGrid() as fake:
        config = setup(tmp_path, fake)
        (tmp_path / "contacts.csv").write_text("email,shoe_size\na@example.com,42\n", encoding="utf-8")
        assert 2 == await main("import", "-c", str(config), str(tmp_path / "contacts.csv"))
        assert {"GET /v3/marketing/field_definitions": 1} == dict(fake.requests_by_route)
    err = capsys.readouterr().err
    assert "unknown column 'shoe_size'" in err and "favorite_color" in err and 1 == len(err.strip().splitlines())


async def test_a_refused_key_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SendGrid refusing the key is one line on stderr, exit 1, and no import is started."""
    async with FakeSendGrid() as fake:
        config = setup(tmp_path, fake)
        fake.refuse_key(status=403)
        code = await main("import", "-c", str(config), str(tmp_path / "contacts.csv"))
        assert {} == dict(fake.imports.uploads)
    err = capsys.readouterr().err
    assert 1 == code, err
    assert "import-watcher: SendGrid refused the API key (HTTP 403)" in err and 1 == len(err.strip().splitlines())


async def test_with_a_daemon_the_job_goes_through_its_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With server: configured, the job is POSTed to /jobs with the token, kind and account, and --wait reads
    GET /jobs/{id} until its state ends."""
    posted: list[tuple[str, dict[str, Any]]] = []
    views = [{"state": "watching", "status": "pending", "results": {}},
             {"state": "completed", "status": "completed", "results": {"requested_count": 2}}]

    async def add(request: web.Request) -> web.Response:
        posted.append((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"id": posted[-1][1]["id"], "state": "watching"}, status=202)

    async def get(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], **views.pop(0)})

    app = web.Application()
    app.router.add_post("/jobs", add)
    app.router.add_get("/jobs/{id}", get)
    runner, port = await serve_app(app)
    token = "t" * 32
    try:
        async with FakeSendGrid() as fake:
            config = setup(tmp_path, fake, extra=f"server:\n  listen: 127.0.0.1:{port}\n  token: {token}\n")
            assert 0 == await main("import", "-c", str(config), str(tmp_path / "contacts.csv"), "--wait")
            (upload,) = fake.imports.uploads.values()
    finally:
        await runner.cleanup()
    ((auth, message),) = posted
    assert f"Bearer {token}" == auth
    assert {"id": upload.job_id, "labels": {}, "batch": None, "kind": "import", "account": "default"} == message
    assert await stored(tmp_path, upload.job_id) is None  # the daemon's, not the store's directly
    assert "requested 2" in capsys.readouterr().out
