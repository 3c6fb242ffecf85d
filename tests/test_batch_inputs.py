"""A job joins a batch from every input: the job file (per entry or for the file), the API, the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.serving import api_headers, serving_api
from watcher.cli import main
from watcher.clock import ManualClock
from watcher.models import JobRef
from watcher.policy import PollPolicy
from watcher.sources.base import Intake
from watcher.sources.file import FileSource, load_job_file
from watcher.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
NAME_RULE = "expected 1 to 128 characters of A-Z a-z 0-9 - _ . :"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_file_batch_applies_to_every_job_and_an_entry_batch_wins(tmp_path: Path) -> None:
    """A top-level `batch:` puts every job in it; an entry's own `batch` overrides it, and null keeps the file's."""
    path = write(tmp_path / "jobs.yaml", "batch: nightly-2026-11-27\njobs:\n  - bare-1\n  - id: own-1\n"
                 "    batch: 'migration:wave.2'\n  - id: null-1\n    batch: null\n  - {id: labelled-1, labels: {a: b}}\n")
    refs, problems = load_job_file(path)
    assert [] == problems
    assert [
        JobRef("bare-1", batch="nightly-2026-11-27"),
        JobRef("own-1", batch="migration:wave.2"),
        JobRef("null-1", batch="nightly-2026-11-27"),
        JobRef("labelled-1", {"a": "b"}, batch="nightly-2026-11-27"),
    ] == refs


def test_without_a_file_batch_jobs_have_none(tmp_path: Path) -> None:
    """A job file without `batch:` gives batch-less jobs, except entries naming one."""
    path = write(tmp_path / "jobs.yaml", "jobs:\n  - plain-1\n  - {id: mine-1, batch: b-1}\n")
    refs, _ = load_job_file(path)
    assert [None, "b-1"] == [ref.batch for ref in refs]


def test_invalid_batches_are_located_problems(tmp_path: Path) -> None:
    """An entry's bad batch is FILE:LINE: jobs[i].batch: message; the rest of the file still loads."""
    path = write(tmp_path / "jobs.yaml", "jobs:\n  - ok-1\n  - id: spaced-1\n    batch: 'a b'\n"
                 "  - id: dated-1\n    batch: 2026-11-27\n  - id: long-1\n    batch: " + "x" * 129 + "\n")
    refs, problems = load_job_file(path)
    assert ["ok-1"] == [ref.id for ref in refs]
    assert [
        f"{path}:4: jobs[1].batch: invalid batch name 'a b': {NAME_RULE}",
        f"{path}:6: jobs[2].batch: a batch name must be a string, got 2026-11-27: quote it, e.g. '2026-11-27'",
        f"{path}:8: jobs[3].batch: invalid batch name '{'x' * 76}...: {NAME_RULE}",
    ] == problems


def test_an_invalid_file_batch_refuses_the_file(tmp_path: Path) -> None:
    """A bad top-level `batch:` is located on its line and no job is taken (each would land outside its batch)."""
    path = write(tmp_path / "jobs.yaml", "jobs:\n  - ok-1\nbatch: 42\n")
    other = write(tmp_path / "other.yaml", "jobs: [ok-1]\nbatches: b-1\n")
    assert ([], [f"{path}:3: batch: a batch name must be a string, got 42: quote it, e.g. '42'"]) == load_job_file(path)
    expected = "expected a mapping with the key `jobs:` holding a list (and optionally `batch:`)"
    assert ([], [f"{other}:1: {expected}"]) == load_job_file(other)


async def test_the_file_source_stores_jobs_in_their_batch(tmp_path: Path) -> None:
    """Jobs read from a job file with `batch:` are stored in it and counted by the batch (SQLite)."""
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    try:
        path = write(tmp_path / "jobs.yaml", "batch: sync-1\njobs: [f-1, f-2, {id: f-3, batch: sync-2}]\n")
        await FileSource(path, Intake(store, PollPolicy(), ManualClock(1_764_000_000.0), [])).start()
        jobs = {job.id: job.batch for job in await store.list_jobs()}
        one, two = await store.get_batch("sync-1"), await store.get_batch("sync-2")
    finally:
        await store.close()
    assert {"f-1": "sync-1", "f-2": "sync-1", "f-3": "sync-2"} == jobs
    assert (2, 1) == (one.jobs if one else None, two.jobs if two else None)


@pytest.mark.parametrize(("batch", "message"), [
    ("a b", f"`batch`: invalid batch name 'a b': {NAME_RULE}"),
    ("", f"`batch`: invalid batch name '': {NAME_RULE}"),
    (7, "`batch`: a batch name must be a string, got 7: quote it, e.g. '7'"),
    (["b"], f"`batch`: invalid batch name ['b']: {NAME_RULE}"),
])
async def test_the_api_refuses_an_invalid_batch(batch: object, message: str) -> None:
    """POST /jobs with a `batch` that is not a name is a JSON 400 `invalid_batch` saying why; nothing is stored."""
    async with serving_api() as (server, host), aiohttp.ClientSession(headers=api_headers()) as http:
        async with http.post(f"{server.url}/jobs", json={"id": "api-1", "batch": batch}) as response:
            answer = (response.status, await response.json())
        stored = await host.store.get_job("api-1")
    assert ((400, {"error": "invalid_batch", "message": message}), None) == (answer, stored)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_add_batch_through_the_real_command(tmp_path: Path) -> None:
    """`add --batch` stores the job in the batch; an invalid name is one line on stderr with exit 2, nothing stored."""
    config = write(tmp_path / "config.yaml", f"sendgrid:\n  api_key: SG.cli-secret-key\nstate:\n"
                   f"  url: sqlite:///{tmp_path}/state.db\nnotifiers:\n  out: {{type: console}}\n")
    added = cli("add", "-c", str(config), "cli-1", "--batch", "nightly:1")
    refused = cli("add", "-c", str(config), "cli-2", "--batch", "no/slash")

    async def read() -> tuple[str | None, bool]:
        store = SqliteStore(f"{tmp_path}/state.db")
        await store.open()
        try:
            job, other = await store.get_job("cli-1"), await store.get_job("cli-2")
            return (job.batch if job else None), other is None
        finally:
            await store.close()

    assert (0, "cli-1: now watching\n") == (added.returncode, added.stdout)
    assert (2, f"import-watcher: --batch: invalid batch name 'no/slash': {NAME_RULE}\n") == (
        refused.returncode, refused.stderr)
    assert ("nightly:1", True) == asyncio.run(read())


def test_check_reports_batch_problems_of_job_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`import-watcher check` lists a job file's invalid batch with its line and exits 2."""
    jobs = write(tmp_path / "jobs.yaml", "batch: 'bad batch'\njobs: [j-1]\n")
    config = write(tmp_path / "config.yaml", f"sendgrid:\n  api_key: SG.cli-secret-key\nstate:\n"
                   f"  url: sqlite:///{tmp_path}/state.db\nsources:\n  - type: file\n    path: {jobs}\n")
    assert 2 == main(["check", "-c", str(config)])
    assert [f"{jobs}:1: batch: invalid batch name 'bad batch': {NAME_RULE}"] == capsys.readouterr().err.splitlines()
