"""The status page: the token-for-cookie exchange, and what a person sees in headless Chromium."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import WebhookReceiver, write_jobs
from tests.serving import TOKEN, all_settled, bearer, eventually, running_daemon, server_config_text, serving_api
from watcher.clock import ManualClock, SystemClock
from watcher.learned import LearnedSchedules
from watcher.models import JobRef, JobState, Outcome, Snapshot
from watcher.server import COOKIE
from watcher.testing.fake_sendgrid import FakeSendGrid

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_LABEL = '<img src=x onerror="document.title=1">'


async def test_token_query_is_swapped_for_a_read_only_cookie(tmp_path: Path) -> None:
    """`/?token=` answers the page with an HttpOnly SameSite=Strict cookie that can read jobs but not change them."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None
        url = daemon.server.url
        # unsafe=True: keep cookies for an IP-address host such as 127.0.0.1.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{url}/?token=wrong") as response:
                assert 401 == response.status
            async with browser.get(f"{url}/") as response:
                assert 401 == response.status
            async with browser.get(f"{url}/?token={TOKEN}&state=failed") as response:
                assert 200 == response.status
                assert ("no-store", "no-referrer") == (response.headers["Cache-Control"], response.headers["Referrer-Policy"])
                set_cookie = response.headers["Set-Cookie"]
            async with browser.get(f"{url}/") as response:
                assert 200 == response.status
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
                assert "<title>import-watcher</title>" in await response.text()
            async with browser.get(f"{url}/jobs") as response:
                assert 200 == response.status
            async with browser.post(f"{url}/jobs", json={"id": "cookie-1"}) as response:
                assert 401 == response.status
            async with browser.delete(f"{url}/jobs/cookie-1", headers={"Content-Type": "application/json"}) as response:
                assert 401 == response.status
            for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
                async with browser.get(f"{url}/static/{asset}") as response:
                    assert (200, kind) == (response.status, response.content_type)
    assert f"{COOKIE}=" in set_cookie
    assert TOKEN not in set_cookie
    assert {"httponly", "samesite=strict", "path=/"} <= {part.strip().lower() for part in set_cookie.split(";")}


class _Table(HTMLParser):
    """Collects the text of each row of the page's job table, cell by cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_body = False
        self.cell: list[str] | None = None
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images += 1
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append([])
        elif tag == "td" and self.in_body:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self.in_body = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data + " ")


async def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium serialises it."""
    process = await asyncio.create_subprocess_exec(
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert 0 == process.returncode, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/services installs it in CI)")
async def test_status_page_shows_jobs_in_chromium(tmp_path: Path) -> None:
    """Opened with ?token=, the page lists each job with its state, polls and deliveries; labels stay text."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("page-done-1", outcome="completed", requested=12)
        fake.script_job("page-wait-1", outcome="pending")
        jobs = tmp_path / "jobs.yaml"
        write_jobs(jobs, ["page-done-1"])
        text = server_config_text(fake.base_url, tmp_path, hook_url=hook.url, jobs_file=jobs,
                                  polling="initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 200ms\n  deadline: 1h")
        async with running_daemon(tmp_path, text) as daemon, aiohttp.ClientSession(headers=bearer()) as http:
            assert daemon.server is not None
            url = daemon.server.url
            await eventually(lambda: all_settled(http, url, 1))
            job = {"id": "page-wait-1", "labels": {"team": HOSTILE_LABEL}, "notify": ["hook"]}
            async with http.post(f"{url}/jobs", json=job) as response:
                assert 202 == response.status
            dom = await dump_dom(f"{url}/?token={TOKEN}", tmp_path / "chromium-profile")
    table = _Table()
    table.feed(dom)
    rows = {row[0]: row for row in table.rows}
    assert {"page-done-1", "page-wait-1"} == set(rows)
    done, waiting = rows["page-done-1"], rows["page-wait-1"]
    assert "completed" == done[1]
    assert "hook: delivered (1 attempt)" == done[5]
    assert "requested 12" in done[4]
    assert "watching" == waiting[1]
    assert "due now" == waiting[3] or waiting[3].startswith("in ")
    assert f"team={HOSTILE_LABEL}" == waiting[6]
    assert 0 == table.images  # the label was shown as text, not parsed as markup
    assert "2 jobs: 1 completed, 1 watching" in dom


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium at /usr/bin/chromium")
async def test_status_page_shows_one_page_and_the_counts(tmp_path: Path) -> None:
    """With more jobs than a page, the page shows the counts of all of them but only the first 50 rows."""
    async with serving_api() as (server, host):
        assert isinstance(host.clock, ManualClock)
        for i in range(120):
            await host.intake.add(JobRef(f"many-{i:03d}"))
            host.clock.advance(0.001)
        dom = await dump_dom(f"{server.url}/?token={TOKEN}", tmp_path / "chromium-profile")
    table = _Table()
    table.feed(dom)
    assert [f"many-{i:03d}" for i in range(50)] == [row[0] for row in table.rows]
    assert "120 jobs: 120 watching" in dom
    assert re.search(r'<button type="button" id="previous" disabled="">', dom)
    assert re.search(r'<button type="button" id="next">', dom)
    assert '<span id="page" class="muted">page 1</span>' in dom


class _Batches(HTMLParser):
    """The batch rows of the page (their cells' text) and, per opened batch, the job ids listed under it."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.expanded: dict[str, str | None] = {}
        self.opened: dict[str, list[str]] = {}
        self._row: str | None = None
        self._detail: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-batch"):
            self._row = str(found["data-batch"])
            self.rows[self._row] = []
        elif tag == "tr" and found.get("data-batch-detail"):
            self._detail = str(found["data-batch-detail"])
            self.opened[self._detail] = []
        elif tag == "tr" and self._detail is not None and found.get("data-job-id"):
            self.opened[self._detail].append(str(found["data-job-id"]))
        elif tag == "button" and self._row is not None:
            self.expanded[self._row] = found.get("aria-expanded")
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self.rows[self._row].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._row = None
        elif tag == "table" and self._detail is not None:
            self._detail = None  # the opened batch's own table of jobs ended

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data + " ")


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium at /usr/bin/chromium")
async def test_status_page_shows_batches_and_opens_one(tmp_path: Path) -> None:
    """Open batches are listed with progress and worst outcome so far; a batch link opens it with its jobs under it,
    first in the list even when it is not on the page; the finished ones are a choice away."""
    from tests.test_batch_views import finish
    from watcher.models import Outcome

    async with serving_api() as (server, host):
        assert isinstance(host.clock, ManualClock)
        for i in range(3):
            await host.intake.add(JobRef(f"nightly-job-{i}", batch="nightly:2026-11-27"))
            host.clock.advance(0.001)
        await host.intake.add(JobRef("other-job-1", batch="other"))
        await host.intake.add(JobRef("loose-job-1"))
        now = host.clock.now() + 60
        await finish(host.store, "nightly-job-1", Outcome.FAILED, now)
        await finish(host.store, "other-job-1", Outcome.COMPLETED, now)
        (settled,) = await host.store.claim_settled_batches(now=now + 120, settle=60, limit=5, owner="t", lease=30)
        assert settled.lease is not None
        assert await host.store.finish_batch("other", token=settled.lease.token, now=now + 120, summary_id="s-1",
                                             deliveries=[])
        dumps = {}
        for key, path in (("closed", "/?token="), ("linked", "/batches/nightly:2026-11-27?token="),
                          ("pinned", "/?batch=other&token="), ("finished", "/?batches=finished&token=")):
            dumps[key] = await dump_dom(f"{server.url}{path}{TOKEN}", tmp_path / f"profile-{key}")
    page, opened, pinned, finished = (_Batches() for _ in range(4))
    for parser, key in ((page, "closed"), (opened, "linked"), (pinned, "pinned"), (finished, "finished")):
        parser.feed(dumps[key])
    assert ["nightly:2026-11-27"] == list(page.rows)  # open batches by default
    name, state, progress, worst = page.rows["nightly:2026-11-27"][:4]
    assert ("nightly:2026-11-27", "open", "1/3 final 1 failed", "failed") == (name, state, progress, worst)
    assert ({"nightly:2026-11-27": "false"}, {}) == (page.expanded, page.opened)
    assert "true" == opened.expanded["nightly:2026-11-27"]
    assert {"nightly:2026-11-27": ["nightly-job-0", "nightly-job-1", "nightly-job-2"]} == opened.opened
    assert "Totals: requested 0" in dumps["linked"]
    # A job's batch links to the page with that batch open; following such a link opens it, shown first.
    assert '<a href="/?batch=nightly%3A2026-11-27">nightly:2026-11-27</a>' in dumps["closed"]
    assert (["other", "nightly:2026-11-27"], {"other": ["other-job-1"]}) == (list(pinned.rows), pinned.opened)
    assert (["other"], "finished") == (list(finished.rows), finished.rows["other"][1])


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium at /usr/bin/chromium")
async def test_status_page_shows_a_running_jobs_expected_finish(tmp_path: Path) -> None:
    """Once the daemon has learned how long such jobs take (300 upserts of about 10 minutes), a job running
    for a minute shows, under its next poll, that it is expected to end in about 9 minutes; without a summary
    the cell shows the next poll alone."""
    clock = SystemClock()
    async with serving_api(clock=clock) as (server, host):
        now = clock.now()
        learned, rng = LearnedSchedules(host.store), random.Random(4)
        for k in range(300):
            seconds = rng.lognormvariate(math.log(600), 0.3)
            done = JobState(id=f"old-{k}", labels={}, notify=None, added_at=now - 9000, next_poll_at=0,
                            snapshot=Snapshot(status="completed", job_type="upsert"), outcome=Outcome.COMPLETED)
            await learned.observe(done, now - 9000 + seconds)
        assert await learned.flush(now)
        await host.store.add_job(JobRef("run-1"), now=now - 60, first_poll_at=now + 30)
        before = await dump_dom(f"{server.url}/?token={TOKEN}", tmp_path / "chromium-profile-1")
        host.learned = learned  # type: ignore[assignment]
        after = await dump_dom(f"{server.url}/?token={TOKEN}", tmp_path / "chromium-profile-2")
    cells = []
    for dom in (before, after):
        table = _Table()
        table.feed(dom)
        cells.append({row[0]: row for row in table.rows}["run-1"][3])
    assert re.fullmatch(r"in \d+ s", cells[0]), cells[0]
    assert re.fullmatch(r"in \d+ s expected to end in (8|9|10) min", cells[1]), cells[1]
