"""The fake's contact exports: ExportContact, GetExportContact, ListExportContact and the file links.

An export snapshots the contact store when it is requested, is `pending` for
the configured time, then `ready` with one pre-signed download URL per file
(or `failure` with a message). A file holds whole rows and starts a new one
past `max_file_size` MB of uncompressed text (or the test's
`export_file_bytes`). The links serve the file gzip-compressed, streamed
(`Content-Type: application/gzip`, no Content-Encoding, so clients keep the
bytes they checksum), and answer S3's 403 "Request has expired" after
`expires_at`. CSV files carry the export columns of `Fields.export_columns`;
JSON files hold one contact object per line.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from watcher.testing.fake_contacts import Contact
from watcher.testing.fake_lifecycle import expired, no_such_key, signature, signature_mismatch
from watcher.testing.jobs import iso
from watcher.testing.responses import sendgrid_error

if TYPE_CHECKING:
    from watcher.testing.fake_sendgrid import FakeSendGrid

MB = 1_000_000
_ROWS_PER_WRITE = 500


@dataclass(slots=True)
class Export:
    """One export job: its timeline, its snapshot and how the snapshot splits into files."""

    id: str
    created_at: float
    ready_at: float
    outcome: str
    message: str
    expires_at: float
    file_type: str
    list_ids: tuple[str, ...]
    segment_ids: tuple[str, ...]
    token: str
    lines: list[str]  # the header (CSV) then one rendered line per contact
    files: list[tuple[int, int]]  # [start, end) ranges of contact lines per file

    def status(self, now: float) -> str:
        """pending, then the outcome."""
        return "pending" if now < self.ready_at else self.outcome

    @property
    def export_type(self) -> str:
        if self.segment_ids:
            return "segment_export"
        return "list_export" if self.list_ids else "contacts_export"

    def url(self, link_base: str, index: int) -> str:
        """The pre-signed download URL of file `index`."""
        ttl = max(0, round(self.expires_at - self.ready_at))
        return (f"{link_base}/_exports/{self.id}/{index}.{self.file_type}.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Expires={ttl}&X-Amz-Signature={self.token}")

    def document(self, now: float, link_base: str) -> dict[str, Any]:
        """The ContactExport body as seen at `now`."""
        status = self.status(now)
        body: dict[str, Any] = {
            "id": self.id, "status": status, "created_at": iso(self.created_at),
            "updated_at": iso(self.created_at if status == "pending" else self.ready_at),
            "expires_at": iso(self.expires_at), "export_type": self.export_type,
            "segments": [{"ID": i, "Name": i} for i in self.segment_ids],
            "lists": [{"ID": i, "Name": i} for i in self.list_ids],
            "_metadata": {"self": f"{link_base}/v3/marketing/contacts/exports/{self.id}"},
        }
        if status == "ready":
            body["completed_at"] = iso(self.ready_at)
            body["urls"] = [self.url(link_base, i) for i in range(len(self.files))]
            body["contact_count"] = len(self.lines) - (self.file_type == "csv")
        elif status == "failure":
            body["message"] = self.message
        return body

    def file_lines(self, index: int) -> Iterator[str]:
        """The lines of file `index`, the CSV header first."""
        start, end = self.files[index]
        if self.file_type == "csv":
            yield self.lines[0]
        yield from self.lines[start:end]


class Exports:
    """Start, read and serve exports, for one fake."""

    __slots__ = ("exports", "fake")

    def __init__(self, fake: FakeSendGrid) -> None:
        self.fake = fake
        self.exports: dict[str, Export] = {}

    def create(self, export_id: str, *, file_type: str = "csv", list_ids: tuple[str, ...] = (),
               segment_ids: tuple[str, ...] = (), max_file_size: int = 5000, outcome: str | None = None,
               pending_for: float | None = None, message: str | None = None,
               url_ttl: float | None = None) -> Export:
        """Make an export of the contacts there now; unset arguments come from the lifecycle settings."""
        settings, now = self.fake.lifecycle, self.fake.clock.now()
        outcome = outcome or settings.export_outcome
        if outcome not in ("ready", "failure") or file_type not in ("csv", "json"):
            raise ValueError("outcome must be ready or failure, file_type csv or json")
        ready_at = now + (settings.export_seconds if pending_for is None else pending_for)
        contacts = self.fake.contacts.snapshot(now, list_ids) if outcome == "ready" else []
        lines = self._render(contacts, file_type)
        limit = settings.export_file_bytes or max_file_size * MB
        export = Export(
            id=export_id, created_at=now, ready_at=ready_at, outcome=outcome,
            message=message or settings.export_message,
            expires_at=ready_at + (settings.export_url_ttl if url_ttl is None else url_ttl),
            file_type=file_type, list_ids=list_ids, segment_ids=segment_ids, token=signature(),
            lines=lines, files=_split(lines, file_type, limit))
        self.exports[export_id] = export
        return export

    def _render(self, contacts: list[Contact], file_type: str) -> list[str]:
        """The file lines of these contacts: a CSV header and rows, or JSON objects."""
        fields = self.fake.fields
        if file_type == "json":
            names = {f.id: f.name for f in fields.custom}
            return [json.dumps({**c.document(), "custom_fields": {names.get(k, k): v for k, v in c.custom.items()}})
                    + "\n" for c in contacts]
        columns = fields.export_columns()
        rows: list[list[str]] = [[header for header, _, _ in columns]]
        for contact in contacts:
            meta = {"id": contact.id, "created_at": iso(contact.created_at), "updated_at": iso(contact.updated_at)}
            source = {"reserved": contact.fields, "custom": contact.custom, "meta": meta}
            rows.append([source[kind].get(key, "") for _, kind, key in columns])
        return [_csv_line(row) for row in rows]

    async def start(self, request: web.Request) -> web.StreamResponse:
        """POST /v3/marketing/contacts/exports: 202 {"id", "_metadata"}."""
        try:
            body = await request.json() if request.can_read_body else {}
        except (ValueError, web.RequestPayloadError):
            return sendgrid_error(400, "invalid JSON body")
        try:
            options = _options(body)
        except ValueError as exc:
            return sendgrid_error(400, exc.args[0], exc.args[1])
        export = self.create(str(uuid.uuid4()), **options)
        link = self.fake.link_base(request)
        return web.json_response({"id": export.id, "_metadata": {
            "self": f"{link}/v3/marketing/contacts/exports/{export.id}"}}, status=202)

    async def status(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/marketing/contacts/exports/{id}: the ContactExport, or 404."""
        export = self.exports.get(request.match_info["id"])
        if export is None:
            return sendgrid_error(404, "export not found")
        return web.json_response(export.document(self.fake.clock.now(), self.fake.link_base(request)))

    async def listing(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/marketing/contacts/exports: every export, newest first."""
        now, link = self.fake.clock.now(), self.fake.link_base(request)
        result = [{**e.document(now, link), "user_id": "1"}
                  for e in sorted(self.exports.values(), key=lambda e: e.created_at, reverse=True)]
        return web.json_response({"result": result, "_metadata": {"self": f"{link}/v3/marketing/contacts/exports"}})

    async def download(self, request: web.Request) -> web.StreamResponse:
        """GET {url}: the file gzip-compressed and streamed; S3's errors for a wrong, expired or unknown link."""
        export = self.exports.get(request.match_info["id"])
        name = request.match_info["name"]
        if export is None or request.query.get("X-Amz-Signature") != export.token:
            return signature_mismatch("unknown export or wrong X-Amz-Signature")
        now = self.fake.clock.now()
        if now > export.expires_at:
            return expired(export.expires_at, now)
        index_text, _, suffix = name.partition(".")
        if export.status(now) != "ready" or suffix != f"{export.file_type}.gz" or not index_text.isdigit() \
                or int(index_text) >= len(export.files):
            return no_such_key()
        response = web.StreamResponse(headers={"Content-Type": "application/gzip"})
        try:
            await response.prepare(request)
            packer = zlib.compressobj(wbits=31)  # gzip
            batch: list[str] = []
            for line in export.file_lines(int(index_text)):
                batch.append(line)
                if len(batch) >= _ROWS_PER_WRITE:
                    await response.write(packer.compress("".join(batch).encode()))
                    batch.clear()
            await response.write(packer.compress("".join(batch).encode()) + packer.flush())
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-download, as clients do: nothing to answer
            pass
        return response


def _options(body: object) -> dict[str, Any]:
    """create() arguments from an ExportContact body; ValueError(message, field) when it breaks the spec."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object", None)
    options: dict[str, Any] = {}
    for name in ("list_ids", "segment_ids"):
        ids = body.get(name, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{name} must be an array of strings", name)
        options[name] = tuple(ids)
    file_type = body.get("file_type", "csv")
    if file_type not in ("csv", "json"):
        raise ValueError("file_type must be csv or json", "file_type")
    size = body.get("max_file_size", 5000)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError("max_file_size must be a positive integer (MB)", "max_file_size")
    notifications = body.get("notifications", {})
    if not isinstance(notifications, dict) or not isinstance(notifications.get("email", False), bool):
        raise ValueError("notifications must be an object with a boolean email", "notifications")
    return {**options, "file_type": file_type, "max_file_size": size}


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue()


def _split(lines: list[str], file_type: str, limit: int) -> list[tuple[int, int]]:
    """[start, end) line ranges so each file stays within `limit` characters; at least one row each, one file."""
    first = 1 if file_type == "csv" else 0
    header = len(lines[0]) if first else 0
    files: list[tuple[int, int]] = []
    start, size = first, header
    for index in range(first, len(lines)):
        if index > start and size + len(lines[index]) > limit:
            files.append((start, index))
            start, size = index, header
        size += len(lines[index])
    files.append((start, len(lines)))
    return files
