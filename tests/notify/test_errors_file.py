"""summarize_errors_file against a local CSV server: every failure is a reason, never a raise."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json

import pytest
from aiohttp import web

from tests.helpers import free_port
from watcher.net import OutboundPolicy
from watcher.notify.errors_file import reason_column, summarize_errors_file

from .conftest import Answer

# The fakes listen on plain http on loopback: what the demo and tests allow explicitly.
LOCAL = OutboundPolicy(allow_insecure=True, allow_private=True)

CSV = (
    "email,first_name,ERROR\n"
    "a@x,Ann,invalid email\n"
    "b@x,Bob,invalid email\n"
    "c@x,Cid,missing field\n"
    "d@x,Dan,invalid email\n"
    "e@x,Eve,\n"
    "\n"
)


async def test_counts_rows_and_top_reasons(http_server, session) -> None:
    """Rows are counted, reasons ranked by count, blank reasons named."""
    server = await http_server(default=Answer(200, CSV))

    result = await summarize_errors_file(session, server.url + "/errors.csv?token=s3cr3t", policy=LOCAL, top=2)

    assert {
        "rows": 5,
        "top_reasons": [
            {"reason": "invalid email", "count": 3},
            {"reason": "(no reason given)", "count": 1},
        ],
    } == result.summary


async def test_sample_csv_has_header_and_first_rows(http_server, session) -> None:
    """sample_csv is the header plus the first `sample_rows` rows, as CSV."""
    server = await http_server(default=Answer(200, CSV))

    result = await summarize_errors_file(session, server.url + "/e.csv", policy=LOCAL, sample_rows=2)

    assert result.sample_csv is not None
    rows = list(csv.reader(io.StringIO(result.sample_csv)))
    assert [
        ["email", "first_name", "ERROR"],
        ["a@x", "Ann", "invalid email"],
        ["b@x", "Bob", "invalid email"],
    ] == rows


@pytest.mark.parametrize("how", ["content-encoding", "gzip-body"])
async def test_gzip_is_accepted(http_server, session, how: str) -> None:
    """A gzip Content-Encoding and a gzip file served as-is both read like plain CSV."""
    packed = gzip.compress(CSV.encode())
    headers = {"Content-Encoding": "gzip"} if how == "content-encoding" else {}
    server = await http_server(default=Answer(200, packed, headers))

    result = await summarize_errors_file(session, server.url + "/errors.csv.gz", policy=LOCAL)

    assert 5 == result.summary["rows"]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"x" * 5000, {}),
        (gzip.compress(b"email,error\n" + b"a,b\n" * 10_000), {}),  # a small gzip bomb
        (gzip.compress(b"email,error\n" + b"a,b\n" * 10_000), {"Content-Encoding": "gzip"}),
    ],
    ids=["plain", "gzip-body", "gzip-encoding"],
)
async def test_over_the_size_cap_is_unavailable(http_server, session, body, headers) -> None:
    """More than max_bytes (after decompression) is reported, not read."""
    server = await http_server(default=Answer(200, body, headers))

    result = await summarize_errors_file(session, server.url + "/big.csv", policy=LOCAL, max_bytes=4096)

    assert {"unavailable": "errors file larger than 4096 bytes"} == result.summary
    assert result.sample_csv is None


async def test_http_error_is_unavailable_without_the_token(http_server, session) -> None:
    """A 404 names the status and the URL without its query string."""
    server = await http_server(default=Answer(404, "nope"))

    result = await summarize_errors_file(session, server.url + "/gone.csv?sig=TOKEN123", policy=LOCAL)

    assert {"unavailable": f"HTTP 404 from {server.url}/gone.csv"} == result.summary


async def test_timeout_is_unavailable(http_server, session) -> None:
    """A server slower than `timeout` gives a reason, not an exception."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text=CSV)

    server = await http_server(handler=slow)

    result = await summarize_errors_file(session, server.url + "/slow.csv", policy=LOCAL, timeout=0.05)
    release.set()

    assert {"unavailable": "download timed out after 0.05s"} == result.summary


async def test_connection_refused_is_unavailable(session) -> None:
    """Nobody listening gives a reason that hides the query string."""
    url = f"http://127.0.0.1:{free_port()}/e.csv?token=TOKEN123"

    result = await summarize_errors_file(session, url, policy=LOCAL, timeout=2.0)

    assert result.summary["unavailable"].startswith("download failed: cannot connect to http://")
    assert "TOKEN123" not in result.summary["unavailable"]


@pytest.mark.parametrize(
    ("url", "policy", "reason"),
    [
        (
            "http://10.255.255.1/e.csv?token=TOKEN123",
            OutboundPolicy(),
            "refusing http://10.255.255.1/e.csv: only https",
        ),
        ("ftp://10.255.255.1/e.csv", LOCAL, "refusing ftp://10.255.255.1/e.csv: only https"),
        ("https://10.255.255.1/e.csv", OutboundPolicy(), "refusing https://10.255.255.1/e.csv: private address"),
        ("", LOCAL, "no errors file URL"),
    ],
)
async def test_refused_urls_never_touch_the_network(session, url, policy, reason):
    """Plain http, other schemes and private addresses are refused before any connection."""
    # 10.255.255.1 does not answer: a request would end in a timeout, not in a refusal.
    result = await summarize_errors_file(session, url, policy=policy, timeout=0.05)

    assert result.summary["unavailable"].startswith(reason)
    assert "TOKEN123" not in result.summary["unavailable"]


async def test_allow_insecure_and_private_lift_the_rules(http_server, session) -> None:
    """With both flags a plain-http URL on a private (here: loopback) address is read."""
    server = await http_server(default=Answer(200, "email,error\na@x,invalid email\n"))

    result = await summarize_errors_file(session, server.url + "/e.csv", policy=LOCAL)
    refused = await summarize_errors_file(session, server.url + "/e.csv", policy=OutboundPolicy())

    assert {"rows": 1, "top_reasons": [{"reason": "invalid email", "count": 1}]} == result.summary
    assert "unavailable" in refused.summary  # without them the same URL is never requested


async def test_empty_file_has_no_rows(http_server, session) -> None:
    """An empty body is zero rows, not an error."""
    server = await http_server(default=Answer(200, ""))

    result = await summarize_errors_file(session, server.url + "/e.csv", policy=LOCAL)

    assert ({"rows": 0, "top_reasons": []}, None) == (result.summary, result.sample_csv)


@pytest.mark.parametrize(
    ("header", "index"),
    [
        (["email", "Error"], 1),
        (["errors", "email"], 0),
        (["email", "reason", "x"], 1),
        (["email", "error_message", "x"], 1),
        (["MESSAGE", "email"], 0),
        (["email", "first", "why"], 2),
    ],
)
def test_reason_column(header: list[str], index: int) -> None:
    """A known header name wins (any case); otherwise the last column."""
    assert index == reason_column(header)


async def test_the_failure_log_line_names_the_job(session, json_logs) -> None:
    """A download that fails logs one warning with the job id, the URL without its query, and why."""
    await summarize_errors_file(session, "http://errors.example.com/e.csv?sig=TOKEN123", job_id="job-42")

    (line,) = [json.loads(text) for text in json_logs.getvalue().splitlines()]
    assert {
        "event": "notify.errors_file_unavailable",
        "job_id": "job-42",
        "url": "http://errors.example.com/e.csv",
    } == {key: line[key] for key in ("event", "job_id", "url")}
