"""The requests that start contact jobs and what their answers mean, as pure functions (watcher.lifecycle
sends them): the ImportContact and ExportContact bodies, the import's answer (a job id, the upload URI and
the headers the upload must carry, each checked to be an HTTP header we may send), SendGrid's and S3's
error bodies as one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from watcher.errors import TryLater

FIELDS_PATH = "/v3/marketing/field_definitions"
IMPORTS_PATH = "/v3/marketing/contacts/imports"
EXPORTS_PATH = "/v3/marketing/contacts/exports"
_MESSAGE_CHARS = 300
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the request's framing owns: an answer naming one is refused rather than obeyed or dropped.
_FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection", "expect"})
_S3_MESSAGE = re.compile(rb"<(Code|Message)>([^<]{1,300})</\1>")


@dataclass(frozen=True, slots=True)
class ImportStarted:
    """SendGrid's answer to PUT /v3/marketing/contacts/imports."""

    job_id: str
    upload_uri: str
    upload_headers: tuple[tuple[str, str], ...]


def import_request(field_mappings: Sequence[str | None], list_ids: Sequence[str] = ()) -> dict[str, Any]:
    """The ImportContact body."""
    body: dict[str, Any] = {"file_type": "csv", "field_mappings": list(field_mappings)}
    if list_ids:
        body["list_ids"] = list(list_ids)
    return body


def export_request(list_ids: Sequence[str], segment_ids: Sequence[str], file_type: str) -> dict[str, Any]:
    """The ExportContact body (no lists and no segments: every contact)."""
    if file_type not in ("csv", "json"):
        raise ValueError(f"file type must be csv or json, not {file_type!r}")
    body: dict[str, Any] = {"file_type": file_type}
    if list_ids:
        body["list_ids"] = list(list_ids)
    if segment_ids:
        body["segment_ids"] = list(segment_ids)
    return body


def parse_import_started(data: Any) -> ImportStarted:
    """The ImportContact 200 answer; TryLater when it lacks what the upload needs."""
    if not isinstance(data, dict):
        raise TryLater("malformed import answer: not an object")
    job_id, uri, headers = data.get("job_id"), data.get("upload_uri"), data.get("upload_headers") or []
    if not isinstance(job_id, str) or not job_id or not isinstance(uri, str) or not uri:
        raise TryLater("malformed import answer: no job_id or upload_uri")
    pairs: list[tuple[str, str]] = []
    for item in headers if isinstance(headers, list) else [headers]:
        name = item.get("header") if isinstance(item, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(name, str) or not _TOKEN.fullmatch(name) or not isinstance(value, str) \
                or any(c in value for c in "\r\n\0"):
            raise TryLater("malformed import answer: an upload_headers entry is no HTTP header")
        if name.lower() in _FRAMING:
            raise TryLater(f"malformed import answer: upload_headers sets {name}, which the upload itself sets")
        pairs.append((name, value))
    return ImportStarted(job_id, uri, tuple(pairs))


def s3_error(body: bytes) -> str:
    """`Code: Message` of an S3 XML error, else the body's first line."""
    found = dict(_S3_MESSAGE.findall(body))
    if found:
        return ": ".join(v.decode("utf-8", "replace") for k, v in sorted(found.items()))
    return " ".join(body.decode("utf-8", "replace").split())[:_MESSAGE_CHARS]
