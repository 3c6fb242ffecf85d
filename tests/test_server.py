"""The HTTP API against a running Daemon, the fake SendGrid and a real webhook receiver."""

from __future__ import annotations

import asyncio
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import WebhookReceiver, write_jobs
from tests.serving import (
    TOKEN,
    GatedNotifier,
    all_settled,
    api_headers,
    bearer,
    eventually,
    running_daemon,
    server_config_text,
)
from watcher.cli import main
from watcher.testing.fake_sendgrid import FakeSendGrid

PROTECTED = [
    ("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/a-1"), ("DELETE", "/jobs/a-1"), ("GET", "/"), ("GET", "/summary"),
]


async def test_token_is_required_on_job_routes(tmp_path: Path) -> None:
    """Job routes and the page answer 401 without a token or with a wrong one, and work with the right one."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None
        url = daemon.server.url
        async with aiohttp.ClientSession() as http:
            for method, path in PROTECTED:
                for headers in ({}, bearer("wrong-token"), {"Authorization": TOKEN}, {"Authorization": "Bearer "}):
                    async with http.request(method, url + path, headers=headers, json={"id": "a-1"}) as response:
                        assert 401 == response.status, (method, path, headers)
                        assert "unauthorized" == (await response.json())["error"]
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(f"{url}/jobs", headers=bearer()) as response:
                assert 200 == response.status
                assert [] == await response.json()
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                async with http.get(url + path) as response:
                    assert 200 == response.status, path


async def test_post_jobs_is_202_then_200(tmp_path: Path) -> None:
    """A new job is accepted with 202 and its view; posting it again is a no-op answered 200."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        fake.script_job("api-1", outcome="pending")
        assert daemon.server is not None
        body = {"id": "api-1", "labels": {"team": "growth", "batch": 7}}
        async with aiohttp.ClientSession(headers=api_headers()) as http:
            async with http.post(f"{daemon.server.url}/jobs", json=body) as response:
                assert 202 == response.status
                assert "/jobs/api-1" == response.headers["Location"]
                view = await response.json()
            async with http.post(f"{daemon.server.url}/jobs", data=json.dumps({"id": "api-1"})) as response:
                assert 200 == response.status
                again = await response.json()
    assert ("api-1", "watching", {"team": "growth", "batch": "7"}) == (view["id"], view["state"], view["labels"])
    assert {"team": "growth", "batch": "7"} == again["labels"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (json.dumps({"id": "bad id!"}).encode(), "invalid_job_id"),
        (json.dumps({"id": "x" * 65}).encode(), "invalid_job_id"),
        (json.dumps("../etc/passwd").encode(), "invalid_job_id"),
        (json.dumps(7).encode(), "invalid_job"),
        (json.dumps({"id": 42}).encode(), "invalid_job_id"),
        (json.dumps([1, 2]).encode(), "invalid_job"),
        (json.dumps({"id": "ok-1", "color": "red"}).encode(), "invalid_job"),
        (json.dumps({"id": "ok-1", "labels": {"a": ["b"]}}).encode(), "invalid_job"),
        (json.dumps({"id": "ok-1", "labels": []}).encode(), "invalid_job"),
        (json.dumps({"id": "ok-1", "labels": 0}).encode(), "invalid_job"),
        (json.dumps({"id": "ok-1", "notify": ""}).encode(), "invalid_job"),
        (json.dumps({"id": "ok-1", "notify": ["nobody"]}).encode(), "unknown_notifier"),
    ],
)
async def test_post_jobs_rejects_invalid_bodies(tmp_path: Path, body: bytes, code: str) -> None:
    """An invalid body is a 400 with a JSON error code, and nothing is stored."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None
        async with aiohttp.ClientSession(headers=api_headers()) as http, http.post(f"{daemon.server.url}/jobs", data=body) as response:
            assert 400 == response.status
            error = await response.json()
        assert [] == await daemon.store.list_jobs()
    assert code == error["error"]
    assert error["message"]


async def test_post_jobs_takes_null_as_absent(tmp_path: Path) -> None:
    """`"notify": null` leaves the job to the routes and `"labels": null` means none, as documented."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        fake.script_job("null-1", outcome="pending")
        assert daemon.server is not None
        body = {"id": "null-1", "labels": None, "notify": None}
        async with aiohttp.ClientSession(headers=api_headers()) as http, http.post(f"{daemon.server.url}/jobs", json=body) as response:
            assert 202 == response.status
            view = await response.json()
    assert ({}, None) == (view["labels"], view["notify"])


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_body_is_413(tmp_path: Path, chunked: bool) -> None:
    """A body over server.max_body is refused with a JSON 413, declared length or chunked."""
    payload = json.dumps({"id": "big-1", "labels": {"pad": "x" * 4096}}).encode()

    async def chunks() -> Any:
        for start in range(0, len(payload), 512):
            yield payload[start:start + 512]

    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None
        data = chunks() if chunked else payload
        async with aiohttp.ClientSession(headers=api_headers()) as http, http.post(f"{daemon.server.url}/jobs", data=data) as response:
            assert 413 == response.status
            assert "body_too_large" == (await response.json())["error"]
        assert [] == await daemon.store.list_jobs()


async def test_get_jobs_matches_status_json(tmp_path: Path) -> None:
    """GET /jobs gives the objects `status --json` prints; ?state= filters; GET /jobs/{id} gives one."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("done-1", outcome="completed", requested=5)
        fake.script_job("fail-1", outcome="failed", job_type="delete")
        jobs = write_jobs(tmp_path / "jobs.yaml", ["done-1", "fail-1"])
        text = server_config_text(fake.base_url, tmp_path, hook_url=hook.url, jobs_file=jobs)
        async with running_daemon(tmp_path, text) as daemon, aiohttp.ClientSession(headers=api_headers()) as http:
            assert daemon.server is not None
            url = daemon.server.url
            await eventually(lambda: all_settled(http, url, 2))
            async with http.get(f"{url}/jobs") as response:
                listed = await response.json()
            async with http.get(f"{url}/jobs", params={"state": "failed"}) as response:
                failed = await response.json()
            async with http.get(f"{url}/jobs/done-1") as response:
                one = await response.json()
            async with http.get(f"{url}/jobs", params={"state": ""}) as response:
                everything = await response.json()  # `state=` is "all jobs", as the page's first option
            async with http.get(f"{url}/jobs", params={"state": "nonsense"}) as response:
                assert 400 == response.status
            for limit in ("0", "²", "1.0", ""):  # "²" passes str.isdigit() but not int()
                async with http.get(f"{url}/jobs", params={"limit": limit}) as response:
                    assert (400, "invalid_limit") == (response.status, (await response.json())["error"]), limit
            printed = io.StringIO()
            with redirect_stdout(printed):
                assert 0 == await asyncio.to_thread(main, ["status", "-c", str(tmp_path / "config.yaml"), "--json"])
    assert json.loads(printed.getvalue()) == listed
    assert ["fail-1"] == [job["id"] for job in failed]
    assert listed == everything
    assert one == next(job for job in listed if job["id"] == "done-1")
    assert {"id", "state", "polls", "labels", "added_at", "finished_at", "detected_at", "deliveries"} <= set(one)
    assert [{"notifier": "hook", "state": "delivered", "attempts": 1}] == [
        {k: d[k] for k in ("notifier", "state", "attempts")} for d in one["deliveries"]
    ]


async def test_get_and_delete_unknown_or_invalid_ids(tmp_path: Path) -> None:
    """An unknown id is a JSON 404 and an invalid one a JSON 400, for GET and DELETE alike."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None
        url = daemon.server.url
        async with aiohttp.ClientSession(headers=api_headers()) as http:
            for method in ("GET", "DELETE"):
                async with http.request(method, f"{url}/jobs/ghost-1") as response:
                    assert (404, "job_not_found") == (response.status, (await response.json())["error"])
                async with http.request(method, f"{url}/jobs/bad%20id") as response:
                    assert (400, "invalid_job_id") == (response.status, (await response.json())["error"])


async def test_delete_stops_watching_without_a_notification(tmp_path: Path) -> None:
    """DELETE removes a watched job (204), it is gone (404), and only a job added after it gets notified."""
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("del-1", outcome="completed", pending_for=0.3)
        fake.script_job("fence-1", outcome="completed", pending_for=0.3)
        text = server_config_text(fake.base_url, tmp_path, hook_url=hook.url)
        async with running_daemon(tmp_path, text) as daemon, aiohttp.ClientSession(headers=api_headers()) as http:
            assert daemon.server is not None
            url = daemon.server.url
            async with http.post(f"{url}/jobs", json={"id": "del-1"}) as response:
                assert 202 == response.status
            async with http.delete(f"{url}/jobs/del-1") as response:
                assert 204 == response.status
            async with http.get(f"{url}/jobs/del-1") as response:
                assert 404 == response.status
            async with http.delete(f"{url}/jobs/del-1") as response:
                assert 404 == response.status
            # A fence: a job ending at the same time, added later; once it is notified, del-1 would have been.
            async with http.post(f"{url}/jobs", json={"id": "fence-1"}) as response:
                assert 202 == response.status
            await eventually(lambda: all_settled(http, url, 1))
    assert {"fence-1": "completed"} == hook.statuses()


async def test_unknown_routes_and_methods_are_json(tmp_path: Path) -> None:
    """An unknown path is a JSON 404 and a wrong method a JSON 405 naming the allowed ones."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{daemon.server.url}/nope?token={TOKEN}") as response:
                assert 404 == response.status
                assert "not_found" == (await response.json())["error"]
            async with http.put(f"{daemon.server.url}/jobs", headers=bearer()) as response:
                assert 405 == response.status
                assert {"GET", "POST"} <= set(response.headers["Allow"].split(","))
                assert "method_not_allowed" == (await response.json())["error"]
            async with http.get(f"{daemon.server.url}/static/index.html") as response:
                assert 404 == response.status


async def test_readyz_goes_503_when_the_store_is_closed(tmp_path: Path) -> None:
    """/readyz is 200 while the store answers and 503 with a reason once it does not; /healthz stays 200."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None
        url = daemon.server.url
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/readyz") as response:
                assert (200, {"status": "ready"}) == (response.status, await response.json())
            await daemon.store.close()
            async with http.get(f"{url}/readyz") as response:
                assert 503 == response.status
                assert {"status": "not_ready", "reason": "state store unavailable"} == await response.json()
            async with http.get(f"{url}/healthz") as response:
                assert 200 == response.status
            async with http.get(f"{url}/jobs", headers=bearer()) as response:
                assert (503, "store_unavailable") == (response.status, (await response.json())["error"])


async def test_shutdown_turns_readyz_503_then_closes_the_listener(tmp_path: Path) -> None:
    """While a stopping daemon drains, /readyz says 503 "shutting down"; once it has stopped, nothing listens."""
    gated = GatedNotifier()
    async with FakeSendGrid() as fake:
        fake.script_job("drain-1", outcome="completed")
        text = server_config_text(fake.base_url, tmp_path, jobs_file=write_jobs(tmp_path / "jobs.yaml", ["drain-1"]))
        async with running_daemon(tmp_path, text, extra_notifiers={"gated": gated}) as daemon:
            assert daemon.server is not None
            url = daemon.server.url
            await asyncio.wait_for(gated.sending.wait(), 10)  # a delivery is in flight
            daemon.stop()
            async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
                assert 503 == response.status
                assert "shutting down" == (await response.json())["reason"]
            gated.gate.set()
    assert 1 == len(gated.sent)  # the in-flight delivery was finished, not cut
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{url}/healthz"):
                pass


EXPECTED_METRICS = {
    "import_watcher_polls", "import_watcher_poll_duration_seconds", "import_watcher_sendgrid_responses",
    "import_watcher_sendgrid_rate_limited", "import_watcher_rate_budget_remaining", "import_watcher_jobs",
    "import_watcher_outbox_deliveries", "import_watcher_deliveries", "import_watcher_delivery_duration_seconds",
    "import_watcher_outcomes", "import_watcher_store_up", "import_watcher_ready",
}


async def test_metrics_after_a_few_polls(tmp_path: Path) -> None:
    """After jobs end and are delivered, /metrics shows polls, 429s, budget, jobs by state and deliveries."""
    async with FakeSendGrid(rate_limit=50) as fake, WebhookReceiver() as hook:
        fake.script_job("m-1", outcome="completed", pending_for=0.2)
        fake.script_job("m-2", outcome="errored", pending_for=0.1)
        jobs = write_jobs(tmp_path / "jobs.yaml", ["m-1", "m-2"])
        text = server_config_text(fake.base_url, tmp_path, hook_url=hook.url, jobs_file=jobs)
        async with running_daemon(tmp_path, text) as daemon, aiohttp.ClientSession() as http:
            assert daemon.server is not None
            url = daemon.server.url
            await eventually(lambda: all_settled(http, url, 2))
            async with http.get(f"{url}/metrics") as response:
                assert 200 == response.status
                assert response.headers["Content-Type"].startswith("text/plain")
                exposition = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert EXPECTED_METRICS <= set(families)
    assert samples[("import_watcher_polls_total", (("result", "ok"),))] >= 2
    assert 1 == samples[("import_watcher_jobs", (("state", "completed"),))]
    assert 1 == samples[("import_watcher_jobs", (("state", "errored"),))]
    assert 2 == samples[("import_watcher_deliveries_total", (("notifier", "hook"), ("result", "delivered")))]
    assert 0 == samples[("import_watcher_sendgrid_rate_limited_total", ())]
    assert 0 <= samples[("import_watcher_rate_budget_remaining", ())] <= 50
    assert samples[("import_watcher_poll_duration_seconds_count", ())] >= 2
    assert 1 == samples[("import_watcher_store_up", ())]
    assert 1 == samples[("import_watcher_outcomes_total", (("outcome", "completed"),))]


async def test_openapi_describes_every_route(tmp_path: Path) -> None:
    """/openapi.json is an OpenAPI 3 document naming every route and method, with the job and error shapes."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        assert daemon.server is not None and daemon.server.app is not None
        routes = {
            (re.sub(r"\{(\w+)\}", r"{\1}", route.resource.canonical), route.method.lower())
            for route in daemon.server.app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
        async with aiohttp.ClientSession(headers=api_headers()) as http:
            async with http.get(f"{daemon.server.url}/openapi.json") as response:
                document = await response.json()
            async with http.post(f"{daemon.server.url}/jobs", json={"id": "doc-1"}) as response:
                job = await response.json()
            async with http.get(f"{daemon.server.url}/jobs/bad!") as response:
                error = await response.json()
    described = {(path, method) for path, item in document["paths"].items() for method in item if method != "parameters"}
    assert document["openapi"].startswith("3.")
    assert routes == described
    schemas = document["components"]["schemas"]
    assert set(schemas["Job"]["required"]) == set(job)
    assert set(schemas["Job"]["properties"]) == set(job)
    assert set(schemas["Error"]["properties"]) == set(error)
    assert all(ref.startswith("#/components/") for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(document)))
    assert list(daemon.notifiers) == schemas["NotifierName"]["enum"]  # what `notify` may name


async def test_openapi_lists_the_configured_notifiers(tmp_path: Path) -> None:
    """The served document's NotifierName enum is the daemon's notifiers, so a name outside it is the 400."""
    async with FakeSendGrid() as fake:
        text = server_config_text(fake.base_url, tmp_path, extra="notifiers:\n  ops:\n    type: console\n")
        async with running_daemon(tmp_path, text, extra_notifiers={"gated": GatedNotifier()}) as daemon:
            assert daemon.server is not None
            async with aiohttp.ClientSession(headers=api_headers()) as http:
                async with http.get(f"{daemon.server.url}/openapi.json") as response:
                    document = await response.json()
                async with http.post(f"{daemon.server.url}/jobs", json={"id": "n-1", "notify": ["ops", "hook"]}) as response:
                    assert (400, "unknown_notifier") == (response.status, (await response.json())["error"])
    assert ["ops", "gated"] == document["components"]["schemas"]["NotifierName"]["enum"]


async def test_post_after_delete_answers_the_tombstone_until_again(tmp_path: Path) -> None:
    """A stopped job posted again is a 200 naming its tombstone and starts nothing; `"again": true` restarts it (202)."""
    async with FakeSendGrid() as fake, running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path)) as daemon:
        fake.script_job("tomb-1", outcome="pending")
        assert daemon.server is not None
        url = daemon.server.url
        async with aiohttp.ClientSession(headers=api_headers()) as http:
            async with http.post(f"{url}/jobs", json={"id": "tomb-1"}) as response:
                assert 202 == response.status
            async with http.delete(f"{url}/jobs/tomb-1") as response:
                assert 204 == response.status
            async with http.post(f"{url}/jobs", json={"id": "tomb-1", "labels": {"a": "b"}}) as response:
                stopped = (response.status, await response.json())
            assert [] == await daemon.store.list_jobs()
            async with http.post(f"{url}/jobs", json={"id": "tomb-1", "again": "yes"}) as response:
                assert (400, "invalid_job") == (response.status, (await response.json())["error"])
            async with http.post(f"{url}/jobs", json={"id": "tomb-1", "again": True}) as response:
                again = (response.status, await response.json())
    assert 200 == stopped[0]
    assert {"id": "tomb-1", "state": "stopped"} == {k: stopped[1][k] for k in ("id", "state")}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stopped[1]["since"])
    assert (202, "watching") == (again[0], again[1]["state"])
