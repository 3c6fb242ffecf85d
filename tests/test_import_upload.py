"""The import upload as S3 wants it: one raw gzip PUT with every upload header, never the API key, in constant memory."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import serve_app
from watcher.accounts import Account
from watcher.clock import SystemClock
from watcher.csvimport import parse_field_definitions, plan_import
from watcher.errors import KeyRefused, TryLater
from watcher.lifecycle import Lifecycle, SendGridRefused, UploadFailed, import_csv
from watcher.lifecycle_requests import ImportStarted, parse_import_started
from watcher.net import OutboundRefused
from watcher.ratelimit import LocalRateBudget
from watcher.schema import Secret
from watcher.sendgrid import SendGridClient, SendGridSettings
from watcher.sendgrid_answers import error_message, error_text

API_KEY = "SG.upload-test-key"
HEADERS = (("Content-Encoding", "gzip"), ("Content-Type", "text/csv"), ("x-amz-server-side-encryption", "aws:kms"))


class NoSleep:
    """A clock whose waits are only recorded."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def now(self) -> float:
        return SystemClock().now()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@dataclass
class S3Like:
    """A presigned-PUT endpoint and a small SendGrid API in one app; it streams what it receives."""

    fail_first: list[int] = field(default_factory=list)  # statuses answered to the first uploads
    uploads: list[dict[str, object]] = field(default_factory=list)
    api_requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    base: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bucket/{key}", self.upload)
        app.router.add_put("/v3/marketing/contacts/imports", self.start)
        app.router.add_get("/v3/marketing/field_definitions", self.fields)
        return app

    async def start(self, request: web.Request) -> web.Response:
        self.api_requests.append((request.method, request.path, dict(request.headers)))
        body = await request.json()
        if body.get("field_mappings") == ["bad"]:
            return web.json_response({"errors": [{"field": "field_mappings", "message": "unknown field id bad"},
                                                 {"message": "and another"}]}, status=400)
        return web.json_response({
            "job_id": "job-1", "upload_uri": f"{self.base}/bucket/key1?X-Amz-Signature=abc%2Fdef&X-Amz-Expires=900",
            "upload_headers": [{"header": n, "value": v} for n, v in HEADERS],
        })

    async def fields(self, request: web.Request) -> web.Response:
        self.api_requests.append((request.method, request.path, dict(request.headers)))
        return web.json_response({"custom_fields": [], "reserved_fields": [
            {"id": "_rf2_T", "name": "email", "field_type": "Text"},
            {"id": "_rf0_T", "name": "first_name", "field_type": "Text"}]})

    async def upload(self, request: web.Request) -> web.StreamResponse:
        def refuse(status: int, code: str) -> web.Response:
            return web.Response(status=status, content_type="application/xml",
                                text=f"<Error><Code>{code}</Code><Message>refused: {code}</Message></Error>")
        seen: dict[str, object] = {"headers": dict(request.headers), "query": request.raw_path.partition("?")[2]}
        self.uploads.append(seen)
        if request.method != "PUT":
            return refuse(403, "SignatureDoesNotMatch")
        if request.content_type.startswith("multipart/"):
            return refuse(403, "SignatureDoesNotMatch")
        if request.headers.get("Transfer-Encoding") or request.content_length is None:
            return refuse(501, "NotImplemented")  # S3 wants a Content-Length, never chunked
        if any(request.headers.get(n) != v for n, v in HEADERS):
            return refuse(403, "SignatureDoesNotMatch")
        if self.fail_first:
            await request.read()
            return refuse(self.fail_first.pop(0), "InternalError")
        inflate = zlib.decompressobj(wbits=31)  # the body must be raw gzip, taken as a stream
        digest, size, raw = hashlib.sha256(), 0, 0
        async for chunk in request.content.iter_any():
            raw += len(chunk)
            data = inflate.decompress(chunk)
            size += len(data)
            digest.update(data)
        seen.update(sha256=digest.hexdigest(), size=size, raw=raw, complete=inflate.eof)
        return web.Response(status=200)


async def serve_raw(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on a free port without undoing Content-Encoding: handlers see the bytes as sent."""
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


@contextlib.asynccontextmanager
async def peer(s3: S3Like, *, allow_private: bool = True) -> AsyncIterator[Lifecycle]:
    runner, port = await serve_raw(s3.app())
    s3.base = f"http://127.0.0.1:{port}"
    settings = SendGridSettings(api_key=Secret(API_KEY), base_url=s3.base, on_behalf_of="sub1",
                                allow_private=allow_private, allow_insecure=True)
    clock = NoSleep()
    budget = LocalRateBudget(max_rate=None, clock=SystemClock())
    try:
        async with aiohttp.ClientSession() as session:
            client = SendGridClient(settings, session=session, budget=budget, clock=clock)
            yield Lifecycle(Account("main", settings, session, budget, client), clock=clock)
    finally:
        await runner.cleanup()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_the_upload_is_one_raw_gzip_put_with_every_upload_header(tmp_path: Path) -> None:
    """The body is the gzip of the file, sent with a Content-Length, the three headers and no API key."""
    path = tmp_path / "contacts.csv"
    path.write_text("email,first_name\n" + "".join(f"u{i}@example.com,N{i}\n" for i in range(5000)))
    s3 = S3Like()
    async with peer(s3) as lifecycle:
        plan = plan_import(path, await lifecycle.field_definitions())
        started = await import_csv(lifecycle, path, plan, list_ids=["l1"])
    assert "job-1" == started.job_id
    (upload,) = s3.uploads
    assert (sha256_file(path), path.stat().st_size, True) == (upload["sha256"], upload["size"], upload["complete"])
    headers = upload["headers"]
    assert isinstance(headers, dict)
    assert "Authorization" not in headers and "On-Behalf-Of" not in headers
    assert str(upload["raw"]) == headers["Content-Length"]
    assert "X-Amz-Signature=abc%2Fdef&X-Amz-Expires=900" == upload["query"]  # the signature untouched
    for method, _, api_headers in s3.api_requests:
        assert (f"Bearer {API_KEY}", "sub1") == (api_headers["Authorization"], api_headers["On-Behalf-Of"]), method


async def test_a_gzip_file_is_sent_as_it_is(tmp_path: Path) -> None:
    """An export's .csv.gz is not compressed twice."""
    path = tmp_path / "export.csv.gz"
    text = b"email\n" + b"a@example.com\n" * 100
    path.write_bytes(gzip.compress(text))
    s3 = S3Like()
    async with peer(s3) as lifecycle:
        assert path.stat().st_size == await lifecycle.upload(await start(lifecycle), path)
    assert hashlib.sha256(text).hexdigest() == s3.uploads[0]["sha256"]


async def start(lifecycle: Lifecycle) -> ImportStarted:
    return await lifecycle.start_import(field_mappings=["_rf2_T"])


async def test_transient_failures_restart_the_stream(tmp_path: Path) -> None:
    """A 500 and a 503 are retried from the first byte; the third try delivers the whole file."""
    path = tmp_path / "contacts.csv"
    path.write_text("email\n" + "a@example.com\n" * 50_000)
    s3 = S3Like(fail_first=[500, 503])
    async with peer(s3) as lifecycle:
        await lifecycle.upload(await start(lifecycle), path)
    assert 3 == len(s3.uploads)
    assert (sha256_file(path), True) == (s3.uploads[2]["sha256"], s3.uploads[2]["complete"])


async def test_a_refused_upload_is_not_retried_and_says_why(tmp_path: Path) -> None:
    """A 403 from the bucket is one line with S3's code and message, after one try."""
    path = tmp_path / "contacts.csv"
    path.write_text("email\na@example.com\n")
    s3 = S3Like(fail_first=[403])
    async with peer(s3) as lifecycle:
        with pytest.raises(UploadFailed, match=r"refused \(HTTP 403: InternalError: refused: InternalError\)"):
            await lifecycle.upload(await start(lifecycle), path)
    assert 1 == len(s3.uploads)


async def test_a_loopback_upload_uri_is_refused_without_allow_private(tmp_path: Path) -> None:
    """upload_uri is an answered URL: loopback is refused before any connection unless allow_private."""
    path = tmp_path / "contacts.csv"
    path.write_text("email\na@example.com\n")
    s3 = S3Like()
    async with peer(s3, allow_private=False) as lifecycle:
        with pytest.raises(OutboundRefused, match="loopback"):
            await lifecycle.upload(await start(lifecycle), path)
    assert [] == s3.uploads


async def test_api_errors_are_one_line_each_shape() -> None:
    """A 400 lists every message; a list and an object `errors` both read."""
    s3 = S3Like()
    async with peer(s3) as lifecycle:
        with pytest.raises(SendGridRefused, match=r"HTTP 400\): field_mappings: unknown field id bad; and another"):
            await lifecycle.start_import(field_mappings=["bad"])
    assert "list_ids: no such list" == error_text(b'{"errors": {"field": "list_ids", "message": "no such list"}}')
    assert "no message" == error_text(b"<html>")


def test_error_answers_are_read_by_one_parser_that_redacts() -> None:
    """A start's error text (every message, with its field) and a poll's error message (the first) come
    from one parser: both on one line, and a known secret echoed back is masked in both."""
    key = Secret("SG.echoed-back-key-1234567890")  # known secrets are masked wherever text is shown
    body = ('{"errors": [{"field": "list_ids", "message": "bad\\n key ' + key.reveal() + '"},'
            ' {"parameter": "x", "message": "two"}]}').encode()
    assert "list_ids: bad key ********; x: two" == error_text(body)
    assert "bad key ********" == error_message(body)


@pytest.mark.parametrize(("answer", "expected"), [
    ({"job_id": "j", "upload_uri": "https://s3/x", "upload_headers": [{"header": "Bad Name", "value": "v"}]},
     "no HTTP header"),
    ({"job_id": "j", "upload_uri": "https://s3/x", "upload_headers": [{"header": "X", "value": "a\r\nB: c"}]},
     "no HTTP header"),
    ({"job_id": "j", "upload_uri": "https://s3/x", "upload_headers": [{"header": "Content-Length", "value": "1"}]},
     "sets Content-Length"),
    ({"upload_uri": "https://s3/x"}, "no job_id"),
])
def test_hostile_import_answers_are_refused(answer: dict[str, object], expected: str) -> None:
    """upload_headers that would split or reframe the request are refused, not sent."""
    with pytest.raises(TryLater, match=expected):
        parse_import_started(answer)


async def test_retries_and_key_refusal_at_the_api() -> None:
    """429 (the budget waits out its Retry-After) and 5xx (a backoff) are retried; 401 is KeyRefused at once."""
    answers = [web.json_response({}, status=429, headers={"Retry-After": "0"}),
               web.json_response({"errors": [{"message": "down"}]}, status=503),
               web.json_response({"custom_fields": [], "reserved_fields": []}),
               web.json_response({"errors": [{"message": "bad key"}]}, status=401)]
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return answers.pop(0)
    app.router.add_get("/v3/marketing/field_definitions", answer)
    runner, port = await serve_app(app)
    settings = SendGridSettings(api_key=Secret(API_KEY), base_url=f"http://127.0.0.1:{port}")
    clock = NoSleep()
    budget = LocalRateBudget(max_rate=None, clock=SystemClock())
    try:
        async with aiohttp.ClientSession() as session:
            client = SendGridClient(settings, session=session, budget=budget, clock=clock)
            lifecycle = Lifecycle(Account("main", settings, session, budget, client), clock=clock)
            assert () == (await lifecycle.field_definitions()).all
            assert [4.0] == clock.slept  # after the second try
            with pytest.raises(KeyRefused, match=r"HTTP 401.*bad key"):
                await lifecycle.field_definitions()
    finally:
        await runner.cleanup()


def write_big_csv(path: Path, target: int) -> int:
    """About `target` bytes of contacts (rows of ~1 KB: few enough rows to count fast); returns the rows."""
    filler = "x" * 1000
    block = "".join(f"user{i}@example.com,Name{i},{filler}\n" for i in range(4000)).encode()
    rows = 0
    with path.open("wb") as file:
        file.write(b"email,first_name,notes\n")
        while file.tell() < target:
            file.write(block)
            rows += 4000
    return rows


async def test_a_200_mb_csv_is_planned_and_uploaded_in_constant_memory(tmp_path: Path) -> None:
    """Counting, compressing and sending 200 MB keeps the traced peak under 20 MB."""
    path = tmp_path / "big.csv"
    rows = write_big_csv(path, 200 << 20)
    s3 = S3Like()
    async with peer(s3) as lifecycle:
        definitions = await lifecycle.field_definitions()
        tracemalloc.start()
        try:
            plan = plan_import(path, definitions, skips=["notes"])
            await import_csv(lifecycle, path, plan)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert rows == plan.rows
    assert path.stat().st_size == s3.uploads[0]["size"]
    assert peak < 20 << 20, f"peak {peak / 1e6:.1f} MB"
    assert definitions == parse_field_definitions({"custom_fields": [], "reserved_fields": [
        {"id": "_rf2_T", "name": "email", "field_type": "Text"}, {"id": "_rf0_T", "name": "first_name",
                                                                   "field_type": "Text"}]})
