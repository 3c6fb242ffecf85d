"""The HTTP API in a browser's world and against hostile bodies: refused with a JSON error, never a 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.serving import bearer, serving_api
from watcher.errors import StoreBroken
from watcher.models import StoreCounts
from watcher.store.memory import MemoryStore

JSON = {"Content-Type": "application/json"}
EVIL = "https://evil.example"


async def curl(*args: str) -> tuple[int, dict[str, Any]]:
    """One request by curl, a client outside our code: (status, JSON body)."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert 0 == process.returncode, err.decode()
    body, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(body) if body else {}


async def test_cross_site_form_post_is_refused_without_a_token() -> None:
    """A form post from another site (text/plain, foreign Origin) adds nothing: 415 before the body is read."""
    async with serving_api(token=None) as (server, host):
        status, error = await curl(
            "-X", "POST", "-H", "Content-Type: text/plain", "-H", f"Origin: {EVIL}",
            "--data-binary", '{"id": "csrf-1"}', f"{server.url}/jobs",
        )
        assert [] == await host.store.list_jobs()
    assert (415, "unsupported_media_type") == (status, error["error"])


async def test_foreign_origin_is_refused_on_state_changes() -> None:
    """A JSON request carrying another site's Origin is a 403 for POST and DELETE; the same origin works."""
    async with serving_api(token=None) as (server, host), aiohttp.ClientSession() as http:
        same = {**JSON, "Origin": server.url}
        async with http.post(f"{server.url}/jobs", json={"id": "own-1"}, headers=same) as response:
            assert 202 == response.status
        for origin in (EVIL, "null", server.url.replace("127.0.0.1", "localhost"), server.url + "0"):
            headers = {**JSON, "Origin": origin}
            async with http.post(f"{server.url}/jobs", json={"id": "xo-1"}, headers=headers) as response:
                assert (403, "cross_origin") == (response.status, (await response.json())["error"]), origin
            async with http.delete(f"{server.url}/jobs/own-1", headers=headers) as response:
                assert 403 == response.status, origin
        assert ["own-1"] == [job.id for job in await host.store.list_jobs()]


async def test_dns_rebound_host_is_refused_without_a_token() -> None:
    """Without a token, a request whose Host is not loopback (DNS rebinding) is a 421 on every route."""
    async with serving_api(token=None) as (server, _):
        port = server.url.rsplit(":", 1)[1]
        for path in ("/jobs", "/jobs/a-1", "/summary", "/", "/healthz"):
            status, error = await curl("-H", f"Host: attacker.example:{port}", f"{server.url}{path}")
            assert (421, "misdirected_request") == (status, error["error"]), path
        status, _ = await curl("-X", "DELETE", "-H", "Host: attacker.example", "-H", "Content-Type: application/json",
                               f"{server.url}/jobs/a-1")
        assert 421 == status
        for name in (f"127.0.0.1:{port}", f"127.9.9.9:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
            status, _ = await curl("-H", f"Host: {name}", f"{server.url}/jobs")
            assert 200 == status, name


async def test_with_a_token_any_host_is_served_but_content_type_still_counts() -> None:
    """With a token the Host is free (the token guards), yet POST and DELETE still need JSON (415)."""
    async with (
        serving_api() as (server, host),
        aiohttp.ClientSession(headers=bearer()) as http,
        http.get(f"{server.url}/jobs", headers={"Host": "watcher.internal"}) as response,
    ):
        assert 200 == response.status
        async with http.post(f"{server.url}/jobs", data=b'{"id": "t-1"}', headers={"Content-Type": "text/plain"}) as response:
            assert (415, "unsupported_media_type") == (response.status, (await response.json())["error"])
        async with http.post(f"{server.url}/jobs", json={"id": "t-1"}) as response:
            assert 202 == response.status
        async with http.delete(f"{server.url}/jobs/t-1") as response:  # no Content-Type at all
            assert 415 == response.status
        async with http.delete(f"{server.url}/jobs/t-1", headers=JSON) as response:
            assert 204 == response.status
        assert [] == await host.store.list_jobs()


HOSTILE_BODIES = {
    "lone surrogate": b'{"id": "h-1", "labels": {"team": "\\ud800"}}',
    "lone surrogate key": b'{"id": "h-1", "labels": {"\\udfff": "x"}}',
    "NaN": b'{"id": "h-1", "labels": {"n": NaN}}',
    "Infinity": b'{"id": "h-1", "labels": {"n": Infinity}}',
    "-Infinity": b'{"id": "h-1", "labels": {"n": -Infinity}}',
    "1e400": b'{"id": "h-1", "labels": {"n": 1e400}}',
    "5000 digits": b'{"id": "h-1", "labels": {"n": ' + b"9" * 5000 + b"}}",
    "2^53 + 1": b'{"id": "h-1", "labels": {"n": 9007199254740993}}',
    "10,000 levels": b"[" * 10_000 + b"]" * 10_000,
    "40 levels": b'{"id": "h-1", "labels": {"n": ' + b"[" * 40 + b"]" * 40 + b"}}",
    "duplicate key": b'{"id": "h-1", "id": "h-2"}',
    "not UTF-8": b'{"id": "h-1", "labels": {"n": "\xff"}}',
    "UTF-16": '{"id": "h-1"}'.encode("utf-16"),
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_bodies_that_are_not_strict_json_are_400(body: bytes) -> None:
    """Every body that is not strict JSON is a 400 `invalid_json` naming the problem; nothing is stored."""
    async with serving_api(max_body=64 * 1024) as (server, host), aiohttp.ClientSession(headers=bearer()) as http:
        with capture_logs() as logs:
            async with http.post(f"{server.url}/jobs", data=body, headers=JSON) as response:
                status, error = response.status, await response.json()
        assert [] == await host.store.list_jobs()
    assert (400, "invalid_json") == (status, error["error"])
    assert [] == [entry for entry in logs if entry["log_level"] in ("error", "critical")]


async def test_absurd_limit_is_400() -> None:
    """GET /jobs?limit=<5000 digits> is a 400 `invalid_limit`, not a 500."""
    async with (
        serving_api() as (server, _),
        aiohttp.ClientSession(headers=bearer()) as http,
        http.get(f"{server.url}/jobs", params={"limit": "9" * 5000}) as response,
    ):
        assert (400, "invalid_limit") == (response.status, (await response.json())["error"])


class _BrokenStore(MemoryStore):
    """A store whose file turned out corrupt (StoreBroken), or whose code has a bug (RuntimeError)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def counts(self) -> StoreCounts:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [(StoreBroken("database disk image is malformed"), (503, "store_unavailable")),
     (RuntimeError("bug at /srv/secret/path.py"), (500, "internal_error"))],
)
async def test_store_failures_are_json_without_a_traceback(error: Exception, expected: tuple[int, str]) -> None:
    """A broken store is a 503 and any other exception a 500, both JSON that reveal nothing inside."""
    async with (
        serving_api(_BrokenStore(error)) as (server, _),
        aiohttp.ClientSession(headers=bearer()) as http,
        http.get(f"{server.url}/summary") as response,
    ):
        status, text = response.status, await response.text()
    assert expected == (status, json.loads(text)["error"])
    assert "Traceback" not in text and str(error) not in text


async def test_unknown_route_with_a_form_post_is_still_404() -> None:
    """The Content-Type rule applies to real routes only: an unknown path stays a JSON 404."""
    async with (
        serving_api() as (server, _),
        aiohttp.ClientSession(headers=bearer()) as http,
        http.post(f"{server.url}/nowhere", data=b"x", headers={"Content-Type": "text/plain"}) as response,
    ):
        assert (404, "not_found") == (response.status, (await response.json())["error"])


@pytest.mark.parametrize(("content_type", "body", "problem"), [
    ("multipart/form-data", b"x", "boundary missed"),  # no boundary
    ("multipart/form-data; boundary=b", b"garbage", "Could not find starting boundary"),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="list"\r\n\r\nxx',
     "the body ends inside field list"),  # cut off
    ("multipart/form-data; boundary=b", b"--b\r\nBad header\r\n\r\nxx\r\n--b--\r\n",
     "Invalid HTTP header: b'Bad header'"),  # a header without a colon
    ("multipart/form-data; boundary=" + "b" * 100, b"--b", "is too long (70 chars max)"),  # over 70 characters
])
async def test_malformed_multipart_imports_are_a_400_not_a_500(content_type: str, body: bytes, problem: str) -> None:
    """POST /imports reads a multipart body as it streams: every way aiohttp finds it malformed is one
    clear 400 `invalid_form` that names the problem, never the handler's crash."""
    async with serving_api() as (server, _), aiohttp.ClientSession() as http:
        with capture_logs() as logs:
            async with http.post(f"{server.url}/imports", data=body,
                                 headers={**bearer(), "Content-Type": content_type}) as response:
                answer = await response.json()
    assert (400, "invalid_form") == (response.status, answer["error"])
    assert problem in answer["message"] and "\n" not in answer["message"], answer["message"]
    assert [] == [e for e in logs if e["event"] == "http.handler_failed"]


@pytest.mark.parametrize(("labels", "problem"), [
    ({f"k{i}": "v" for i in range(65)}, "at most 64 labels per job, got 65"),
    ({"note": "x" * 1001}, "label 'note': a value must be at most 1000 characters, got 1001"),
])
async def test_labels_past_their_bounds_are_400(labels: dict[str, str], problem: str) -> None:
    """Every notification carries a job's labels; past their bounds a job is refused with a 400 naming
    the bound, and nothing is stored. At the bounds (71 KB: a server with `max_body` above it) it is accepted."""
    async with serving_api(max_body=128 * 1024) as (server, host), aiohttp.ClientSession(headers=bearer()) as http:
        async with http.post(f"{server.url}/jobs", json={"id": "big-1", "labels": labels}) as response:
            status, error = response.status, await response.json()
        assert [] == await host.store.list_jobs()
        widest = {f"{i:0>100}": "x" * 1000 for i in range(64)}
        async with http.post(f"{server.url}/jobs", json={"id": "big-2", "labels": widest}) as response:
            assert 202 == response.status
    assert (400, "invalid_job") == (status, error["error"])
    assert problem in error["message"]
