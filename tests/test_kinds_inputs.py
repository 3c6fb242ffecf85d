"""A job's kind and account arrive from every input (job file, queue message, POST /jobs, `add`) and
show in `status --json` / GET /jobs; an id already tracked as another kind is never changed."""

from __future__ import annotations

import argparse
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import make_config
from tests.serving import api_headers, serving_api
from watcher.cli_commands import store_command
from watcher.clock import ManualClock
from watcher.models import JobKind, JobRef
from watcher.policy import PollPolicy
from watcher.sources.base import Intake, parse_job
from watcher.sources.file import FileSource
from watcher.sources.redis import read_entry
from watcher.store.sqlite import SqliteStore


def test_job_messages_take_an_optional_kind_and_account() -> None:
    """Absent or null: an import of the default account; a bad kind or account is one clear ValueError."""
    assert (JobKind.IMPORT, None) == ((ref := parse_job({"id": "a", "kind": None, "account": None})).kind, ref.account)
    assert JobRef("b", kind=JobKind.EXPORT, account="eu-brand") == parse_job(
        {"id": "b", "kind": "export", "account": "eu-brand"})
    assert JobRef("c", kind=JobKind.EXPORT) == read_entry({b"job": b'{"id": "c", "kind": "export"}'})
    with pytest.raises(ValueError, match="invalid kind 'backup': expected import or export"):
        parse_job({"id": "d", "kind": "backup"})
    with pytest.raises(ValueError, match="invalid account name 'eu brand'"):
        parse_job({"id": "d", "account": "eu brand"})
    with pytest.raises(ValueError, match="invalid kind 1"):
        parse_job({"id": "d", "kind": 1})


async def test_the_file_source_stores_each_jobs_kind_and_account(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    try:
        path = tmp_path / "jobs.yaml"
        path.write_text("jobs: [i-1, {id: e-1, kind: export, account: eu-brand}]\n", encoding="utf-8")
        await FileSource(path, Intake(store, PollPolicy(), ManualClock(1_764_000_000.0), [])).start()
        jobs = {job.id: (job.kind, job.account) for job in await store.list_jobs()}
    finally:
        await store.close()
    assert {"i-1": (JobKind.IMPORT, None), "e-1": (JobKind.EXPORT, "eu-brand")} == jobs


async def test_post_jobs_takes_kind_and_account_and_the_views_show_them() -> None:
    """POST /jobs stores the kind and account; GET /jobs/{id} and GET /jobs show them; a bad kind
    is a 400 saying why; an export posted again keeps its kind."""
    async with serving_api() as (server, host), aiohttp.ClientSession(headers=api_headers()) as http:
        body = {"id": "api-e", "kind": "export", "account": "eu-brand"}
        async with http.post(f"{server.url}/jobs", json=body) as response:
            created = (response.status, await response.json())
        async with http.post(f"{server.url}/jobs", json={"id": "api-e"}) as response:
            again = (response.status, await response.json())
        async with http.get(f"{server.url}/jobs") as response:
            listed = await response.json()
        async with http.post(f"{server.url}/jobs", json={"id": "api-x", "kind": "backup"}) as response:
            refused = (response.status, await response.json())
        stored = await host.store.get_job("api-e")
    assert (202, "export", "eu-brand") == (created[0], created[1]["kind"], created[1]["account"])
    assert (200, "export") == (again[0], again[1]["kind"])
    assert [("api-e", "export", "eu-brand")] == [(j["id"], j["kind"], j["account"]) for j in listed]
    assert (400, {"error": "invalid_job", "message": "invalid kind 'backup': expected import or export"}) == refused
    assert stored is not None and JobKind.EXPORT is stored.kind


def _args(job_id: str, **options: object) -> argparse.Namespace:
    return argparse.Namespace(command="add", job_id=job_id, label=[], notify=None, again=False, batch=None, **options)


async def test_add_with_kind_and_account_and_a_clash_with_the_known_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`add --kind export --account NAME` stores both; an unknown account is refused before anything is
    stored; adding a tracked import's id as an export says so (exit 1) and changes nothing."""
    config = make_config(tmp_path, f"sendgrid:\n  api_key: SG.cli-secret-key\nstate:\n"
                                   f"  url: sqlite:///{tmp_path}/state.db\nnotifiers:\n  out: {{type: console}}\n")
    account = next(iter(config.accounts))
    assert 0 == await store_command(config, _args("cli-e", kind="export", account=account), 0.0)
    assert 0 == await store_command(config, _args("cli-i"), 0.0)
    with pytest.raises(ValueError, match="unknown account 'elsewhere'"):
        await store_command(config, _args("cli-x", kind="export", account="elsewhere"), 0.0)
    with pytest.raises(ValueError, match="--kind: invalid kind 'backup'"):
        await store_command(config, _args("cli-y", kind="backup"), 0.0)
    assert 1 == await store_command(config, _args("cli-i", kind="export"), 0.0)
    assert 0 == await store_command(config, _args("cli-e", kind="export", account=account), 0.0)
    err = capsys.readouterr()
    assert "import-watcher: cli-i: already tracked as an import; nothing changed\n" == err.err
    assert ["cli-e: now watching", "cli-i: now watching", "cli-e: already tracked"] == err.out.splitlines()
    store = SqliteStore(f"{tmp_path}/state.db")
    await store.open()
    try:
        jobs = {job.id: (job.kind.value, job.account) for job in await store.list_jobs()}
    finally:
        await store.close()
    assert {"cli-e": ("export", account), "cli-i": ("import", None)} == jobs
