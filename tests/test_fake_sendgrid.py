"""The fake SendGrid answers like the real API, over real HTTP on loopback."""


from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from watcher.clock import ManualClock
from watcher.testing.fake_sendgrid import FakeSendGrid, serve

KEY = "SG.fake-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMPORTS = "/v3/marketing/contacts/imports"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeSendGrid]:
    async with FakeSendGrid(clock=clock) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def get_job(http: aiohttp.ClientSession, fake: FakeSendGrid, job_id: str,
                  **kwargs: Any) -> tuple[int, Any]:
    async with http.get(f"{fake.base_url}{IMPORTS}/{job_id}", **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def test_wrong_or_missing_key_gets_the_401_body(fake: FakeSendGrid) -> None:
    """A request without a known bearer key gets 401 with SendGrid's error body."""
    fake.script_job("job-1")
    expected = {"errors": [{"field": None, "message": "authorization required"}]}
    async with aiohttp.ClientSession() as anonymous:
        for headers in ({}, {"Authorization": "Bearer SG.other"}, {"Authorization": KEY}):
            async with anonymous.get(f"{fake.base_url}{IMPORTS}/job-1", headers=headers) as r:
                assert (401, expected) == (r.status, await r.json())


async def test_refused_key_gets_403(fake: FakeSendGrid, http: aiohttp.ClientSession) -> None:
    """refuse_key(status=403) refuses even a valid key until it is lifted."""
    fake.script_job("job-1")
    fake.refuse_key(status=403)
    expected = {"errors": [{"field": None, "message": "access forbidden"}]}
    assert (403, expected) == await get_job(http, fake, "job-1")
    fake.refuse_key(False)
    assert 200 == (await get_job(http, fake, "job-1"))[0]


async def test_unknown_id_gets_the_404_body(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """An id nobody scripted is 404 with the ErrorResponse shape."""
    status, body = await get_job(http, fake, "nope")
    assert (404, "job not found") == (status, body["errors"][0]["message"])
    assert {"field", "message"} == set(body["errors"][0])


async def test_scripted_job_is_pending_then_completed(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A job is pending for `pending_for` clock seconds, then completed with its counts."""
    fake.script_job("job-1", pending_for=30, requested=10, updated=3)
    status, body = await get_job(http, fake, "job-1")
    assert (200, "pending", "upsert") == (status, body["status"], body["job_type"])
    assert "finished_at" not in body
    clock.advance(30)
    _, body = await get_job(http, fake, "job-1")
    assert "completed" == body["status"]
    assert {"requested_count": 10, "created_count": 7, "updated_count": 3, "deleted_count": 0,
            "errored_count": 0} == body["results"]
    assert "2027-01-15T08:00:00Z" == body["started_at"]
    assert "2027-01-15T08:00:30Z" == body["finished_at"]
    assert 2 == fake.polls["job-1"]


async def test_errored_job_serves_its_errors_csv(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """An errored job links an errors CSV holding the scripted rows."""
    rows = [("bad-at-example.com", "invalid email"), ("", "email is required")]
    fake.script_job("job-1", outcome="errored", requested=5, error_rows=rows)
    _, body = await get_job(http, fake, "job-1")
    assert ("errored", 2, 3) == (body["status"], body["results"]["errored_count"],
                                 body["results"]["created_count"])
    url = body["results"]["errors_url"]
    assert f"{fake.base_url}/_errors/job-1.csv" == url
    async with aiohttp.ClientSession() as plain, plain.get(url) as response:
        assert "text/csv" == response.content_type
        text = await response.text()
    assert [["email", "error"], *map(list, rows)] == list(csv.reader(io.StringIO(text)))


async def test_failed_job_defaults_every_row_to_errored(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """A failed job's counts default to every row errored, with an errors_url."""
    fake.script_job("job-1", outcome="failed", requested=4)
    _, body = await get_job(http, fake, "job-1")
    assert ("failed", 4, 0) == (body["status"], body["results"]["errored_count"],
                                body["results"]["created_count"])
    async with aiohttp.ClientSession() as plain, plain.get(body["results"]["errors_url"]) as r:
        assert 5 == len((await r.text()).splitlines())


async def test_errors_url_expires_after_its_ttl(
    fake: FakeSendGrid, clock: ManualClock
) -> None:
    """With errors_url_ttl set, the errors CSV is 403 once the link is older than the ttl."""
    fake.errors_url_ttl = 60
    fake.script_job("job-1", outcome="errored")
    async with aiohttp.ClientSession() as plain:
        url = f"{fake.base_url}/_errors/job-1.csv"
        async with plain.get(url) as response:
            assert 200 == response.status
        clock.advance(61)
        async with plain.get(url) as response:
            assert 403 == response.status


async def test_status_override_is_served_verbatim(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """status_override replaces the status string once the job is due."""
    fake.script_job("job-1", status_override="Completed")
    assert "Completed" == (await get_job(http, fake, "job-1"))[1]["status"]


async def test_job_is_404_until_visible(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """visible_after keeps a fresh job 404 for that long, like SendGrid's eventual visibility."""
    fake.script_job("job-1", visible_after=5)
    assert 404 == (await get_job(http, fake, "job-1"))[0]
    clock.advance(5)
    assert 200 == (await get_job(http, fake, "job-1"))[0]


async def test_rate_limit_headers_and_429(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """Every response carries X-RateLimit-*; past the limit the answer is 429 until Reset."""
    clock.advance(0.25)
    async with FakeSendGrid(clock=clock, rate_limit=2, rate_window=1.0) as fake:
        fake.script_job("job-1")
        url = f"{fake.base_url}{IMPORTS}/job-1"
        seen = []
        for _ in range(3):
            async with http.get(url) as r:
                seen.append((r.status, r.headers["x-ratelimit-remaining"], await r.json()))
                reset = r.headers["X-RateLimit-Reset"]
                assert "2" == r.headers["X-RateLimit-Limit"]
        assert [200, 429] == [seen[1][0], seen[2][0]]
        assert ["1", "0", "0"] == [remaining for _, remaining, _ in seen]
        assert {"errors": [{"field": None, "message": "too many requests"}]} == seen[2][2]
        assert str(math.ceil(clock.now())) == reset
        assert 1 == fake.responses_by_status[429]
        clock.advance(1)
        assert 200 == (await get_job(http, fake, "job-1"))[0]


async def test_put_contacts_creates_a_job_that_completes(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """PUT contacts answers 202 {job_id}; the job errors one row per contact without email."""
    contacts = [{"email": "a@example.com"}, {"first_name": "no identifier"}, {"email": "b@x.io"}]
    async with http.put(f"{fake.base_url}/v3/marketing/contacts",
                        json={"contacts": contacts}) as response:
        assert 202 == response.status
        job_id = (await response.json())["job_id"]
    assert "pending" == (await get_job(http, fake, job_id))[1]["status"]
    clock.advance(fake.default_pending_for)
    _, body = await get_job(http, fake, job_id)
    assert ("errored", 3, 2, 1) == (body["status"], body["results"]["requested_count"],
                                    body["results"]["created_count"],
                                    body["results"]["errored_count"])


async def test_delete_contacts_creates_a_delete_job(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """DELETE contacts?ids= answers 202 {job_id} for a delete job; neither parameter is 400."""
    async with http.delete(f"{fake.base_url}/v3/marketing/contacts?ids=a,b,c") as response:
        assert 202 == response.status
        job_id = (await response.json())["job_id"]
    clock.advance(fake.default_pending_for)
    _, body = await get_job(http, fake, job_id)
    assert ("completed", "delete", 3) == (body["status"], body["job_type"],
                                          body["results"]["deleted_count"])
    async with http.delete(f"{fake.base_url}/v3/marketing/contacts") as response:
        assert 400 == response.status


async def test_csv_import_waits_for_its_upload(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """An import is pending until its gzip CSV is uploaded, then counts rows by field_mappings."""
    async with http.put(f"{fake.base_url}{IMPORTS}",
                        json={"file_type": "csv", "field_mappings": [None, "_rf2_T"]}) as r:
        created = await r.json()
    assert [{"header": "Content-Encoding", "value": "gzip"}, {"header": "Content-Type", "value": "text/csv"},
            {"header": "x-amz-server-side-encryption", "value": "aws:kms"}] == created["upload_headers"]
    clock.advance(3600)
    assert "pending" == (await get_job(http, fake, created["job_id"]))[1]["status"]
    csv_body = b"name,mail\nA,a@example.com\nB,not-an-email\nC,c@example.com\n"
    headers = {h["header"]: h["value"] for h in created["upload_headers"]}
    async with aiohttp.ClientSession() as plain, plain.put(
        created["upload_uri"], data=gzip.compress(csv_body), headers=headers
    ) as r:
        assert 200 == r.status
    clock.advance(fake.lifecycle.import_seconds)
    _, body = await get_job(http, fake, created["job_id"])
    assert ("errored", 3, 2, 1) == (body["status"], body["results"]["requested_count"],
                                    body["results"]["created_count"],
                                    body["results"]["errored_count"])


async def test_control_endpoints_script_and_report(fake: FakeSendGrid,
                                                   http: aiohttp.ClientSession) -> None:
    """Another process can script jobs, faults and key refusal, read stats and reset, over HTTP."""
    control = f"{fake.base_url}/_control"
    async with aiohttp.ClientSession() as plain:
        job = {"id": "job-1", "outcome": "errored", "error_rows": [["x", "invalid email"]]}
        async with plain.post(f"{control}/jobs", json=job) as r:
            assert 201 == r.status
        assert "errored" == (await get_job(http, fake, "job-1"))[1]["status"]
        async with plain.post(f"{control}/refuse_key", json={"status": 401}):
            assert 401 == (await get_job(http, fake, "job-1"))[0]
        async with plain.post(f"{control}/faults", json={"error_rate": 1.0}):
            pass
        async with plain.post(f"{control}/refuse_key", json={"refused": False}):
            assert 500 == (await get_job(http, fake, "job-1"))[0]
        async with plain.get(f"{control}/stats") as r:
            stats = await r.json()
        assert {"latency": 0.0, "polls": {"job-1": 3}, "requests_total": 3,
                "responses_by_status": {"200": 1, "401": 1, "500": 1},
                "requests_by_route": {"GET /v3/marketing/contacts/imports/{id}": 3},
                "max_concurrent_per_job": {"job-1": 1}, "uploads": [], "exports": 0,
                "contacts_dropped": 0} == stats
        async with plain.post(f"{control}/jobs", json={"id": "j", "bogus": 1}) as r:
            assert 400 == r.status
        async with plain.post(f"{control}/reset"):
            assert 404 == (await get_job(http, fake, "job-1"))[0]


async def test_error_rate_answers_500_with_the_spec_body(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """error_rate=1 answers every request 500 with {"errors":[{"message"}]}."""
    fake.script_job("job-1")
    fake.set_faults(error_rate=1.0)
    assert (500, {"errors": [{"message": "internal server error"}]}) == await get_job(
        http, fake, "job-1")


async def test_malformed_rate_answers_unusable_200s(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """malformed_rate=1 answers 200 with a body that is not a well-typed ContactImport object."""
    fake.script_job("job-1")
    fake.set_faults(malformed_rate=1.0, seed=7)
    for _ in range(10):
        async with http.get(f"{fake.base_url}{IMPORTS}/job-1") as response:
            assert 200 == response.status
            raw = await response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            continue
        assert not isinstance(body, dict) or not isinstance(body.get("status"), str)


async def test_drop_rate_closes_the_connection(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """drop_rate=1 closes the connection without an answer (aiohttp retries a GET once)."""
    fake.script_job("job-1")
    fake.set_faults(drop_rate=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get_job(http, fake, "job-1")
    assert {} == dict(fake.responses_by_status)
    assert fake.polls["job-1"] == fake.requests_total


async def test_timeout_rate_hangs_until_the_client_gives_up(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """timeout_rate=1 never answers, so the client's own timeout fires."""
    fake.script_job("job-1")
    fake.set_faults(timeout_rate=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await get_job(http, fake, "job-1", timeout=aiohttp.ClientTimeout(total=0.05))


async def test_max_concurrent_per_job_sees_overlapping_polls(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """Overlapping GETs of one job raise its max_concurrent_per_job; sequential ones do not."""
    fake.script_job("together")
    fake.script_job("alone")
    fake.set_faults(latency=0.05)
    await asyncio.gather(*(get_job(http, fake, "together") for _ in range(3)))
    for _ in range(2):
        await get_job(http, fake, "alone")
    assert {"together": 3, "alone": 1} == fake.max_concurrent_per_job


async def test_latency_survives_fault_changes_and_lets_polls_overlap(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """A latency set over the control API delays every answer, outlives set_faults, and makes concurrent GETs overlap."""
    fake.script_job("job-1")
    async with aiohttp.ClientSession() as plain:
        async with plain.post(f"{fake.base_url}/_control/latency", json={"seconds": 0.05}) as r:
            assert 200 == r.status
        async with plain.post(f"{fake.base_url}/_control/latency", json={"seconds": -1}) as r:
            assert 400 == r.status
    fake.set_faults(error_rate=0.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.gather(*(get_job(http, fake, "job-1") for _ in range(4)))
    assert loop.time() - began >= 0.05
    assert {"job-1": 4} == fake.max_concurrent_per_job
    fake.reset()
    assert 0.0 == fake.latency


async def test_records_on_behalf_of_and_user_agent(
    fake: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """The last On-Behalf-Of and User-Agent headers are kept for assertions."""
    fake.script_job("job-1")
    await get_job(http, fake, "job-1", headers={"On-Behalf-Of": "sub", "User-Agent": "t/1"})
    assert ("sub", "t/1") == (fake.last_on_behalf_of, fake.last_user_agent)


async def test_serve_reports_its_url_and_stops_when_cancelled() -> None:
    """serve() calls on_ready with the base URL, answers there, and stops when cancelled."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("127.0.0.1", 0, on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, 5)
    async with aiohttp.ClientSession(headers=AUTH) as http, http.get(f"{url}{IMPORTS}/x") as r:
        assert 404 == r.status
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
