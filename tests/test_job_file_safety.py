"""Job files are data: no environment read through them, only small regular files, clear answers for odd values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.clock import ManualClock
from watcher.policy import PollPolicy
from watcher.sources.base import Intake, parse_job, parse_job_request
from watcher.sources.file import FileSource, load_job_file
from watcher.store import MemoryStore
from watcher.yamlloc import JOB_FILE_MAX_BYTES


def test_variables_are_not_expanded_in_job_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`${SENDGRID_API_KEY}` in a label stays as written: whoever edits the job file cannot read the key."""
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.the-real-key")
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  - {id: j1, labels: {leak: '${SENDGRID_API_KEY}', price: '$$5'}}\n", encoding="utf-8")
    refs, problems = load_job_file(path)
    assert ([], {"leak": "${SENDGRID_API_KEY}", "price": "$$5"}) == (problems, dict(refs[0].labels))


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "oversized"])
def test_only_small_regular_job_files_are_read(tmp_path: Path, kind: str) -> None:
    """A FIFO, a device, a directory or a file over the cap is one located problem, read at once."""
    path = {"device": Path("/dev/zero"), "directory": tmp_path}.get(kind, tmp_path / "jobs.yaml")
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "oversized":
        with path.open("wb") as out:
            out.truncate(JOB_FILE_MAX_BYTES + 1)  # sparse: no disk used
    refs, [problem] = load_job_file(path)
    why = {"fifo": "not a regular file (a FIFO)", "device": "not a regular file (a character device)",
           "directory": "not a regular file (a directory)", "oversized": "too large"}[kind]
    assert ([], True) == (refs, problem.startswith(f"{path}:1: cannot read the job file: {why}"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("- 12345", "jobs[0]: a job id must be a string, got the number 12345: quote it, e.g. '12345'"),
        ("- {id: 0123}", "jobs[0]: a job id must be a string, got the number 83: quote it, e.g. '12345'"),
        ("- {id: j1, labels: {n: .nan}}", "jobs[0]: `labels` must be a mapping of strings or finite numbers"),
        ("- {id: j1, labels: {n: -.inf}}", "jobs[0]: `labels` must be a mapping of strings or finite numbers"),
        ("- {id: j1, again: true}", "jobs[0]: unknown key 'again' (expected id, labels, notify, batch, kind, account)"),
        ("- {id: j1, labels: {note: " + "x" * 1001 + "}}",
         "jobs[0]: label 'note': a value must be at most 1000 characters, got 1001"),
        ("- {id: j1, labels: {" + "k" * 101 + ": v}}", "jobs[0]: a label name must be 1 to 100 characters, got 101"),
        ("- {id: j1, labels: {" + ", ".join(f"k{i}: v" for i in range(65)) + "}}",
         "jobs[0]: at most 64 labels per job, got 65"),
    ],
)
def test_odd_job_entries_are_located_problems(tmp_path: Path, line: str, message: str) -> None:
    """Numeric ids get a hint to quote them; NaN and infinite labels, labels past their bounds (every
    notification carries them: PagerDuty refuses an event over 512 KB) and `again` are refused."""
    path = tmp_path / "jobs.yaml"
    path.write_text(f"jobs:\n  {line}\n", encoding="utf-8")
    assert ([], [f"{path}:2: {message}"]) == load_job_file(path)


def test_queue_and_api_bodies_refuse_what_json_cannot_carry() -> None:
    """NaN, Infinity and lone surrogates are ValueErrors (a 400 or a dead letter), never a crash later."""
    for raw in ({"id": "j1", "labels": {"n": float("nan")}}, {"id": "j1", "labels": {"n": float("inf")}},
                {"id": "j1", "labels": {"k": "\ud800"}}, {"id": "j1", "labels": {"\udcff": "v"}},
                {"id": "j1", "notify": ["\ud800"]}, {"id": 12345}, 12345):
        with pytest.raises(ValueError, match=r"finite numbers|valid Unicode|notifier names|quote it"):
            parse_job(raw)
    assert ("7", "1.5") == tuple(parse_job({"id": "j1", "labels": {"a": 7, "b": 1.5}}).labels.values())


def test_again_is_for_the_api_only() -> None:
    """parse_job_request returns `again` apart (boolean only); parse_job refuses it."""
    ref, again = parse_job_request({"id": "j1", "again": True})
    assert ("j1", True) == (ref.id, again)
    assert ("j1", False) == (parse_job_request("j1")[0].id, parse_job_request("j1")[1])
    with pytest.raises(ValueError, match="`again` must be true or false"):
        parse_job_request({"id": "j1", "again": "yes"})
    with pytest.raises(ValueError, match="unknown key 'again'"):
        parse_job({"id": "j1", "again": True})


async def test_a_job_removed_from_the_file_keeps_being_watched(tmp_path: Path) -> None:
    """Deleting a line from the job file neither stops nor forgets its job: only DELETE stops one."""
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n  - keep-1\n  - drop-1\n", encoding="utf-8")
    store = MemoryStore()
    await store.open()
    source = FileSource(path, Intake(store, PollPolicy(), ManualClock(), []))
    await source.start()
    path.write_text("jobs:\n  - keep-1\n  - new-1\n", encoding="utf-8")
    await source.refresh(force=True)
    jobs = {job.id: job.state for job in await store.list_jobs()}
    assert {"keep-1": "watching", "drop-1": "watching", "new-1": "watching"} == jobs
    assert {} == dict(await store.tombstones(["drop-1"]))
