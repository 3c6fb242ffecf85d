"""The fake SendGrid's import and export life over real HTTP: field ids, S3-like upload and download links."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import logging
import random
import socket
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from watcher.clock import ManualClock
from watcher.testing.fake_csvstream import CsvStream
from watcher.testing.fake_imports import MAPPING_MISMATCH
from watcher.testing.fake_sendgrid import FakeSendGrid, FieldDefinition

AUTH = {"Authorization": "Bearer SG.fake-key"}
IMPORTS = "/v3/marketing/contacts/imports"
EXPORTS = "/v3/marketing/contacts/exports"
EMAIL, FIRST, LAST, COLOR, POINTS = "_rf2_T", "_rf0_T", "_rf1_T", "e1_T", "e2_N"


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


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def start_import(http: aiohttp.ClientSession, fake: FakeSendGrid, mappings: list[str | None],
                       **extra: Any) -> dict[str, Any]:
    status, body = await call(http, "PUT", f"{fake.base_url}{IMPORTS}",
                              json={"file_type": "csv", "field_mappings": mappings, **extra})
    assert 200 == status, body
    return dict(body)


def signed(started: dict[str, Any]) -> dict[str, str]:
    return {h["header"]: h["value"] for h in started["upload_headers"]}


async def upload(started: dict[str, Any], data: Any, headers: dict[str, str] | None = None,
                 method: str = "PUT") -> tuple[int, str]:
    async with aiohttp.ClientSession() as plain, plain.request(
        method, started["upload_uri"], data=data, headers=signed(started) if headers is None else headers
    ) as response:
        return response.status, await response.text()


async def job(http: aiohttp.ClientSession, fake: FakeSendGrid, job_id: str) -> dict[str, Any]:
    status, body = await call(http, "GET", f"{fake.base_url}{IMPORTS}/{job_id}")
    assert 200 == status
    return dict(body)


async def errors_csv(job_body: dict[str, Any]) -> list[list[str]]:
    async with aiohttp.ClientSession() as plain, plain.get(job_body["results"]["errors_url"]) as response:
        return list(csv.reader(io.StringIO(await response.text())))


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


async def download(url: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as plain, plain.get(url) as response:
        return response.status, await response.read(), response.content_type


async def test_field_definitions_use_sendgrid_reserved_ids_and_the_instance_custom_fields(clock: ManualClock) -> None:
    """Reserved fields carry SendGrid's ids (email _rf2_T, read-only created_at) and custom fields are per fake."""
    custom = [FieldDefinition("w1_T", "shoe_size", "Text")]
    async with FakeSendGrid(clock=clock, custom_fields=custom) as fake, aiohttp.ClientSession(headers=AUTH) as http:
        status, body = await call(http, "GET", f"{fake.base_url}/v3/marketing/field_definitions")
    assert 200 == status
    reserved = {f["name"]: (f["id"], f["read_only"]) for f in body["reserved_fields"]}
    assert {"email": ("_rf2_T", False), "first_name": ("_rf0_T", False), "last_name": ("_rf1_T", False),
            "created_at": ("_rf21_D", True), "contact_id": ("_rf23_T", True)}.items() <= reserved.items()
    assert [{"id": "w1_T", "name": "shoe_size", "field_type": "Text"}] == body["custom_fields"]
    assert f"{fake.base_url}/v3/marketing/field_definitions" == body["_metadata"]["self"]


@pytest.mark.parametrize(("body", "message"), [
    ({"file_type": "json", "field_mappings": [EMAIL]}, "file_type must be csv"),
    ({"file_type": "csv", "field_mappings": []}, "field_mappings must hold at least 1 item"),
    ({"file_type": "csv", "field_mappings": [FIRST, None]}, "field_mappings must map at least one identifier"),
    ({"file_type": "csv", "field_mappings": [EMAIL, "zz9_T"]}, "no field definition has the id 'zz9_T'"),
    ({"file_type": "csv", "field_mappings": [EMAIL, "_rf21_D"]}, "field '_rf21_D' (created_at) is read-only"),
    ({"file_type": "csv", "field_mappings": [EMAIL], "list_ids": "l1"}, "list_ids must be an array of strings"),
])
async def test_import_start_refuses_bodies_the_spec_or_sendgrid_refuse(
    fake: FakeSendGrid, http: aiohttp.ClientSession, body: dict[str, Any], message: str
) -> None:
    """ImportContact answers 400 with a ContactsError for a body that breaks the spec or names no identifier."""
    status, answer = await call(http, "PUT", f"{fake.base_url}{IMPORTS}", json=body)
    assert 400 == status
    assert answer["errors"][0]["message"].startswith(message)
    assert not fake.jobs


async def test_multipart_upload_is_refused_and_fails_the_job(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A multipart/form-data upload gets S3's 403 XML and the job fails with SendGrid's field-mapping message."""
    started = await start_import(http, fake, [EMAIL])
    form = aiohttp.FormData()
    form.add_field("file", b"email\na@example.com\n", filename="contacts.csv", content_type="text/csv")
    headers = {k: v for k, v in signed(started).items() if k != "Content-Type"}
    status, text = await upload(started, form, headers)
    assert 403 == status
    assert "<Code>SignatureDoesNotMatch</Code>" in text
    clock.advance(fake.lifecycle.import_seconds)
    body = await job(http, fake, started["job_id"])
    assert "failed" == body["status"]
    assert [["email", "error"], ["", MAPPING_MISMATCH]] == await errors_csv(body)


@pytest.mark.parametrize("dropped", ["x-amz-server-side-encryption", "Content-Encoding"])
async def test_upload_without_a_signed_header_is_refused_and_can_be_retried(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock, dropped: str
) -> None:
    """Leaving out an upload header is S3's 403 SignatureDoesNotMatch; the job waits for a correct upload."""
    started = await start_import(http, fake, [EMAIL])
    headers = {k: v for k, v in signed(started).items() if k != dropped}
    status, text = await upload(started, gzip.compress(b"email\na@example.com\n"), headers)
    assert (403, True) == (status, "SignatureDoesNotMatch" in text)
    clock.advance(3600)
    assert "pending" == (await job(http, fake, started["job_id"]))["status"]
    assert 200 == (await upload(started, gzip.compress(b"email\na@example.com\n")))[0]
    clock.advance(fake.lifecycle.import_seconds)
    assert "completed" == (await job(http, fake, started["job_id"]))["status"]


async def test_upload_url_takes_only_a_signed_put(fake: FakeSendGrid, http: aiohttp.ClientSession) -> None:
    """The upload URL refuses POST and a URL without its signature, as a pre-signed S3 PUT does."""
    started = await start_import(http, fake, [EMAIL])
    assert 403 == (await upload(started, gzip.compress(b"email\n"), method="POST"))[0]
    unsigned = {**started, "upload_uri": started["upload_uri"].split("?")[0]}
    assert 403 == (await upload(unsigned, gzip.compress(b"email\n")))[0]


async def test_csv_whose_columns_do_not_match_the_mappings_fails_the_job(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A header row with more columns than field_mappings is accepted by the link but fails the job."""
    started = await start_import(http, fake, [EMAIL])
    assert 200 == (await upload(started, gzip.compress(b"email,first_name\na@example.com,A\n")))[0]
    clock.advance(fake.lifecycle.import_seconds)
    body = await job(http, fake, started["job_id"])
    assert ("failed", ["", MAPPING_MISMATCH]) == (body["status"], (await errors_csv(body))[1])


async def test_import_counts_creates_and_updates_then_exports_the_contacts(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """Imported rows land when the job ends; a later export's gzip CSV holds them in SendGrid's columns."""
    fake.add_contacts([{"email": "old@example.com", "first_name": "Old"}])
    rows = [["Email", "First", "Colour", "Points"], ["new@example.com", "New", "blue", "7"],
            ["OLD@example.com", "Older", "", ""], ["not-an-email", "X", "", ""]]
    started = await start_import(http, fake, [EMAIL, FIRST, COLOR, POINTS], list_ids=["list-1"])
    assert 200 == (await upload(started, gzip.compress(csv_bytes(rows))))[0]
    assert 1 == len(fake.contacts.snapshot(clock.now()))  # not before the job ends
    clock.advance(fake.lifecycle.import_seconds)
    results = (await job(http, fake, started["job_id"]))["results"]
    assert {"requested_count": 3, "created_count": 1, "updated_count": 1, "errored_count": 1} == {
        k: results[k] for k in ("requested_count", "created_count", "updated_count", "errored_count")}
    status, created = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json={"list_ids": ["list-1"]})
    assert (202, {"self"}) == (status, set(created["_metadata"]))
    assert "pending" == (await call(http, "GET", f"{fake.base_url}{EXPORTS}/{created['id']}"))[1]["status"]
    clock.advance(fake.lifecycle.export_seconds)
    _, ready = await call(http, "GET", f"{fake.base_url}{EXPORTS}/{created['id']}")
    assert ("ready", 2, "list_export", [{"ID": "list-1", "Name": "list-1"}]) == (
        ready["status"], ready["contact_count"], ready["export_type"], ready["lists"])
    status, data, content_type = await download(ready["urls"][0])
    assert (200, "application/gzip") == (status, content_type)
    table = list(csv.DictReader(io.StringIO(gzip.decompress(data).decode())))
    assert ["EMAIL", "FIRST_NAME", "LAST_NAME"] == list(table[0])[:3]
    assert {"CREATED_AT", "UPDATED_AT", "CONTACT_ID", "favorite_color", "PHONE_NUMBER_ID"} <= set(table[0])
    by_email = {row["EMAIL"]: row for row in table}
    assert ("New", "blue", "7") == (by_email["new@example.com"]["FIRST_NAME"],
                                    by_email["new@example.com"]["favorite_color"],
                                    by_email["new@example.com"]["loyalty_points"])
    assert "Older" == by_email["old@example.com"]["FIRST_NAME"]


async def test_export_failure_has_a_message_and_no_urls(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """With export_outcome=failure an export goes pending -> failure with the scripted message."""
    fake.set_lifecycle(export_outcome="failure", export_message="boom", export_seconds=5)
    _, created = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json={})
    clock.advance(5)
    _, body = await call(http, "GET", f"{fake.base_url}{EXPORTS}/{created['id']}")
    assert ("failure", "boom") == (body["status"], body["message"])
    assert "urls" not in body and "completed_at" not in body


async def test_export_urls_expire_with_s3s_error(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A download URL works until expires_at, then answers 403 "Request has expired"; a wrong signature is 403."""
    fake.add_contacts([{"email": "a@example.com"}])
    fake.set_lifecycle(export_url_ttl=60, export_seconds=0)
    _, created = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json={"file_type": "json"})
    _, body = await call(http, "GET", f"{fake.base_url}{EXPORTS}/{created['id']}")
    assert "2027-01-15T08:01:00Z" == body["expires_at"]
    url = body["urls"][0]
    status, data, _ = await download(url)
    assert (200, "a@example.com") == (status, json.loads(gzip.decompress(data))["email"])
    assert 403 == (await download(url.replace("Signature=", "Signature=0")))[0]
    clock.advance(61)
    status, data, _ = await download(url)
    assert (403, True) == (status, b"<Message>Request has expired</Message>" in data)


async def test_export_splits_into_files_and_lists_newest_first(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """Past export_file_bytes an export has several files, each with the header; together they hold every contact."""
    fake.add_contacts([{"email": f"user{i}@example.com"} for i in range(50)])
    fake.set_lifecycle(export_file_bytes=1500, export_seconds=0)
    _, first = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json={"max_file_size": 1})
    clock.advance(1)
    _, second = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json={"segment_ids": ["s1"]})
    _, body = await call(http, "GET", f"{fake.base_url}{EXPORTS}/{first['id']}")
    assert len(body["urls"]) > 2
    emails = []
    for url in body["urls"]:
        status, data, _ = await download(url)
        assert 200 == status
        rows = list(csv.reader(io.StringIO(zlib.decompress(data, wbits=31).decode())))
        assert "EMAIL" == rows[0][0]
        emails += [row[0] for row in rows[1:]]
    assert sorted(f"user{i}@example.com" for i in range(50)) == sorted(emails)
    _, listing = await call(http, "GET", f"{fake.base_url}{EXPORTS}")
    assert [second["id"], first["id"]] == [item["id"] for item in listing["result"]]
    assert "segment_export" == listing["result"][0]["export_type"]


async def test_export_start_refuses_a_bad_body(fake: FakeSendGrid, http: aiohttp.ClientSession) -> None:
    """ExportContact answers 400 for an unknown file_type or a non-integer max_file_size."""
    for body in ({"file_type": "xml"}, {"max_file_size": "big"}, {"list_ids": [1]}):
        status, answer = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json=body)
        assert (400, 1) == (status, len(answer["errors"]))
    assert 404 == (await call(http, "GET", f"{fake.base_url}{EXPORTS}/nope"))[0]


async def test_control_api_drives_lifecycle_exports_and_contacts(fake: FakeSendGrid, clock: ManualClock) -> None:
    """Another process can set lifecycle settings, fields, contacts and scripted exports, and read them back."""
    control = f"{fake.base_url}/_control"
    async with aiohttp.ClientSession() as plain:
        assert 200 == (await call(plain, "POST", f"{control}/lifecycle", json={"export_seconds": 9}))[0]
        assert 400 == (await call(plain, "POST", f"{control}/lifecycle", json={"bogus": 1}))[0]
        assert 9 == (await call(plain, "GET", f"{control}/lifecycle"))[1]["export_seconds"]
        new_fields = {"custom_fields": [{"id": "z1_T", "name": "team", "field_type": "Text"}]}
        assert 200 == (await call(plain, "POST", f"{control}/fields", json=new_fields))[0]
        added = {"contacts": [{"email": "a@example.com", "custom_fields": {"z1_T": "red"}}], "list_ids": ["l"]}
        assert (201, {"added": 1}) == await call(plain, "POST", f"{control}/contacts", json=added)
        _, listed = await call(plain, "GET", f"{control}/contacts")
        assert (1, {"z1_T": "red"}, ["l"]) == (listed["count"], listed["contacts"][0]["custom_fields"],
                                               listed["contacts"][0]["list_ids"])
        spec = {"id": "exp-1", "outcome": "failure", "pending_for": 2, "message": "nope"}
        assert 201 == (await call(plain, "POST", f"{control}/exports", json=spec))[0]
        assert 400 == (await call(plain, "POST", f"{control}/exports", json={"id": "x", "outcome": "odd"}))[0]
        async with aiohttp.ClientSession(headers=AUTH) as http:
            assert "pending" == (await call(http, "GET", f"{fake.base_url}{EXPORTS}/exp-1"))[1]["status"]
            clock.advance(2)
            assert "failure" == (await call(http, "GET", f"{fake.base_url}{EXPORTS}/exp-1"))[1]["status"]
        _, stats = await call(plain, "GET", f"{control}/stats")
        assert {"GET /v3/marketing/contacts/exports/{id}": 2} == stats["requests_by_route"]
        assert 200 == (await call(plain, "DELETE", f"{control}/contacts"))[0]
        assert 0 == (await call(plain, "GET", f"{control}/contacts"))[1]["count"]


async def test_put_and_delete_contacts_reach_the_store(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """PUT /v3/marketing/contacts stores contacts when its job ends; delete_all_contacts empties the store."""
    status, _ = await call(http, "PUT", f"{fake.base_url}/v3/marketing/contacts",
                           json={"contacts": [{"email": "a@example.com"}, {"external_id": "x-1"}]})
    assert 202 == status
    assert [] == fake.contacts.snapshot(clock.now())
    clock.advance(fake.default_pending_for)
    assert 2 == len(fake.contacts.snapshot(clock.now()))
    status, _ = await call(http, "DELETE", f"{fake.base_url}/v3/marketing/contacts?delete_all_contacts=true")
    assert (202, []) == (status, fake.contacts.snapshot(clock.now()))


async def _gzip_csv(rows: int) -> AsyncIterator[bytes]:
    """A gzip-compressed CSV of `rows` contacts (~1 kB each, mostly hex notes), produced piece by piece.

    The notes are random so the file compresses like real data; a run of equal letters would inflate a
    64 KiB chunk into megabytes and measure the test's data rather than the fake.
    """
    packer = zlib.compressobj(1, wbits=31)  # fastest: the test times the fake, not zlib
    noise = random.Random(14)
    yield packer.compress(b"email,first_name,last_name,notes\n")
    for start in range(0, rows, 250):
        text = "".join(f"user{i}@example.com,First{i},Last{i},{noise.randbytes(480).hex()}\n"
                       for i in range(start, min(rows, start + 250)))
        yield packer.compress(text.encode())
    yield packer.flush()


async def test_big_gzip_upload_streams_in_bounded_memory(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    """A ~50 MB CSV sent gzip-compressed is counted row by row in a tenth of its size; the store keeps 1,000."""
    rows = 50_000
    async with FakeSendGrid(clock=clock, contact_limit=1_000) as fake:
        await _upload_big(fake, http, clock, rows)


async def _upload_big(fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock, rows: int) -> None:
    started = await start_import(http, fake, [EMAIL, FIRST, LAST, None])
    tracemalloc.start()
    try:
        status, _ = await upload(started, _gzip_csv(rows))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 200 == status
    assert fake.imports.uploads[started["job_id"]].received_chars > 50_000_000
    assert peak < 5_000_000, f"peak {peak} bytes"
    clock.advance(fake.lifecycle.import_seconds)
    results = (await job(http, fake, started["job_id"]))["results"]
    assert (rows, rows, 0) == (results["requested_count"], results["created_count"], results["errored_count"])
    assert 1_000 == len(fake.contacts.snapshot(clock.now()))


async def test_body_that_is_not_gzip_fails_the_job_without_a_traceback(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain CSV sent as Content-Encoding: gzip is taken by the link, fails the job as unreadable, logs nothing."""
    started = await start_import(http, fake, [EMAIL])
    assert 200 == (await upload(started, b"email\na@example.com\n" * 1000))[0]
    refused = await start_import(http, fake, [EMAIL])
    headers = {k: v for k, v in signed(refused).items() if k != "Content-Type"}
    form = aiohttp.FormData()
    form.add_field("file", b"email\n" * 1000, filename="c.csv")
    assert 403 == (await upload(refused, form, headers))[0]
    clock.advance(fake.lifecycle.import_seconds)
    body = await job(http, fake, started["job_id"])
    assert "failed" == body["status"]
    assert (await errors_csv(body))[1][1].startswith("unreadable file")
    assert [] == [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


async def test_export_csv_imports_back_into_the_same_contacts(
    fake: FakeSendGrid, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A restore round trip: 300 contacts exported, deleted, imported from the export's file, exported again."""
    fake.set_lifecycle(export_seconds=0, import_seconds=0)
    fake.add_contacts([{"email": f"u{i}@example.com", "first_name": f'F"{i}",\nx', "custom_fields": {COLOR: f"c{i}"}}
                       for i in range(300)])  # quotes, a comma and a line break inside a field

    async def exported() -> bytes:
        _, created = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json={})
        _, body = await call(http, "GET", f"{fake.base_url}{EXPORTS}/{created['id']}")
        return (await download(body["urls"][0]))[1]

    before = await exported()
    _, fields = await call(http, "GET", f"{fake.base_url}/v3/marketing/field_definitions")
    ids = {f["name"].lower(): f["id"] for f in fields["custom_fields"]}
    ids |= {f["name"]: f["id"] for f in fields["reserved_fields"] if not f["read_only"]}
    header = next(csv.reader(io.StringIO(gzip.decompress(before).decode())))
    await call(http, "DELETE", f"{fake.base_url}/v3/marketing/contacts?delete_all_contacts=true")
    started = await start_import(http, fake, [ids.get(column.lower()) for column in header])
    assert 200 == (await upload(started, before))[0]
    assert (300, 300) == counts(await job(http, fake, started["job_id"]))

    def people(data: bytes) -> list[tuple[str, str, str]]:
        rows = csv.DictReader(io.StringIO(gzip.decompress(data).decode()))
        return sorted((row["EMAIL"], row["FIRST_NAME"], row["favorite_color"]) for row in rows)

    assert people(before) == people(await exported())
    assert 300 == len(people(before))


def counts(body: dict[str, Any]) -> tuple[int, int]:
    return body["results"]["requested_count"], body["results"]["created_count"]


def test_csv_stream_parses_records_split_anywhere() -> None:
    """Fed in pieces cut at any byte, the upload parser returns exactly the csv module's records."""
    rows = [["a", "b,c", 'd"e'], ["multi\nline", "x", ""], ["", "", ""], ["z", '"q"', "w\r\nv"], ["é", "ü", "ß"]] * 20
    data = ("\ufeff" + csv_bytes(rows).decode()).encode()
    expected = [row for row in rows if any(row)]
    for seed in range(50):
        cuts = random.Random(seed)
        stream, records, at = CsvStream(), [], 0
        while at < len(data):
            step = cuts.randint(1, 40)
            records += stream.feed(data[at:at + step])
            at += step
        assert expected == records + stream.feed(b"", final=True), seed


async def test_a_client_leaving_mid_download_is_no_server_error(
    fake: FakeSendGrid, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that resets the connection right after asking for an export file leaves no
    "Error handling request" traceback behind; the next download is whole."""
    fake.add_contacts([{"email": f"user{i}@example.com"} for i in range(50)])
    fake.set_lifecycle(export_seconds=0)
    _, created = await call(http, "POST", f"{fake.base_url}{EXPORTS}", json={})
    _, body = await call(http, "GET", f"{fake.base_url}{EXPORTS}/{created['id']}")
    url = urlsplit(body["urls"][0])
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        _, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        await writer.drain()
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                             struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not a polite close
        status, data, _ = await download(body["urls"][0])  # served after the first request was handled
    assert (200, 51) == (status, len(zlib.decompress(data, wbits=31).splitlines()))
    assert [] == [r.getMessage() for r in caplog.records if "Error handling request" in r.getMessage()]
