"""GET /jobs pages through any number of jobs with an opaque cursor; GET /summary counts them."""

from __future__ import annotations

import base64
import re
import sqlite3
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.contract.test_redis_store import command_calls, redis_server
from tests.serving import ApiHost, bearer, serving_api
from watcher.clock import ManualClock
from watcher.models import Delivery, JobRef, Outcome, Snapshot
from watcher.status import encode_cursor
from watcher.store.redis import RedisStore
from watcher.store.sqlite import SqliteStore

LINK = re.compile(r'^</jobs\?([^>]+)>; rel="next"$')


async def _add(host: ApiHost, ids: list[str]) -> None:
    assert isinstance(host.clock, ManualClock)
    for job_id in ids:  # one by one, a moment apart: added_at orders them, ids break ties
        await host.intake.add(JobRef(job_id))
        host.clock.advance(0.001)


async def test_jobs_page_by_default_and_follow_the_link() -> None:
    """Without `limit`, pages hold 100 jobs; following `Link: rel="next"` visits every job once, in order."""
    ids = [f"p-{i:04d}" for i in range(250)]
    async with serving_api(clock=ManualClock(1_764_000_000.25)) as (server, host), \
            aiohttp.ClientSession(headers=bearer()) as http:
        await _add(host, ids)
        pages: list[list[str]] = []
        url: str | None = f"{server.url}/jobs"
        while url is not None:
            async with http.get(url) as response:
                assert 200 == response.status
                pages.append([job["id"] for job in await response.json()])
                link = response.headers.get("Link")
                cursor = response.headers.get("X-Next-Cursor")
            if link is None:
                assert cursor is None
                url = None
            else:
                match = LINK.match(link)
                assert match is not None, link
                assert f"after={cursor}" in match.group(1)
                url = f"{server.url}/jobs?{match.group(1)}"
    assert [100, 100, 50] == [len(page) for page in pages]
    assert ids == [job_id for page in pages for job_id in page]


async def test_an_exact_last_page_has_no_next_link() -> None:
    """When the jobs end exactly at a page boundary, that page carries no Link to an empty page."""
    async with serving_api() as (server, host), aiohttp.ClientSession(headers=bearer()) as http:
        await _add(host, ["e-1", "e-2", "e-3", "e-4"])
        async with http.get(f"{server.url}/jobs", params={"limit": "2"}) as response:
            cursor = response.headers["X-Next-Cursor"]
        async with http.get(f"{server.url}/jobs", params={"limit": "2", "after": cursor}) as response:
            assert ["e-3", "e-4"] == [job["id"] for job in await response.json()]
            assert "Link" not in response.headers


async def test_the_next_link_keeps_the_state_filter() -> None:
    """Paging a filtered list stays within the filter: the Link carries `state` along."""
    async with serving_api() as (server, host), aiohttp.ClientSession(headers=bearer()) as http:
        await _add(host, [f"s-{i}" for i in range(5)])
        async with http.get(f"{server.url}/jobs", params={"state": "watching", "limit": "2"}) as response:
            link = response.headers["Link"]
        async with http.get(f"{server.url}/jobs", params={"state": "completed"}) as response:
            assert [] == await response.json()
    assert "state=watching" in link


@pytest.mark.parametrize("limit", ["1000", "1"])
async def test_limits_within_range_are_served(limit: str) -> None:
    """`limit` from 1 to 1000 is served."""
    async with serving_api() as (server, host), aiohttp.ClientSession(headers=bearer()) as http:
        await _add(host, ["l-1", "l-2"])
        async with http.get(f"{server.url}/jobs", params={"limit": limit}) as response:
            assert 200 == response.status
            assert min(2, int(limit)) == len(await response.json())


@pytest.mark.parametrize("limit", ["0", "1001", "100000", "-1", "1.0", "²", "", "9" * 5000])
async def test_limits_out_of_range_are_400(limit: str) -> None:
    """A `limit` that is not an integer from 1 to 1000 is a 400 `invalid_limit`."""
    async with (
        serving_api() as (server, _),
        aiohttp.ClientSession(headers=bearer()) as http,
        http.get(f"{server.url}/jobs", params={"limit": limit}) as response,
    ):
        assert (400, "invalid_limit") == (response.status, (await response.json())["error"])


def _b64(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


BOGUS_CURSORS = {
    "empty": "",
    "not base64": "!!!",
    "padded": _b64(b"1764000000.0:a-1") + "==",
    "no separator": _b64(b"1764000000.0"),
    "nan": _b64(b"nan:a-1"),
    "inf": _b64(b"inf:a-1"),
    "not canonical time": _b64(b"1764000000.00:a-1"),
    "negative": _b64(b"-1.0:a-1"),
    "bad id": _b64(b"1764000000.0:../x"),
    "huge": "A" * 4000,
    "not UTF-8": _b64(b"\xff\xfe:a-1"),
}


@pytest.mark.parametrize("cursor", BOGUS_CURSORS.values(), ids=BOGUS_CURSORS.keys())
async def test_bogus_cursors_are_400(cursor: str) -> None:
    """An `after` that is not a cursor this server gave out is a 400 `invalid_cursor`."""
    async with (
        serving_api() as (server, _),
        aiohttp.ClientSession(headers=bearer()) as http,
        http.get(f"{server.url}/jobs", params={"after": cursor}) as response,
    ):
        assert (400, "invalid_cursor") == (response.status, (await response.json())["error"])


async def test_a_cursor_survives_the_removal_of_its_job() -> None:
    """A cursor names a place in the order, not a row: the page after a deleted job still comes."""
    async with serving_api() as (server, host), aiohttp.ClientSession(headers=bearer()) as http:
        await _add(host, ["r-1", "r-2", "r-3"])
        first = await host.store.get_job("r-1")
        assert first is not None
        await host.store.remove_job("r-1", now=host.clock.now())
        async with http.get(f"{server.url}/jobs", params={"after": encode_cursor(first.added_at, first.id)}) as response:
            assert ["r-2", "r-3"] == [job["id"] for job in await response.json()]


async def test_summary_counts_jobs_and_deliveries_per_state() -> None:
    """GET /summary answers the store's counts per state, and needs the token like /jobs."""
    async with serving_api() as (server, host), aiohttp.ClientSession() as http:
        await _add(host, ["c-1", "c-2", "c-3"])
        claimed = await host.store.claim_due_jobs(now=host.clock.now() + 60, limit=1, owner="t", lease=30)
        assert claimed[0].lease is not None
        recorded = await host.store.record_outcome(
            claimed[0].id, token=claimed[0].lease.token, now=host.clock.now() + 60, outcome=Outcome.FAILED,
            snapshot=Snapshot(status="failed"), polls=1, detected_at=host.clock.now() + 60, deliveries=[],
        )
        assert recorded
        async with http.get(f"{server.url}/summary") as response:
            assert 401 == response.status
        async with http.get(f"{server.url}/summary", headers=bearer()) as response:
            summary = await response.json()
    assert {"watching": 2, "failed": 1} == {k: v for k, v in summary["jobs"].items() if v}
    assert {"pending", "delivered", "dead"} == set(summary["deliveries"])


async def test_job_views_never_read_delivery_bodies(tmp_path: Path) -> None:
    """GET /jobs shows a delivery whose stored event body is unreadable: the view never loads bodies."""
    path = tmp_path / "state.db"
    clock = ManualClock(1_764_000_000.0)
    async with serving_api(SqliteStore(str(path)), clock=clock) as (server, host):
        await host.intake.add(JobRef("body-1"))
        now = clock.now() + 60
        (claimed,) = await host.store.claim_due_jobs(now=now, limit=1, owner="t", lease=30)
        assert claimed.lease is not None
        delivery = Delivery(id="d-1", notifier="hook", event={"type": "contact_import.failed"}, created_at=now,
                            next_attempt_at=now, deadline_at=now + 3600, job_id="body-1")
        assert await host.store.record_outcome(
            "body-1", token=claimed.lease.token, now=now, outcome=Outcome.FAILED, snapshot=None, polls=1,
            detected_at=now, deliveries=[delivery],
        )
        with sqlite3.connect(path) as db:  # what a body that no longer parses looks like to a reader
            db.execute("UPDATE deliveries SET event = 'not json {' WHERE id = 'd-1'")
        async with (
            aiohttp.ClientSession(headers=bearer()) as http,
            http.get(f"{server.url}/jobs") as response,
        ):
            status, jobs = response.status, await response.json()
    assert 200 == status
    assert [("hook", "pending")] == [(d["notifier"], d["state"]) for d in jobs[0]["deliveries"]]


async def test_summary_is_shared_for_two_seconds() -> None:
    """Open pages share one count for up to 2 s of the daemon's clock; after that the count is fresh."""
    async with serving_api() as (server, host), aiohttp.ClientSession(headers=bearer()) as http:
        assert isinstance(host.clock, ManualClock)
        seen = []
        for index, step in enumerate((0.0, 1.9, 0.1)):
            host.clock.advance(step)
            await host.intake.add(JobRef(f"sum-{index}"))
            async with http.get(f"{server.url}/summary") as response:
                seen.append((await response.json())["jobs"]["watching"])
    assert [1, 1, 3] == seen


async def test_a_batch_filter_reads_only_the_page_of_that_batch() -> None:
    """GET /jobs?batch=&limit=10 in a batch of 2000 reads 11 job records (a page and one to tell if
    another follows), not the whole batch; the next link carries on where the page stopped."""
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        admin = aioredis.Redis.from_url(url)
        try:
            async with serving_api(RedisStore(url, prefix="iw-pages")) as (server, host), \
                    aiohttp.ClientSession(headers=bearer()) as http:
                refs = [JobRef(f"b{index:04d}", batch="big") for index in range(2000)]
                await host.intake.add_many(refs + [JobRef(f"o{index:04d}") for index in range(500)])
                before = await command_calls(admin, "hgetall")
                async with http.get(f"{server.url}/jobs", params={"batch": "big", "limit": "10"}) as response:
                    first = [job["id"] for job in await response.json()]
                    cursor = response.headers["X-Next-Cursor"]
                read = await command_calls(admin, "hgetall") - before
                params = {"batch": "big", "limit": "3", "after": cursor}
                async with http.get(f"{server.url}/jobs", params=params) as response:
                    second = [job["id"] for job in await response.json()]
        finally:
            await admin.aclose()
    assert (11, [f"b{index:04d}" for index in range(13)]) == (read, first + second)
