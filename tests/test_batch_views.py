"""Batches wherever jobs are visible: GET /batches, GET /batches/{name}, GET /jobs?batch=, `status --batch`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.serving import ApiHost, api_headers, bearer, serving_api
from watcher.cli import main
from watcher.clock import ManualClock
from watcher.models import JobRef, Outcome, Snapshot
from watcher.store.base import StateStore
from watcher.store.redis import RedisStore
from watcher.store.sqlite import SqliteStore

BATCH = "nightly:2026-11-27.v1"
LINK = re.compile(r'<(/batches\?[^>]+)>; rel="next"')
T0 = 1_764_000_000.0


async def add_jobs(host: ApiHost, refs: Sequence[JobRef]) -> None:
    """Add jobs one by one, a moment apart: added_at orders them."""
    assert isinstance(host.clock, ManualClock)
    for ref in refs:
        await host.intake.add(ref)
        host.clock.advance(0.001)


async def finish(store: StateStore, job_id: str, outcome: Outcome, now: float, **results: Any) -> None:
    """Claim a job and record its outcome with these SendGrid results, as the engine does."""
    claimed = {job.id: job for job in await store.claim_due_jobs(now=now, limit=100, owner="t", lease=30)}
    for other in claimed.values():  # the others go back untouched
        if other.id != job_id and other.lease is not None:
            await store.release_job(other.id, token=other.lease.token)
    lease = claimed[job_id].lease
    assert lease is not None
    snapshot = Snapshot(status=outcome.value, results=results)
    assert await store.record_outcome(job_id, token=lease.token, now=now, outcome=outcome,
                                      snapshot=snapshot, polls=1, detected_at=now, deliveries=[])


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any, Any]:
    async with http.get(url, params=params) as response:
        return response.status, await response.json(), response.headers


async def shown_batch(store: StateStore | None) -> dict[str, Any]:
    """GET /batches/{name} of a batch of three jobs, two of them final with their counts, over `store`."""
    async with serving_api(store, clock=ManualClock(T0)) as (server, host), \
            aiohttp.ClientSession(headers=bearer()) as http:
        await add_jobs(host, [JobRef(f"b-{i}", batch=BATCH) for i in range(3)] + [JobRef("alone-1")])
        later = T0 + 60
        await finish(host.store, "b-0", Outcome.COMPLETED, later, requested_count=10, created_count=7,
                     updated_count=3, errored_count=0)
        await finish(host.store, "b-1", Outcome.ERRORED, later, requested_count=5, created_count=1,
                     errored_count=4, deleted_count=0.0)
        status, batch, _ = await get(http, f"{server.url}/batches/{BATCH}")
    assert 200 == status
    return dict(batch)


SHOWN = {
    "name": BATCH, "state": "open", "jobs": 3, "final": 2, "status": "errored",
    "outcomes": {"completed": 1, "errored": 1},
    "totals": {"requested_count": 15, "created_count": 8, "updated_count": 3, "deleted_count": 0, "errored_count": 4},
    "started_at": "2025-11-24T16:00:00Z", "finished_at": None,
}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_batch_shows_its_progress_outcomes_and_summed_totals(tmp_path: Path, kind: str) -> None:
    """GET /batches/{name} answers state, jobs, final, worst status, outcomes and totals summed from its jobs."""
    assert SHOWN == await shown_batch(SqliteStore(str(tmp_path / "state.db")) if kind == "sqlite" else None)


async def test_a_batch_on_redis_shows_the_same(redis_url: str, redis_prefix: str) -> None:
    """The same batch kept in Redis is shown the same way."""
    assert SHOWN == await shown_batch(RedisStore(redis_url, prefix=redis_prefix))


async def test_unknown_and_invalid_batch_names_are_json_errors() -> None:
    """An unknown batch is a 404 `batch_not_found`; a name that is not one a 400 `invalid_batch`, both JSON."""
    async with serving_api() as (server, _), aiohttp.ClientSession(headers=bearer()) as http:
        unknown = await get(http, f"{server.url}/batches/never-seen")
        invalid = await get(http, f"{server.url}/batches/{'x' * 129}")
        spaced = await get(http, f"{server.url}/batches/a%20b")
        bad_filter = await get(http, f"{server.url}/jobs", batch="a b")
    assert (404, "batch_not_found") == (unknown[0], unknown[1]["error"])
    for status, body, _ in (invalid, spaced, bad_filter):
        assert (400, "invalid_batch") == (status, body["error"])
    assert "invalid batch name 'a b'" in spaced[1]["message"]


async def test_batches_page_by_cursor_and_filter_by_state() -> None:
    """GET /batches pages oldest first through the Link header, visiting every batch once; `state` filters."""
    names = ["z" * 128] + [f"nightly-{i:02d}" for i in range(6)]  # the longest name still fits a cursor
    async with serving_api(clock=ManualClock(T0)) as (server, host), \
            aiohttp.ClientSession(headers=bearer()) as http:
        await add_jobs(host, [JobRef(f"job-{i}", batch=name) for i, name in enumerate(names)])
        seen: list[str] = []
        url: str | None = f"{server.url}/batches?limit=1"
        while url is not None:
            async with http.get(url) as response:
                assert 200 == response.status
                seen += [batch["name"] for batch in await response.json()]
                link, cursor = response.headers.get("Link"), response.headers.get("X-Next-Cursor")
            match = LINK.fullmatch(link or "")
            assert (match is None, True) == (cursor is None, match is None or f"after={cursor}" in match[1])
            url = f"{server.url}{match[1]}" if match else None
        finished = await get(http, f"{server.url}/batches", state="finished")
        bad_state = await get(http, f"{server.url}/batches", state="settling")
        bad_cursor = await get(http, f"{server.url}/batches", after="not-a-cursor")
    assert names == seen
    assert (200, []) == finished[:2]
    assert (400, "invalid_state") == (bad_state[0], bad_state[1]["error"])
    assert (400, "invalid_cursor") == (bad_cursor[0], bad_cursor[1]["error"])


async def test_jobs_filter_by_batch_with_paging_and_state() -> None:
    """GET /jobs?batch= lists only that batch's jobs, pages them with the filter kept in the link, and takes `state`."""
    async with serving_api(clock=ManualClock(T0)) as (server, host), \
            aiohttp.ClientSession(headers=bearer()) as http:
        await add_jobs(host, [JobRef(f"in-{i}", batch=BATCH) for i in range(5)] + [JobRef("out-1", batch="other")])
        await finish(host.store, "in-3", Outcome.FAILED, T0 + 60)
        first = await get(http, f"{server.url}/jobs", batch=BATCH, limit="2")
        second = await get(http, f"{server.url}/jobs", batch=BATCH, limit="2", after=first[2]["X-Next-Cursor"])
        failed = await get(http, f"{server.url}/jobs", batch=BATCH, state="failed")
        nothing = await get(http, f"{server.url}/jobs", batch="no-such-batch")
    assert ["in-0", "in-1"] == [job["id"] for job in first[1]]
    assert f"batch={BATCH.replace(':', '%3A')}" in first[2]["Link"]
    assert ["in-2", "in-3"] == [job["id"] for job in second[1]]
    assert [("in-3", BATCH)] == [(job["id"], job["batch"]) for job in failed[1]]
    assert (200, []) == nothing[:2]


async def test_job_views_carry_their_batch_and_post_takes_one() -> None:
    """POST /jobs with `batch` stores it; GET /jobs shows `batch` on every job (null outside one)."""
    async with serving_api() as (server, _), aiohttp.ClientSession(headers=api_headers()) as http:
        async with http.post(f"{server.url}/jobs", json={"id": "api-1", "batch": BATCH}) as response:
            added = (response.status, (await response.json())["batch"])
        async with http.post(f"{server.url}/jobs", json={"id": "api-2", "batch": None}) as response:
            plain = (response.status, (await response.json())["batch"])
        status, jobs, _ = await get(http, f"{server.url}/jobs")
        batch = await get(http, f"{server.url}/batches/{BATCH}")
    assert ((202, BATCH), (202, None), 200) == (added, plain, status)
    assert {"api-1": BATCH, "api-2": None} == {job["id"]: job["batch"] for job in jobs}
    assert 1 == batch[1]["jobs"]


async def test_batch_routes_need_the_token_and_a_browser_gets_the_page() -> None:
    """Both batch routes answer 401 without the token; a browser opening a batch link gets the status page."""
    async with serving_api() as (server, host), aiohttp.ClientSession() as http:
        await host.intake.add(JobRef("t-1", batch=BATCH))
        async with http.get(f"{server.url}/batches") as listed, http.get(f"{server.url}/batches/{BATCH}") as one:
            refused = (listed.status, one.status)
        browser = {**bearer(), "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        async with http.get(f"{server.url}/batches/{BATCH}", headers=browser) as page:
            opened = (page.status, page.content_type, "<title>import-watcher</title>" in await page.text())
    assert (401, 401) == refused
    assert (200, "text/html", True) == opened


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"sendgrid:\n  api_key: SG.cli-secret-key\nstate:\n  url: sqlite:///{tmp_path}/state.db\n"
                    f"notifiers:\n  out: {{type: console}}\nheartbeat_file: {tmp_path}/hb\n", encoding="utf-8")
    return path


def test_status_batch_prints_the_batch_line_and_its_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --batch` prints one line for the batch and a table of its jobs; `--json` the batch with its jobs."""
    config = str(write_config(tmp_path))
    for job_id in ("s-1", "s-2"):
        assert 0 == main(["add", "-c", config, job_id, "--batch", BATCH])
    assert 0 == main(["add", "-c", config, "s-3"])
    capsys.readouterr()
    assert 0 == main(["status", "-c", config, "--batch", BATCH])
    lines = capsys.readouterr().out.splitlines()
    assert 0 == main(["status", "-c", config, "--batch", BATCH, "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert lines[0].startswith(f"batch {BATCH}: open, 0/2 final (none final yet); started ")
    assert ["JOB", "s-1", "s-2"] == [line.split()[0] for line in lines[1:]]
    assert "BATCH" in lines[1]
    assert ({"name": BATCH, "state": "open", "jobs": 2, "final": 0}, ["s-1", "s-2"]) == (
        {k: shown["batch"][k] for k in ("name", "state", "jobs", "final")}, [job["id"] for job in shown["jobs"]])
    assert {"requested_count": 0, "created_count": 0, "updated_count": 0, "deleted_count": 0,
            "errored_count": 0} == shown["batch"]["totals"]


def test_status_batch_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown batch exits 1, an invalid name or a JOB_ID beside --batch exits 2; each one line, no traceback."""
    config = str(write_config(tmp_path))
    answers = []
    for argv in (["--batch", "nope"], ["--batch", "a b"], ["job-1", "--batch", "x"]):
        code = main(["status", "-c", config, *argv])
        answers.append((code, capsys.readouterr().err.splitlines()))
    assert [
        (1, ["import-watcher: batch nope is not known"]),
        (2, ["import-watcher: --batch: invalid batch name 'a b': expected 1 to 128 characters of A-Z a-z 0-9 - _ . :"]),
        (2, ["import-watcher: status takes a JOB_ID or --batch NAME, not both"]),
    ] == answers
