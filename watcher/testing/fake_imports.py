"""The fake's CSV import: `PUT /v3/marketing/contacts/imports` and the pre-signed upload URL it hands out.

Starting an import validates the body as the ImportContact operation says
(file_type csv, 1+ field_mappings of field ids or null, at least one
identifier, list_ids strings) and answers the job id, an `upload_uri` on this
fake and the `upload_headers` the upload must carry. The upload URL then acts
like S3: only a PUT carrying every upload header with its value is taken, and
a multipart body is refused (and, as SendGrid does, the job fails with "the
field mapping doesn't match the CSV"). The body is parsed as it streams in
(aiohttp undoes the gzip Content-Encoding chunk by chunk); the header row must
have one column per field mapping, each row needs an identifier, and the
accepted contacts land in the contact store when the job finishes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from watcher.testing.fake_contacts import ContactRow
from watcher.testing.fake_csvstream import CsvStream
from watcher.testing.fake_fields import IDENTIFIERS
from watcher.testing.fake_lifecycle import signature, signature_mismatch
from watcher.testing.jobs import Job, outcome_of
from watcher.testing.responses import sendgrid_error

if TYPE_CHECKING:
    from watcher.testing.fake_sendgrid import FakeSendGrid

# What SendGrid e-mails when the uploaded file's columns do not fit field_mappings (sendgrid-java#692).
MAPPING_MISMATCH = ("Failed to preprocess input csv: we were unable to upload your contacts "
                    "because the field mapping doesn't match the CSV.")
UPLOAD_HEADERS = (("Content-Encoding", "gzip"), ("Content-Type", "text/csv"),
                  ("x-amz-server-side-encryption", "aws:kms"))
MAX_ERROR_ROWS = 1_000  # rows kept for the errors CSV; the count goes on


@dataclass(slots=True)
class Upload:
    """An import waiting for its file, and then what the file held."""

    job_id: str
    token: str
    columns: list[tuple[str, str] | None]  # per CSV column: ("reserved", name) / ("custom", id) / skipped
    list_ids: tuple[str, ...]
    done: bool = False
    rows: int = 0
    received_chars: int = 0
    outcome: str = "pending"
    errors: list[tuple[str, str]] = field(default_factory=list)
    errored: int = 0

    def document(self) -> dict[str, Any]:
        """What the control API reports about this upload."""
        return {"job_id": self.job_id, "done": self.done, "rows": self.rows,
                "received_chars": self.received_chars, "outcome": self.outcome}


class Imports:
    """Start CSV imports and take their uploads, for one fake."""

    __slots__ = ("fake", "uploads")

    def __init__(self, fake: FakeSendGrid) -> None:
        self.fake = fake
        self.uploads: dict[str, Upload] = {}

    async def start(self, request: web.Request) -> web.StreamResponse:
        """PUT /v3/marketing/contacts/imports: a job pending until its CSV is uploaded."""
        try:
            body = await request.json()
        except (ValueError, web.RequestPayloadError):
            return sendgrid_error(400, "invalid JSON body")
        if not isinstance(body, dict) or body.get("file_type") != "csv":
            return sendgrid_error(400, "file_type must be csv", "file_type")
        list_ids = body.get("list_ids", [])
        if not isinstance(list_ids, list) or not all(isinstance(i, str) for i in list_ids):
            return sendgrid_error(400, "list_ids must be an array of strings", "list_ids")
        try:
            columns = self._columns(body.get("field_mappings"))
        except ValueError as exc:
            return sendgrid_error(400, str(exc), "field_mappings")
        job_id = str(uuid.uuid4())
        upload = Upload(job_id, signature(), columns, tuple(list_ids))
        self.uploads[job_id] = upload
        self.fake.jobs[job_id] = Job.awaiting_upload(job_id, self.fake.clock.now())
        return web.json_response({
            "job_id": job_id,
            "upload_uri": f"{self.fake.link_base(request)}/_upload/{job_id}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                          f"&X-Amz-SignedHeaders=content-encoding%3Bcontent-type%3Bhost%3B"
                          f"x-amz-server-side-encryption&X-Amz-Signature={upload.token}",
            "upload_headers": [{"header": name, "value": value} for name, value in UPLOAD_HEADERS],
        })

    def _columns(self, mappings: object) -> list[tuple[str, str] | None]:
        """What each CSV column writes; ValueError when field_mappings break the spec or name no identifier."""
        if not isinstance(mappings, list) or not mappings:
            raise ValueError("field_mappings must hold at least 1 item")
        columns: list[tuple[str, str] | None] = []
        for item in mappings:
            if item is None:
                columns.append(None)
            elif isinstance(item, str):
                columns.append(self.fake.fields.resolve(item))
            else:
                raise ValueError("field_mappings items must be field definition ids or null")
        if not any(c is not None and c[0] == "reserved" and c[1] in IDENTIFIERS for c in columns):
            raise ValueError("field_mappings must map at least one identifier field "
                             "(email, phone_number_id, external_id or anonymous_id)")
        return columns

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """{upload_uri}: take the CSV as a raw PUT, as S3 would, and let the import job run."""
        refusal = await self._take(request)
        if refusal is not None:
            await _drain(request)
        response = refusal or web.Response(status=200, headers={"ETag": f'"{request.match_info["id"]}"'})
        if request.content.exception() is not None:
            # aiohttp would read a broken body again after us and log its error: answer, then hang up.
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response

    async def _take(self, request: web.Request) -> web.StreamResponse | None:
        """Take the upload; None once taken, else the S3-style refusal."""
        upload = self.uploads.get(request.match_info["id"])
        if upload is None or request.query.get("X-Amz-Signature") != upload.token:
            return signature_mismatch("unknown upload or wrong X-Amz-Signature")
        if request.method != "PUT":
            return signature_mismatch(f"this URL is signed for PUT, not {request.method}")
        if request.content_type.startswith("multipart/"):
            self._fail(upload, MAPPING_MISMATCH)
            return signature_mismatch("the Content-Type is signed as text/csv; send the file as the raw body, "
                                      "not multipart/form-data")
        for name, value in UPLOAD_HEADERS:
            if request.headers.get(name, "").lower() != value.lower():
                return signature_mismatch(f"header {name}: {value} is signed and must be sent")
        if upload.done:
            return web.Response(status=409, text="already uploaded")
        upload.done = True
        try:
            await self._read(upload, request)
        except (ValueError, web.RequestPayloadError) as exc:  # bad CSV or UTF-8; broken gzip or cut body
            self._fail(upload, f"unreadable file: {str(exc).strip()}")
        return None

    async def _read(self, upload: Upload, request: web.Request) -> None:
        """Stream the body: check the header row, judge and stage each row."""
        stream = CsvStream()
        header_seen = False
        kept: list[ContactRow] = []
        keys: set[str] = set()
        created = updated = 0
        store = self.fake.contacts
        room = store.room()
        identifiers = sorted(((IDENTIFIERS.index(c[1]), i, c[1]) for i, c in enumerate(upload.columns)
                              if c is not None and c[0] == "reserved" and c[1] in IDENTIFIERS))
        final = False
        while not final:
            chunk = await request.content.readany()
            final = not chunk
            upload.received_chars += len(chunk)
            for record in stream.feed(chunk, final=final):
                if not header_seen:
                    header_seen = True
                    if len(record) != len(upload.columns):
                        self._fail(upload, MAPPING_MISMATCH)
                        await _drain(request)
                        return
                    continue
                upload.rows += 1
                key, email = _judge(record, identifiers)
                if key is None:
                    upload.errored += 1
                    if len(upload.errors) < MAX_ERROR_ROWS:
                        upload.errors.append((email, "invalid email" if email else "email is required"))
                    continue
                if key in keys or store.knows(key):
                    updated += 1
                else:
                    created += 1
                if len(kept) < room:
                    kept.append(_row(upload.columns, record))
                    keys.add(key)
        if not header_seen:
            self._fail(upload, "unreadable file: empty file")
            return
        self._finish(upload, kept, created, updated)

    def _finish(self, upload: Upload, kept: list[ContactRow], created: int, updated: int) -> None:
        """End the job after the processing time with the file's counts; stage its contacts."""
        now, settings = self.fake.clock.now(), self.fake.lifecycle
        due = now + settings.import_seconds
        outcome = settings.import_outcome or outcome_of(upload.rows, upload.errored)
        upload.outcome = outcome
        job = self.fake.jobs[upload.job_id]
        job.finish(due, outcome, requested=upload.rows, created=created, updated=updated,
                   errored=upload.errored, error_rows=upload.errors)
        if outcome != "failed":
            self.fake.contacts.stage(kept, due, upload.list_ids)

    def _fail(self, upload: Upload, reason: str) -> None:
        """The job fails after the processing time with `reason` as its only error row."""
        upload.done, upload.outcome = True, "failed"
        job = self.fake.jobs[upload.job_id]
        job.finish(self.fake.clock.now() + self.fake.lifecycle.import_seconds, "failed", requested=upload.rows,
                   created=0, updated=0, errored=upload.rows, error_rows=[("", reason)])


def _judge(record: list[str], identifiers: list[tuple[int, int, str]]) -> tuple[str | None, str]:
    """(store key or None when SendGrid would reject the row, its e-mail) - the hot loop of a big upload.

    Same verdict and key as `identifier_problem` and `ContactRow.of`, without building the row.
    """
    email = ""
    for _, column, name in identifiers:
        value = record[column].strip() if column < len(record) else ""
        if name == "email":
            email = value.lower()
            if email and "@" not in email:
                return None, email
            if email:
                return f"email:{email}", email
        elif value:
            return f"{name}:{value}", email
    return None, email


def _row(columns: list[tuple[str, str] | None], record: list[str]) -> ContactRow:
    """The contact one CSV record writes (extra or missing cells are ignored)."""
    fields: dict[str, str] = {}
    custom: dict[str, str] = {}
    for column, value in zip(columns, record, strict=False):
        if column is not None and value:
            (fields if column[0] == "reserved" else custom)[column[1]] = value
    return ContactRow.of(fields, custom)


async def _drain(request: web.Request) -> None:
    """Read the rest of the body without keeping it; a body that cannot be decoded just ends."""
    try:
        while await request.content.readany():
            pass
    except web.RequestPayloadError:
        return
