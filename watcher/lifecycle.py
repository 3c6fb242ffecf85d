"""Starting contact jobs the way SendGrid's spec says, where SDK users go wrong: imports and exports.

An import is two requests (PUT /v3/marketing/contacts/imports, then the file): the file goes in ONE raw
`PUT` to the answered `upload_uri` (never multipart: SendGrid would then import the multipart framing and
fail the job, telling only by e-mail), carrying every `upload_headers` entry exactly and nothing of ours:
no API key, no Content-Type of our choosing (the URI is an S3-style presigned one). The body is the CSV
gzip-compressed on the fly (zlib, level 1: compression must not be slower than the network) and streamed
from disk: a first pass measures the compressed length, because S3 refuses a chunked PUT and needs a
Content-Length; the second pass sends it. A transient failure restarts the stream from the start.

Answered URLs (upload_uri, export urls) go through watcher.net's one outbound policy, on a session
whose resolver drops refused addresses; API requests go through the account's session, rate budget and
key. Every failure is an exception with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from yarl import URL

from watcher.clock import Clock
from watcher.csvimport import FieldDefinitions, ImportPlan, is_gzip, parse_field_definitions
from watcher.errors import KeyRefused, SendGridError, StoreUnavailable, TryLater
from watcher.net import AnswerStatus, BodyTooLarge, OutboundPolicy, OutboundRefused, read_capped, shown_url
from watcher.ratelimit import RateBudget, retry_after_seconds
from watcher.sendgrid import USER_AGENT, SendGridSettings
from watcher.strictjson import strict_json

FIELDS_PATH = "/v3/marketing/field_definitions"
IMPORTS_PATH = "/v3/marketing/contacts/imports"
EXPORTS_PATH = "/v3/marketing/contacts/exports"
#: Tries of one API request, upload or download before its last failure is raised.
ATTEMPTS = 4
#: Waits before the 2nd, 3rd, ... try (a Retry-After overrides).
BACKOFF = (1.0, 4.0, 15.0)
MAX_ANSWER_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10
CHUNK = 256 << 10
GZIP_LEVEL = 1
#: Seconds an upload or download may wait for its answer's next bytes (S3 may take a while after the last).
TRANSFER_READ_TIMEOUT = 300.0
_MESSAGE_CHARS = 300
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the request's framing owns: an answer naming one is refused rather than obeyed or dropped.
_FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection", "expect"})
_S3_MESSAGE = re.compile(rb"<(Code|Message)>([^<]{1,300})</\1>")


class LifecycleError(SendGridError):
    """Starting or moving a contact job failed; the message is one line fit to show."""


class SendGridRefused(LifecycleError):
    """SendGrid refused the request (400, 404, 413, ...): retrying the same request cannot help."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"SendGrid refused {what} (HTTP {status}): {message}")
        self.status = status


class UploadFailed(LifecycleError):
    """The upload URI refused the file, or every try failed."""


class DownloadFailed(LifecycleError):
    """An export file could not be downloaded."""


class UrlExpired(DownloadFailed):
    """A download URL answered 403: it expired; ask GET /v3/marketing/contacts/exports/{id} for fresh URLs."""


class _NetworkFailure(Exception):
    """A request got no answer (timeout, refused or broken connection)."""


class AccountLike(Protocol):
    """What Lifecycle reads of a configured account (watcher.accounts.Account)."""

    name: str
    settings: SendGridSettings
    session: aiohttp.ClientSession
    budget: RateBudget


@dataclass(frozen=True, slots=True)
class ImportStarted:
    """SendGrid's answer to PUT /v3/marketing/contacts/imports."""

    job_id: str
    upload_uri: str
    upload_headers: tuple[tuple[str, str], ...]


class Lifecycle:
    """Field definitions, import start and upload, export start and download for one account."""

    def __init__(self, account: AccountLike, *, clock: Clock) -> None:
        self.account = account
        self._settings = account.settings
        self._clock = clock
        self._policy = OutboundPolicy.of(account.settings)
        self._base = account.settings.base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=account.settings.request_timeout)
        self._transfer_timeout = aiohttp.ClientTimeout(
            sock_connect=account.settings.request_timeout, sock_read=TRANSFER_READ_TIMEOUT)

    def __repr__(self) -> str:
        return f"Lifecycle(account={self.account.name!r}, base_url={self._base!r})"

    # --- the API ----------------------------------------------------------------------

    async def field_definitions(self) -> FieldDefinitions:
        """GET /v3/marketing/field_definitions: the reserved and custom fields."""
        data = await self._call("GET", FIELDS_PATH, None, "the field definitions request")
        try:
            return parse_field_definitions(data)
        except ValueError as exc:
            raise TryLater(f"malformed field definitions answer: {exc}") from None

    async def start_import(
        self, *, field_mappings: Sequence[str | None], list_ids: Sequence[str] = ()
    ) -> ImportStarted:
        """PUT /v3/marketing/contacts/imports; the job then waits for its file (`upload`)."""
        data = await self._call("PUT", IMPORTS_PATH, import_request(field_mappings, list_ids), "the import")
        return parse_import_started(data)

    async def start_export(
        self, *, list_ids: Sequence[str] = (), segment_ids: Sequence[str] = (), file_type: str = "csv"
    ) -> str:
        """POST /v3/marketing/contacts/exports; the export id (watch it with SendGridClient.get_export)."""
        data = await self._call("POST", EXPORTS_PATH, export_request(list_ids, segment_ids, file_type), "the export")
        export_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(export_id, str) or not export_id:
            raise TryLater("malformed export answer: no id")
        return export_id

    async def _call(self, method: str, path: str, body: Any, what: str) -> Any:
        """One API request with retries on 429, 5xx and network failures; the answer's JSON."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status, headers, raw = await self._request(method, path, body)
            except _NetworkFailure as exc:
                failure = TryLater(f"{what}: {exc}")
            else:
                if 200 <= status < 300:
                    try:
                        return strict_json(raw)
                    except ValueError as exc:
                        raise TryLater(f"malformed answer to {what}: {exc}", status=status) from None
                message = error_text(raw)
                if status in (401, 403):
                    raise KeyRefused(status, message)
                if status != 429 and status < 500:
                    raise SendGridRefused(what, status, message)
                seconds = retry_after_seconds(headers.get("Retry-After"), self._clock.now())
                failure = TryLater(f"{what}: HTTP {status}: {message}", retry_after=seconds, status=status)
            if attempt == ATTEMPTS:
                raise failure
            if failure.retry_after is None and failure.status != 429:  # else the budget's acquire waits
                await self._clock.sleep(backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _request(self, method: str, path: str, body: Any) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of one request through the budget; a body over its cap reads as b""."""
        try:
            await self.account.budget.acquire()
        except StoreUnavailable as exc:
            raise TryLater("rate budget unavailable") from exc
        try:
            async with self.account.session.request(
                method, f"{self._base}{path}", json=body, headers=self._api_headers(), timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                self.account.budget.observe(response.headers, response.status)
                ok = 200 <= response.status < 300
                try:
                    raw = await read_capped(response, MAX_ANSWER_BYTES if ok else MAX_ERROR_BYTES)
                except BodyTooLarge:
                    raw = b""  # not JSON: a 2xx is then malformed, an error has no message
                return response.status, response.headers, raw
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # No str(exc): aiohttp errors may carry the request, key included.
            kind = "timed out" if isinstance(exc, TimeoutError) else "connection failed"
            raise _NetworkFailure(f"{kind} ({type(exc).__name__}) at {shown_url(self._base)}") from None
        finally:
            self.account.budget.release()

    def _api_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT,
                   "Authorization": f"Bearer {self._settings.api_key.reveal()}"}
        if self._settings.on_behalf_of:
            headers["On-Behalf-Of"] = self._settings.on_behalf_of
        return headers

    # --- answered URLs: the upload and the downloads ---------------------------------

    async def upload(self, started: ImportStarted, csv_path: Path) -> int:
        """The file in one raw PUT to upload_uri with exactly its upload_headers; the bytes sent.

        A gzip file (an export's) goes as it is; any other is compressed on the fly.
        """
        url = self._answered(started.upload_uri, UploadFailed)
        headers = dict(started.upload_headers)
        already = is_gzip(csv_path)
        size = (await asyncio.to_thread(csv_path.stat)).st_size if already else await _gzip_size(csv_path)
        headers["Content-Length"] = str(size)
        skip = () if any(name.lower() == "content-type" for name in headers) else ("Content-Type",)
        shown = shown_url(started.upload_uri, path=True)
        failure = ""
        async with self._policy.make_session(auto_decompress=False) as session:
            for attempt in range(ATTEMPTS):
                if attempt:
                    await self._clock.sleep(backoff(attempt))
                body = _file_chunks(csv_path, size) if already else _gzip_chunks(csv_path, size)
                try:
                    async with session.put(url, data=body, headers=headers, skip_auto_headers=skip,
                                           allow_redirects=False, timeout=self._transfer_timeout) as response:
                        if 200 <= response.status < 300:
                            return size
                        detail = _s3_error(await _error_body(response))
                        failure = f"HTTP {response.status}{f': {detail}' if detail else ''}"
                        if response.status != 429 and response.status < 500:
                            raise UploadFailed(f"the upload to {shown} was refused ({failure})")
                except aiohttp.ClientConnectorError as exc:
                    _raise_refused(exc, started.upload_uri)
                    failure = f"connection failed ({type(exc).__name__})"
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    failure = f"{'timed out' if isinstance(exc, TimeoutError) else 'connection failed'} "\
                        f"({type(exc).__name__})"
        raise UploadFailed(f"the upload to {shown} failed {ATTEMPTS} times; last: {failure}")

    async def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> tuple[int, str]:
        """GET an export file into `dest` (written whole or not at all): (bytes, sha256 hex).

        Streamed, redirects checked hop by hop, retried from the start on transient failures;
        UrlExpired on 403, BodyTooLarge past `max_bytes`.
        """
        self._answered(url, DownloadFailed)
        part = dest.with_name(f".{dest.name}.part")
        failure = ""
        try:
            async with self._policy.make_session(auto_decompress=False) as session:
                for attempt in range(ATTEMPTS):
                    if attempt:
                        await self._clock.sleep(backoff(attempt))
                    try:
                        size, digest = await self._fetch_to(session, url, part, max_bytes)
                    except AnswerStatus as exc:
                        if exc.status == 403:
                            raise UrlExpired(f"the download URL {shown_url(url, path=True)} has expired "
                                             "(HTTP 403): ask for the export's URLs again") from None
                        if exc.status != 429 and exc.status < 500:
                            raise DownloadFailed(f"download refused: {exc}") from None
                        failure = str(exc)
                        continue
                    except aiohttp.ClientConnectorError as exc:
                        _raise_refused(exc, url)
                        failure = f"connection failed ({type(exc).__name__})"
                        continue
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        failure = f"{'timed out' if isinstance(exc, TimeoutError) else 'connection failed'} "\
                            f"({type(exc).__name__})"
                        continue
                    os.replace(part, dest)
                    return size, digest
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        raise DownloadFailed(f"the download of {shown_url(url, path=True)} failed {ATTEMPTS} times; last: {failure}")

    async def _fetch_to(
        self, session: aiohttp.ClientSession, url: str, part: Path, max_bytes: int | None
    ) -> tuple[int, str]:
        """One try: follow checked redirects, then stream the 200 body into `part`."""
        current = url
        for _ in range(6):  # watcher.net.MAX_REDIRECTS hops, as fetch_answered
            self._policy.check_answered(current)
            async with session.get(URL(current, encoded=True), allow_redirects=False,
                                   timeout=self._transfer_timeout) as response:
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    current = str(URL(current).join(URL(response.headers["Location"])))
                    continue
                if response.status != 200:
                    raise AnswerStatus(response.status, current)
                if max_bytes is not None and (response.content_length or 0) > max_bytes:
                    raise BodyTooLarge(max_bytes)
                digest, size = hashlib.sha256(), 0
                with part.open("wb") as out:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            raise BodyTooLarge(max_bytes)
                        digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
                    await asyncio.to_thread(os.fsync, out.fileno())
                return size, digest.hexdigest()
        raise OutboundRefused(f"too many redirects from {shown_url(url, path=True)}")

    def _answered(self, url: str, error: type[LifecycleError]) -> URL:
        """An answered URL as it is to be sent (its signature untouched), once the policy allows it."""
        if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
            raise error(f"SendGrid answered an unusable URL: {shown_url(url, path=True)}")
        self._policy.check_answered(url)
        return URL(url, encoded=True)


async def import_csv(
    lifecycle: Lifecycle, csv_path: Path, plan: ImportPlan, *, list_ids: Sequence[str] = ()
) -> ImportStarted:
    """Start the import of a planned file and upload it: the started job."""
    started = await lifecycle.start_import(field_mappings=plan.field_mappings, list_ids=list_ids)
    await lifecycle.upload(started, csv_path)
    return started


def backoff(attempt: int) -> float:
    """Seconds to wait after failed try number `attempt` (1-based)."""
    return BACKOFF[min(attempt, len(BACKOFF)) - 1]


# --- requests and answers (pure) ------------------------------------------------------------


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


def error_text(body: bytes) -> str:
    """Every message of `{"errors": [...]}` or `{"errors": {...}}` on one line ("field: message; ...")."""
    try:
        data = strict_json(body)
    except ValueError:
        data = None
    errors = data.get("errors") if isinstance(data, dict) else None
    items = errors if isinstance(errors, list) else [errors]
    texts = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("message"), str):
            where = item.get("field") or item.get("parameter")
            texts.append(f"{where}: {item['message']}" if isinstance(where, str) and where else item["message"])
    text = " ".join("; ".join(texts).split())
    return text[:_MESSAGE_CHARS] if text else "no message"


def _s3_error(body: bytes) -> str:
    """`Code: Message` of an S3 XML error, else the body's first line."""
    found = dict(_S3_MESSAGE.findall(body))
    if found:
        return ": ".join(v.decode("utf-8", "replace") for k, v in sorted(found.items()))
    return " ".join(body.decode("utf-8", "replace").split())[:_MESSAGE_CHARS]


async def _error_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await read_capped(response, MAX_ERROR_BYTES)
    except (BodyTooLarge, aiohttp.ClientError, TimeoutError):
        return b""


def _raise_refused(exc: aiohttp.ClientConnectorError, url: str) -> None:
    """The policy's refusal from inside a connection attempt, raised as itself."""
    refused = exc.os_error if isinstance(exc.os_error, OutboundRefused) else exc.__cause__
    if isinstance(refused, OutboundRefused):
        raise OutboundRefused(f"refusing {shown_url(url, path=True)}: {refused}") from None


# --- the file, streamed -----------------------------------------------------------------------


async def _gzip_size(path: Path) -> int:
    """The length of the file gzip-compressed, computed streaming (a first pass of the upload)."""
    size = 0
    async for chunk in _gzip_chunks(path, None):
        size += len(chunk)
    return size


async def _gzip_chunks(path: Path, expected: int | None) -> AsyncIterator[bytes]:
    """The file gzip-compressed, chunk by chunk; UploadFailed if it changed since it was measured."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    sent = 0
    with path.open("rb") as file:
        while data := await asyncio.to_thread(file.read, CHUNK):
            if out := compressor.compress(data):
                sent += len(out)
                yield out
    out = compressor.flush()
    sent += len(out)
    if expected is not None and sent != expected:
        raise UploadFailed(f"{path.name} changed during the upload")
    yield out


async def _file_chunks(path: Path, expected: int) -> AsyncIterator[bytes]:
    """The file as it is, chunk by chunk."""
    sent = 0
    with path.open("rb") as file:
        while data := await asyncio.to_thread(file.read, CHUNK):
            sent += len(data)
            yield data
    if sent != expected:
        raise UploadFailed(f"{path.name} changed during the upload")
