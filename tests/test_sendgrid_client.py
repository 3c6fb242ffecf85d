"""SendGridClient maps every HTTP answer to a Snapshot or one of three exceptions."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
import structlog
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from watcher.clock import ManualClock
from watcher.errors import (
    ImportNotFound,
    InvalidJobId,
    KeyRefused,
    SendGridError,
    StoreUnavailable,
    TryLater,
)
from watcher.models import Snapshot
from watcher.schema import Secret
from watcher.sendgrid import USER_AGENT, SendGridClient, SendGridSettings

KEY = "SG.secret-test-key.abcdefghijklmnopqrstuvwxyz"
BASE = "https://api.sendgrid.test"
JOB = "0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11"
URL_ = f"{BASE}/v3/marketing/contacts/imports/{JOB}"

FULL_BODY: dict[str, Any] = {
    "id": JOB,
    "status": "errored",
    "job_type": "upsert",
    "results": {
        "requested_count": 1000,
        "created_count": 980,
        "updated_count": 10,
        "deleted_count": 0,
        "errored_count": 10,
        "errors_url": "https://example.com/errors.csv",
    },
    "started_at": "2026-11-27T09:58:00Z",
    "finished_at": "2026-11-27T10:00:00Z",
}


class RecordingBudget:
    """A budget that never waits and remembers what it was told."""

    def __init__(self, *, fail: bool = False) -> None:
        self.acquired = 0
        self.released = 0
        self.observed: list[tuple[dict[str, str], int]] = []
        self.fail = fail

    async def acquire(self) -> None:
        if self.fail:
            raise StoreUnavailable("rate budget store unreachable (ConnectionError)")
        self.acquired += 1

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        self.observed.append((dict(headers), status))

    def release(self) -> None:
        self.released += 1

    @property
    def remaining(self) -> float | None:
        return None


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as mock:
        yield mock


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def budget() -> RecordingBudget:
    return RecordingBudget()


@pytest.fixture
def client(session: aiohttp.ClientSession, budget: RecordingBudget, clock: ManualClock) -> SendGridClient:
    return make_client(session, budget, clock)


def make_client(
    session: aiohttp.ClientSession,
    budget: RecordingBudget,
    clock: ManualClock,
    **overrides: Any,
) -> SendGridClient:
    settings = SendGridSettings(api_key=Secret(KEY), base_url=BASE, **overrides)
    return SendGridClient(settings, session=session, budget=budget, clock=clock)


def sent_headers(mocked: aioresponses) -> Mapping[str, str]:
    assert mocked.requests is not None
    (call,) = mocked.requests[("GET", URL(URL_))]
    headers: Mapping[str, str] = call.kwargs["headers"]
    return headers


async def error_from(client: SendGridClient) -> SendGridError:
    with pytest.raises(SendGridError) as info:
        await client.get_import(JOB)
    return info.value


# --- 200 -------------------------------------------------------------------------


async def test_full_body_becomes_a_snapshot(client: SendGridClient, mocked: aioresponses) -> None:
    """A complete ContactImport body maps field for field, the id aside."""
    mocked.get(URL_, payload=FULL_BODY)
    snapshot = await client.get_import(JOB)
    expected = Snapshot(
        status="errored",
        job_type="upsert",
        results=FULL_BODY["results"],
        started_at="2026-11-27T09:58:00Z",
        finished_at="2026-11-27T10:00:00Z",
    )
    assert expected == snapshot


async def test_empty_object_is_an_empty_snapshot(client: SendGridClient, mocked: aioresponses) -> None:
    """Every field is optional, so `{}` is a valid answer."""
    mocked.get(URL_, payload={})
    assert Snapshot() == await client.get_import(JOB)


async def test_null_results_are_empty(client: SendGridClient, mocked: aioresponses) -> None:
    """`results: null` and null counts are treated as absent."""
    mocked.get(URL_, payload={"status": "pending", "results": None})
    assert Snapshot(status="pending") == await client.get_import(JOB)


async def test_float_counts_are_tolerated(client: SendGridClient, mocked: aioresponses) -> None:
    """Counts are JSON numbers: whole floats become ints, fractions stay floats."""
    mocked.get(URL_, payload={"results": {"requested_count": 1000.0, "errored_count": 2.5}})
    snapshot = await client.get_import(JOB)
    assert {"requested_count": 1000, "errored_count": 2.5} == snapshot.results
    assert int is type(snapshot.results["requested_count"])


async def test_unknown_keys_are_tolerated(client: SendGridClient, mocked: aioresponses) -> None:
    """Unknown keys are ignored at the top level and kept in results when plain values."""
    body = {
        "status": "completed",
        "surprise": {"nested": [1, 2]},
        "results": {"created_count": 3, "skipped_count": 1, "extra": {"deep": True}},
    }
    mocked.get(URL_, payload=body)
    snapshot = await client.get_import(JOB)
    assert {"created_count": 3, "skipped_count": 1} == snapshot.results


async def test_unknown_status_is_kept_as_is(client: SendGridClient, mocked: aioresponses) -> None:
    """A status outside the documented four is passed on unchanged for the engine to judge."""
    mocked.get(URL_, payload={"status": " Processing "})
    assert " Processing " == (await client.get_import(JOB)).status


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b'{"status": "completed"', "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b'{"status": NaN}', "not JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b'[{"status": "completed"}]', "expected a JSON object"),
        (b'"completed"', "expected a JSON object"),
        (b'{"results": [1, 2]}', "results is list"),
        (b'{"status": 3}', "status is int"),
        (b'{"finished_at": {"at": 1}}', "finished_at is dict"),
        (b'{"results": {"created_count": "12"}}', "results.created_count is str"),
        (b'{"results": {"errored_count": true}}', "results.errored_count is bool"),
        (b'{"results": {"errors_url": 5}}', "results.errors_url is int"),
        (b'{"results": {"created_count": 1e400}}', "number out of range"),
        (b'{"results": {"created_count": -1e400}}', "number out of range"),
        (b'{"results": {"some_new_count": 1e400}}', "number out of range"),
        (b'{"results": {"created_count": 1' + b"0" * 400 + b"}}", "results.created_count is out of range"),
        (b'{"results": {"created_count": 1' + b"0" * 5000 + b"}}", "not JSON"),
        (b'{"results": {"errored_count": -3}}', "results.errored_count is out of range"),
        (b'{"results": {"errored_count": Infinity}}', "not JSON"),
        (b'{"status": "completed", "started_at": "\\ud800"}', "lone surrogate"),
        (b'{"status": "completed", "results": {"note": "\\udfff"}}', "lone surrogate"),
    ],
)
async def test_malformed_200_is_try_later(
    client: SendGridClient, mocked: aioresponses, body: bytes, reason: str
) -> None:
    """A 200 body that is not a well-typed JSON object asks to try again later."""
    mocked.get(URL_, body=body)
    error = await error_from(client)
    assert TryLater is type(error)
    assert error.reason.startswith("malformed answer: ")
    assert reason in str(error)
    assert 1 == client.responses["malformed"]


async def test_huge_body_is_try_later(client: SendGridClient, mocked: aioresponses) -> None:
    """A 200 body over 1 MiB is refused without being parsed."""
    mocked.get(URL_, body=b'{"status": "' + b"x" * (1 << 20) + b'"}')
    error = await error_from(client)
    assert TryLater is type(error)
    assert "malformed answer: body over 1 MiB" == str(error)


async def test_huge_declared_length_is_try_later(client: SendGridClient, mocked: aioresponses) -> None:
    """A Content-Length over 1 MiB is refused before reading the body."""
    mocked.get(URL_, body=b"{}", headers={"Content-Length": str(1 << 30)})
    assert "malformed answer: body over 1 MiB" == str(await error_from(client))


# --- errors ----------------------------------------------------------------------


async def test_404_is_import_not_found(client: SendGridClient, mocked: aioresponses) -> None:
    """A 404 means SendGrid does not know the job (yet)."""
    body = {"errors": [{"field": None, "message": "resource not found"}]}
    mocked.get(URL_, status=404, payload=body)
    error = await error_from(client)
    assert ImportNotFound is type(error)
    assert JOB == error.job_id


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, {"errors": [{"field": None, "message": "authorization required"}]},
         "authorization required"),
        (403, {"errors": [{"field": None, "message": "access forbidden", "help": {}}],
               "id": "abc"}, "access forbidden"),
        (401, "not json", "no message"),
    ],
)  # fmt: skip
async def test_401_403_is_key_refused(
    client: SendGridClient, mocked: aioresponses, status: int, body: Any, message: str
) -> None:
    """401 and 403 refuse the key, with the message from the error body when there is one."""
    if isinstance(body, str):
        mocked.get(URL_, status=status, body=body)
    else:
        mocked.get(URL_, status=status, payload=body)
    error = await error_from(client)
    assert KeyRefused is type(error)
    assert (status, message) == (error.status, error.message)


TOO_MANY = {"errors": [{"field": None, "message": "too many requests"}]}


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "7", "X-RateLimit-Reset": "60"}, 7.0),
        ({"X-RateLimit-Reset": str(1_800_000_000 + 30)}, 30.0),
        ({"x-ratelimit-reset": "12"}, 12.0),
        ({"Retry-After": formatdate(1_800_000_000 + 45, usegmt=True)}, 45.0),
        ({}, None),
    ],
)
async def test_429_is_try_later_with_retry_after(
    client: SendGridClient,
    mocked: aioresponses,
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    """A 429 waits for Retry-After, else X-RateLimit-Reset (epoch above 10^9, else a delta)."""
    mocked.get(URL_, status=429, payload=TOO_MANY, headers=headers)
    error = await error_from(client)
    assert TryLater is type(error)
    assert (429, retry_after) == (error.status, error.retry_after)
    assert 1 == client.rate_limited


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (500, {"errors": [{"message": "internal error"}]}, {}, "HTTP 500: internal error"),
        (503, "Service Unavailable", {"Retry-After": "20"}, "HTTP 503"),
        (502, "", {}, "HTTP 502"),
        (408, {}, {}, "HTTP 408"),
        (400, {"errors": [{"field": "id", "message": "invalid id"}]}, {}, "HTTP 400: invalid id"),
        (400, {"errors": {"field": "id", "message": "bad request"}}, {}, "HTTP 400: bad request"),
        (302, "", {"Location": "https://elsewhere.test/"}, "HTTP 302"),
        (418, {"errors": []}, {}, "HTTP 418"),
    ],
)  # fmt: skip
async def test_other_statuses_are_try_later(
    client: SendGridClient,
    mocked: aioresponses,
    status: int,
    body: Any,
    headers: dict[str, str],
    expected: str,
) -> None:
    """5xx, 408, 400 and anything unexpected ask to try again later with a short message."""
    if isinstance(body, str):
        mocked.get(URL_, status=status, body=body, headers=headers)
    else:
        mocked.get(URL_, status=status, payload=body, headers=headers)
    error = await error_from(client)
    assert TryLater is type(error)
    assert (expected, status) == (str(error), error.status)
    if "Retry-After" in headers:
        assert 20.0 == error.retry_after


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read timeout"), "timeout"),
        (aiohttp.ClientConnectionError("Connection refused"), "connection_error"),
        (aiohttp.ServerDisconnectedError(), "connection_error"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), "connection_error"),
        (ConnectionResetError("reset by peer"), "connection_error"),
    ],
)
async def test_network_failures_are_try_later(
    client: SendGridClient,
    budget: RecordingBudget,
    mocked: aioresponses,
    exception: Exception,
    kind: str,
) -> None:
    """Timeouts and broken connections ask to try again later and still release the budget."""
    mocked.get(URL_, exception=exception)
    error = await error_from(client)
    assert TryLater is type(error)
    assert None is error.__cause__
    assert 1 == client.responses[kind]
    assert (1, 1) == (budget.acquired, budget.released)


async def test_budget_store_down_is_try_later(
    session: aiohttp.ClientSession, clock: ManualClock, mocked: aioresponses
) -> None:
    """When the shared budget cannot be reached, no request leaves and the poll is retried."""
    budget = RecordingBudget(fail=True)
    error = await error_from(make_client(session, budget, clock))
    assert TryLater is type(error)
    assert {} == mocked.requests
    assert 0 == budget.released


# --- requests --------------------------------------------------------------------


async def test_request_headers(client: SendGridClient, mocked: aioresponses) -> None:
    """The request carries the key, JSON Accept and our User-Agent, and no On-Behalf-Of."""
    mocked.get(URL_, payload={})
    await client.get_import(JOB)
    headers = sent_headers(mocked)
    assert f"Bearer {KEY}" == headers["Authorization"]
    assert "application/json" == headers["Accept"]
    assert USER_AGENT == headers["User-Agent"]
    assert USER_AGENT.startswith("import-watcher/")
    assert "On-Behalf-Of" not in headers


async def test_on_behalf_of_is_sent_when_set(
    session: aiohttp.ClientSession,
    budget: RecordingBudget,
    clock: ManualClock,
    mocked: aioresponses,
) -> None:
    """A configured subuser goes out as the On-Behalf-Of header."""
    mocked.get(URL_, payload={})
    await make_client(session, budget, clock, on_behalf_of="growth-team").get_import(JOB)
    assert "growth-team" == sent_headers(mocked)["On-Behalf-Of"]


async def test_base_url_trailing_slash(
    session: aiohttp.ClientSession,
    budget: RecordingBudget,
    clock: ManualClock,
    mocked: aioresponses,
) -> None:
    """A base URL with a trailing slash builds the same request URL."""
    mocked.get(URL_, payload={})
    settings = SendGridSettings(api_key=Secret(KEY), base_url=BASE + "/")
    client = SendGridClient(settings, session=session, budget=budget, clock=clock)
    assert Snapshot() == await client.get_import(JOB)


@pytest.mark.parametrize("job_id", ["", "a/../../v3/user", "id?x=1", "ü", "x" * 65, "a b", "%2F", None, 7])
async def test_invalid_job_id_never_reaches_the_network(
    client: SendGridClient, budget: RecordingBudget, mocked: aioresponses, job_id: Any
) -> None:
    """An invalid id is rejected before any request or budget use."""
    with pytest.raises(InvalidJobId):
        await client.get_import(job_id)
    assert {} == mocked.requests
    assert 0 == budget.acquired


async def test_every_answer_feeds_the_budget(
    client: SendGridClient, budget: RecordingBudget, mocked: aioresponses
) -> None:
    """The budget sees the headers and status of every answer, whatever the status."""
    limits = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "599"}
    for status in (200, 404, 401, 429, 500):
        mocked.get(URL_, status=status, payload={}, headers=limits)
        with pytest.raises(SendGridError) if status != 200 else _nothing():
            await client.get_import(JOB)
    assert [200, 404, 401, 429, 500] == [status for _, status in budget.observed]
    assert "599" == budget.observed[0][0]["X-RateLimit-Remaining"]
    assert (5, 5) == (budget.acquired, budget.released)
    assert 5 == client.requests
    assert {"200": 1, "404": 1, "401": 1, "429": 1, "500": 1} == dict(client.responses)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_concurrency_is_capped(
    session: aiohttp.ClientSession,
    budget: RecordingBudget,
    clock: ManualClock,
    mocked: aioresponses,
) -> None:
    """No more than max_concurrency requests are in flight at once."""
    in_flight = peak = 0
    gate = asyncio.Event()

    async def slow(url: URL, **kwargs: Any) -> CallbackResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        return CallbackResult(payload={})

    mocked.get(URL_, callback=slow, repeat=True)
    client = make_client(session, budget, clock, max_concurrency=3)
    polls = [asyncio.create_task(client.get_import(JOB)) for _ in range(10)]
    for _ in range(20):
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*polls)
    assert 3 == peak


# --- the key stays secret --------------------------------------------------------

LEAK_CASES: list[dict[str, Any]] = [
    {"status": 401, "body": json.dumps({"errors": [{"message": f"bad key {KEY}"}]})},
    {"status": 403, "body": json.dumps({"errors": [{"message": "access forbidden"}]})},
    {"status": 400, "body": json.dumps({"errors": {"message": f"echo Bearer {KEY}"}})},
    {"status": 500, "body": json.dumps({"errors": [{"message": KEY}]})},
    {"status": 429, "body": "", "headers": {"Retry-After": "1"}},
    {"status": 404, "body": ""},
    {"status": 200, "body": "not json"},
    {"exception": aiohttp.ClientConnectionError(f"refused {KEY}")},
    {"exception": TimeoutError()},
]


@pytest.mark.parametrize("case", LEAK_CASES)
async def test_key_never_appears_in_errors_logs_or_repr(
    client: SendGridClient, mocked: aioresponses, case: dict[str, Any]
) -> None:
    """The API key shows up in no exception text, log event or repr, even when echoed back."""
    mocked.get(URL_, **case)
    with structlog.testing.capture_logs() as logs:
        error = await error_from(client)
    texts = [str(error), repr(error), repr(error.args), repr(client), repr(logs)]
    texts += [repr(client._settings), repr(vars(client))]
    assert [] == [text for text in texts if KEY in text]
    assert all("debug" == entry["log_level"] for entry in logs)
    assert all(entry["event"].startswith("sendgrid.") for entry in logs)


# --- what the client remembers between polls ---------------------------------------


async def test_an_unchanged_answer_gives_the_same_snapshot_a_changed_one_a_new(
    client: SendGridClient, mocked: aioresponses
) -> None:
    """A job answering the same bytes again gets the snapshot parsed last time; any change is parsed."""
    running = {**FULL_BODY, "status": "pending", "finished_at": None}
    mocked.get(URL_, payload=running)
    mocked.get(URL_, payload=running)
    mocked.get(URL_, payload={**running, "results": {"requested_count": 1000, "created_count": 5}})
    mocked.get(URL_, body="not json")
    mocked.get(URL_, payload=running)
    first, again, changed = [await client.get_import(JOB) for _ in range(3)]
    assert first is again
    assert (first.results["created_count"], changed.results["created_count"]) == (980, 5)
    assert TryLater is type(await error_from(client))
    assert first == await client.get_import(JOB)
    assert 1 == client.responses["malformed"]


async def test_an_invalid_job_id_is_refused_every_time(client: SendGridClient, mocked: aioresponses) -> None:
    """Only valid ids are remembered, so an invalid one never reaches a URL, however often it is asked."""
    for _ in range(2):
        with pytest.raises(InvalidJobId):
            await client.get_import("../v3/user/account")
    assert not mocked.requests


# --- a real server, bodies arriving in pieces --------------------------------------


@pytest.fixture
async def slow_server() -> AsyncIterator[str]:
    """Serves /v3/marketing/contacts/imports/<id>: the body in pieces, with a pause, chunked;
    for the id "huge-body", two pieces of 1 MiB; for "gzip-bomb", a small gzip body of 2 MiB."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.match_info["job_id"] == "gzip-bomb":
            # 2 MiB inflated from a few KiB, with an honest Content-Length of the compressed body.
            packed = gzip.compress(b'{"status": "' + b"x" * (2 << 20) + b'"}')
            return web.Response(body=packed, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        size = (1 << 20) if request.match_info["job_id"] == "huge-body" else 0
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if size:
            await response.write(b'{"status": "' + b"x" * size)
            await asyncio.sleep(0.02)
            await response.write(b"x" * size + b'"}')
        else:
            await response.write(b'{"status": "pend')
            await asyncio.sleep(0.02)
            await response.write(b'ing", "results": {"requested_count": 3}}')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v3/marketing/contacts/imports/{job_id}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_body_arriving_in_pieces_is_read_whole(
    session: aiohttp.ClientSession, budget: RecordingBudget, clock: ManualClock, slow_server: str
) -> None:
    """A body still on its way when the headers arrive is waited for, then parsed whole."""
    settings = SendGridSettings(api_key=Secret(KEY), base_url=slow_server)
    client = SendGridClient(settings, session=session, budget=budget, clock=clock)
    snapshot = await client.get_import(JOB)
    assert ("pending", {"requested_count": 3}) == (snapshot.status, snapshot.results)


async def test_a_huge_body_arriving_in_pieces_is_try_later(
    session: aiohttp.ClientSession, budget: RecordingBudget, clock: ManualClock, slow_server: str
) -> None:
    """A chunked 200 body that grows past 1 MiB while it is read is refused."""
    settings = SendGridSettings(api_key=Secret(KEY), base_url=f"{slow_server}/")
    client = SendGridClient(settings, session=session, budget=budget, clock=clock)
    with pytest.raises(TryLater) as info:
        await client.get_import("huge-body")
    assert "malformed answer: body over 1 MiB" == str(info.value)


@pytest.mark.parametrize(
    ("base_url", "allow_insecure"),
    [
        ("http://sendgrid.example.com", False),
        ("https://api.sendgrid.com/v3", False),
        ("https://api.sendgrid.com/v3/", True),
    ],
)
def test_a_base_url_the_policy_refuses_cannot_be_set(base_url: str, allow_insecure: bool) -> None:
    """Plain http off loopback (without allow_insecure) and a doubled /v3 are refused up front."""
    with pytest.raises(ValueError, match="base_url must"):
        SendGridSettings(api_key=Secret(KEY), base_url=base_url, allow_insecure=allow_insecure)


def test_plain_http_base_url_to_loopback_or_with_allow_insecure_is_fine() -> None:
    """The fake SendGrid on loopback, and a mirror with allow_insecure, are accepted."""
    assert "http://127.0.0.1:8025" == SendGridSettings(api_key=Secret(KEY), base_url="http://127.0.0.1:8025").base_url
    mirror = SendGridSettings(api_key=Secret(KEY), base_url="http://mirror.internal", allow_insecure=True)
    assert "http://mirror.internal" == mirror.base_url


async def test_a_compressed_body_is_capped_as_it_inflates(
    session: aiohttp.ClientSession, budget: RecordingBudget, clock: ManualClock, slow_server: str
) -> None:
    """A gzip answer whose Content-Length is small is still capped at 1 MiB of what it inflates to:
    the declared length counts the compressed bytes, so it only bounds an uncompressed body."""
    settings = SendGridSettings(api_key=Secret(KEY), base_url=slow_server)
    client = SendGridClient(settings, session=session, budget=budget, clock=clock)
    with pytest.raises(TryLater) as info:
        await client.get_import("gzip-bomb")
    assert "malformed answer: body over 1 MiB" == str(info.value)
