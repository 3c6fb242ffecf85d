"""Starting contact jobs the way SendGrid's spec says, where SDK users go wrong: imports and exports.

An import is two requests (PUT /v3/marketing/contacts/imports, then the file): the file goes in ONE raw
`PUT` to the answered `upload_uri` (never multipart: SendGrid would then import the multipart framing and
fail the job, telling only by e-mail), carrying every `upload_headers` entry exactly and nothing of ours:
no API key, no Content-Type of our choosing (the URI is an S3-style presigned one). The body is the CSV
gzip-compressed on the fly (zlib, level 1: compression must not be slower than the network) and streamed
from disk: a first pass measures the compressed length, because S3 refuses a chunked PUT and needs a
Content-Length; the second pass sends it. A transient failure restarts the stream from the start.

Answered URLs (upload_uri, export urls) go through watcher.net's one outbound policy (`open_answered`),
on a session whose resolver drops refused addresses; API requests go through the account's session, rate
budget and key. Every try of a request, upload or download runs in one retry loop (`_retried`); the
bodies and answers are built and read in watcher.lifecycle_requests. Every failure is an exception with
a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from watcher.clock import Clock
from watcher.csvimport import FieldDefinitions, ImportPlan, is_gzip, parse_field_definitions
from watcher.errors import KeyRefused, SendGridError, StoreUnavailable, TryLater
from watcher.lifecycle_requests import (
    EXPORTS_PATH,
    FIELDS_PATH,
    IMPORTS_PATH,
    ImportStarted,
    export_request,
    import_request,
    parse_import_started,
    s3_error,
)
from watcher.net import AnswerStatus, BodyTooLarge, OutboundPolicy, capped_chunks, read_capped, shown_url
from watcher.ratelimit import RateBudget, retry_after_seconds
from watcher.sendgrid import SendGridSettings, api_headers
from watcher.sendgrid_answers import error_text
from watcher.strictjson import strict_json

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
T = TypeVar("T")


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


class _Again(Exception):
    """One try failed in a way another may not: `error` is raised if it was the last; `wait` is False
    when the rate budget already holds the next try back (a 429, a Retry-After)."""

    def __init__(self, error: Exception, *, wait: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


class AccountLike(Protocol):
    """What Lifecycle reads of a configured account (watcher.accounts.Account)."""

    name: str
    settings: SendGridSettings
    session: aiohttp.ClientSession
    budget: RateBudget


class Lifecycle:
    """Field definitions, import start and upload, export start and download for one account."""

    def __init__(self, account: AccountLike, *, clock: Clock) -> None:
        self.account = account
        self._clock = clock
        self._policy = OutboundPolicy.of(account.settings)
        self._base = account.settings.base_url.rstrip("/")
        self._headers = api_headers(account.settings)  # the key: to the API only, never to upload or download URLs
        self._timeout = aiohttp.ClientTimeout(total=account.settings.request_timeout)
        self._transfer_timeout = aiohttp.ClientTimeout(
            sock_connect=account.settings.request_timeout, sock_read=TRANSFER_READ_TIMEOUT)

    def __repr__(self) -> str:
        return f"Lifecycle(account={self.account.name!r}, base_url={self._base!r})"

    async def _retried(self, one_try: Callable[[], Awaitable[T]]) -> T:
        """`one_try` until it returns or raises other than _Again, at most ATTEMPTS times (then its error)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await one_try()
            except _Again as again:
                if attempt == ATTEMPTS:
                    raise again.error from None
                if again.wait:
                    await self._clock.sleep(backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

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
        """One API request, retried on 429, 5xx and network failures; the answer's JSON."""

        async def one_try() -> Any:
            status, headers, raw = await self._request(method, path, body, what)
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
            raise _Again(failure, wait=seconds is None and status != 429)  # else the budget's acquire waits

        return await self._retried(one_try)

    async def _request(self, method: str, path: str, body: Any, what: str) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of one request through the budget; a body over its cap reads as b""."""
        try:
            await self.account.budget.acquire()
        except StoreUnavailable as exc:
            raise TryLater("rate budget unavailable") from exc
        try:
            async with self.account.session.request(
                method, f"{self._base}{path}", json=body, headers=self._headers, timeout=self._timeout,
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
            raise _Again(TryLater(f"{what}: {_no_answer(exc)} at {shown_url(self._base)}")) from None
        finally:
            self.account.budget.release()

    # --- answered URLs: the upload and the downloads ---------------------------------

    async def upload(self, started: ImportStarted, csv_path: Path, *, gzipped: bool | None = None) -> int:
        """The file in one raw PUT to upload_uri with exactly its upload_headers; the bytes sent.

        A gzip file (an export's) goes as it is; any other is compressed on the fly. `gzipped`: what
        the plan found (None: look at the file).
        """
        url = started.upload_uri
        self._policy.check_answered(url)  # before the file is read
        headers = dict(started.upload_headers)
        already = is_gzip(csv_path) if gzipped is None else gzipped
        size = (await asyncio.to_thread(csv_path.stat)).st_size if already else await _gzip_size(csv_path)
        headers["Content-Length"] = str(size)
        skip = () if any(name.lower() == "content-type" for name in headers) else ("Content-Type",)
        shown = shown_url(url, path=True)

        async def one_try() -> int:
            body = _file_chunks(csv_path, size) if already else _gzip_chunks(csv_path, size)
            try:
                async with self._policy.open_answered(session, url, method="PUT", timeout=self._transfer_timeout,
                                                      data=body, headers=headers, skip_auto_headers=skip) as response:
                    if 200 <= response.status < 300:
                        return size
                    detail = s3_error(await _error_body(response))
                    failure = f"HTTP {response.status}{f': {detail}' if detail else ''}"
                    if response.status != 429 and response.status < 500:
                        raise UploadFailed(f"the upload to {shown} was refused ({failure})")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failure = _no_answer(exc)
            raise _Again(UploadFailed(f"the upload to {shown} failed {ATTEMPTS} times; last: {failure}"))

        async with self._policy.make_session(auto_decompress=False) as session:
            return await self._retried(one_try)

    async def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> tuple[int, str]:
        """GET an export file into `dest` (written whole and synced, or not at all): (bytes, sha256 hex).

        Streamed, redirects checked hop by hop, retried from the start on transient failures;
        UrlExpired on 403, BodyTooLarge past `max_bytes`, DownloadFailed at once when `dest` cannot be
        written (a full disk is no network failure: another try cannot help).
        """
        self._policy.check_answered(url)
        part = dest.with_name(f".{dest.name}.part")
        shown = shown_url(url, path=True)

        async def one_try() -> tuple[int, str]:
            try:
                async with self._policy.open_answered(session, url, timeout=self._transfer_timeout) as response:
                    if response.status != 200:
                        raise AnswerStatus(response.status, str(response.url))
                    return await _stream_to(response, part, max_bytes, shown=dest)
            except AnswerStatus as exc:
                if exc.status == 403:
                    raise UrlExpired(f"the download URL {shown} has expired (HTTP 403): ask for the export's "
                                     "URLs again") from None
                if exc.status != 429 and exc.status < 500:
                    raise DownloadFailed(f"download refused: {exc}") from None
                failure = str(exc)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failure = _no_answer(exc)
            raise _Again(DownloadFailed(f"the download of {shown} failed {ATTEMPTS} times; last: {failure}"))

        try:
            async with self._policy.make_session(auto_decompress=False) as session:
                result = await self._retried(one_try)
            os.replace(part, dest)
            return result
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


async def import_csv(
    lifecycle: Lifecycle, csv_path: Path, plan: ImportPlan, *, list_ids: Sequence[str] = ()
) -> ImportStarted:
    """Start the import of a planned file and upload it: the started job."""
    started = await lifecycle.start_import(field_mappings=plan.field_mappings, list_ids=list_ids)
    await lifecycle.upload(started, csv_path, gzipped=plan.gzipped)
    return started


def backoff(attempt: int) -> float:
    """Seconds to wait after failed try number `attempt` (1-based)."""
    return BACKOFF[min(attempt, len(BACKOFF)) - 1]


def _no_answer(exc: BaseException) -> str:
    """A request that got no answer, in words; never str(exc), which may carry the request (and its key)."""
    return f"{'timed out' if isinstance(exc, TimeoutError) else 'connection failed'} ({type(exc).__name__})"


async def _error_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await read_capped(response, MAX_ERROR_BYTES)
    except (BodyTooLarge, aiohttp.ClientError, TimeoutError):
        return b""


async def _stream_to(
    response: aiohttp.ClientResponse, part: Path, max_bytes: int | None, *, shown: Path
) -> tuple[int, str]:
    """The 200 body written to `part` and synced: (bytes, sha256 hex). Reading the answer may fail as
    the network does (OSError included); writing the file fails as DownloadFailed, never retried."""
    digest, size = hashlib.sha256(), 0
    fd = await _written(shown, os.open, part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        async for chunk in capped_chunks(response, max_bytes, chunk_bytes=CHUNK):
            size += len(chunk)
            digest.update(chunk)
            await _written(shown, _write_all, fd, chunk)
        await _written(shown, os.fsync, fd)
    finally:
        os.close(fd)
    return size, digest.hexdigest()


async def _written(shown: Path, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` in a thread; an OSError (a full disk) as DownloadFailed naming the file."""
    try:
        return await asyncio.to_thread(call, *args)
    except OSError as exc:
        raise DownloadFailed(f"cannot write {shown}: {exc.strerror or exc}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
