"""The SendGrid API client: two reads, `get_import` and `get_export`, and the mapping of every answer.

An answer is a Snapshot (an import's parsed by watcher.sendgrid_answers, an export's by
watcher.sendgrid_exports) or one of three exceptions: ImportNotFound (404, for either kind),
KeyRefused (401/403) and TryLater (everything transient or malformed). Nothing from aiohttp or
json escapes, and the API key never reaches a message, a log line or a repr: it is revealed only
into the request headers.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import quote

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from watcher.clock import Clock
from watcher.errors import ImportNotFound, KeyRefused, StoreUnavailable, TryLater
from watcher.logs import CachedLogger, JobLog
from watcher.models import Snapshot, validate_job_id
from watcher.net import BodyTooLarge, OutboundPolicy, base_url_problem, mask_urls_in_text, read_capped
from watcher.ratelimit import RateBudget, reset_seconds, retry_after_seconds
from watcher.schema import Secret, redact
from watcher.sendgrid_answers import MAX_MESSAGE_CHARS, error_message, load_json, parse_snapshot
from watcher.sendgrid_exports import parse_export


def _package_version() -> str:
    try:
        return version("import-watcher")
    except PackageNotFoundError:
        return "0+unknown"


USER_AGENT = f"import-watcher/{_package_version()} (+https://github.com/import-watcher)"

#: A 200 body above this is refused: an import status is a few hundred bytes.
MAX_BODY_BYTES = 1 << 20
#: Error bodies are read only this far, for their message.
MAX_ERROR_BODY_BYTES = 64 << 10
#: Jobs the client remembers (URL, last answer): bounds its memory with 100,000 jobs.
REMEMBERED_JOBS = 4096


log = structlog.get_logger("watcher.sendgrid")
_log = CachedLogger(log)

_IMPORTS_PATH = "/v3/marketing/contacts/imports/"
_EXPORTS_PATH = "/v3/marketing/contacts/exports/"


@dataclass(frozen=True)
class SendGridSettings:
    """The `sendgrid:` section of the configuration."""

    api_key: Secret
    base_url: str = "https://api.sendgrid.com"
    on_behalf_of: str | None = None
    request_timeout: float = 10.0
    max_concurrency: int = 32
    max_rate: float | None = None
    allow_insecure: bool = False
    allow_private: bool = False

    def __post_init__(self) -> None:
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        # config reports this with a line number; here it guards every other way in.
        if problem := base_url_problem(self.base_url, allow_insecure=self.allow_insecure):
            raise ValueError(f"base_url {problem}")


def api_headers(settings: SendGridSettings) -> CIMultiDict[str]:
    """The headers of every SendGrid API request (polls and the import/export lifecycle): JSON, our
    User-Agent, the subuser, and the API key, revealed only here."""
    headers = CIMultiDict({"Accept": "application/json", "User-Agent": USER_AGENT})
    if settings.on_behalf_of:
        headers["On-Behalf-Of"] = settings.on_behalf_of
    headers["Authorization"] = f"Bearer {settings.api_key.reveal()}"
    return headers


class _Known:
    """What the client remembers of a job polled lately: its (valid) id's URL, and its last
    200 body with the Snapshot parsed from it. A running job mostly answers the same bytes
    poll after poll, and parse_snapshot is a pure function of them; a URL is parsed once."""

    __slots__ = ("body", "snapshot", "url")

    def __init__(self, url: URL | str) -> None:
        self.url = url
        self.body: bytes | None = None
        self.snapshot: Snapshot | None = None


class _Headers:
    """The request headers, built once; they hold the API key, so repr never shows them."""

    __slots__ = ("value",)

    def __init__(self, value: CIMultiDict[str]) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "_Headers(********)"


class SendGridClient:
    """Reads import and export jobs from SendGrid within the concurrency limit and the rate budget."""

    def __init__(
        self,
        settings: SendGridSettings,
        *,
        session: aiohttp.ClientSession,
        budget: RateBudget,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._session = session
        self._budget = budget
        self._clock = clock
        self._base_url = settings.base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        # One headers object for every request (aiohttp copies it into each request).
        self._headers = _Headers(api_headers(settings))
        self._known: dict[str, _Known] = {}  # imports
        self._known_exports: dict[str, _Known] = {}
        self._policy = OutboundPolicy.of(settings)  # judges the URLs an export answers with
        self.requests = 0
        #: answers by HTTP status ("200", "429", ...) and failures by kind ("timeout", ...)
        self.responses: Counter[str] = Counter()
        self.rate_limited = 0

    def __repr__(self) -> str:
        return (
            f"SendGridClient(base_url={self._base_url!r}, "
            f"on_behalf_of={self._settings.on_behalf_of!r}, api_key=Secret('********'))"
        )

    async def get_import(self, job_id: str) -> Snapshot:
        """One poll of an import job; raises ImportNotFound, KeyRefused or TryLater."""
        return await self._get(job_id, self._known, _IMPORTS_PATH, None)

    async def get_export(self, export_id: str) -> Snapshot:
        """One poll of a contact export; the same errors and budget as get_import."""
        return await self._get(export_id, self._known_exports, _EXPORTS_PATH, self._parse_export)

    def _parse_export(self, body: bytes, bound: JobLog) -> Snapshot:
        snapshot, refused = parse_export(load_json(body), self._policy)
        for shown in refused:  # masked by parse_export; a known body is not parsed (nor logged) again
            bound.warning("sendgrid.export_url_refused", url=shown)
        return snapshot

    async def _get(
        self, job_id: str, remembered: dict[str, _Known], path: str, parse: Callable[[bytes, JobLog], Snapshot] | None
    ) -> Snapshot:
        """One GET of `path` + id within the concurrency limit and the budget, as a Snapshot
        (`parse`: None for an import's answer)."""
        known = remembered.get(job_id)
        if known is None:
            validate_job_id(job_id)  # only valid ids are ever remembered
            known = _Known(self._url(job_id, path))
            if len(remembered) >= REMEMBERED_JOBS:
                del remembered[next(iter(remembered))]  # the oldest
            remembered[job_id] = known
        url = known.url
        bound = JobLog(_log, job_id)
        semaphore = self._semaphore
        await semaphore.acquire()  # `async with`, without its two extra coroutines per request
        try:
            try:
                await self._budget.acquire()
            except StoreUnavailable as exc:
                raise TryLater("rate budget unavailable") from exc
            try:
                status, headers, body = await self._fetch(url, bound)
            finally:
                self._budget.release()
        finally:
            semaphore.release()
        return self._interpret(job_id, status, headers, body, bound, known, parse)

    async def _fetch(self, url: URL | str, bound: JobLog) -> tuple[int, Mapping[str, str], bytes]:
        """Send the request; (status, headers, body read up to its cap)."""
        self.requests += 1
        debug = _log.debug_enabled()
        started = self._clock.now() if debug else 0.0
        try:
            async with self._session.get(
                url, headers=self._headers.value, timeout=self._timeout, allow_redirects=False
            ) as response:
                self._budget.observe(response.headers, response.status)
                cap = MAX_BODY_BYTES if response.status == 200 else MAX_ERROR_BODY_BYTES
                try:
                    body = await read_capped(response, cap)
                except BodyTooLarge:
                    if response.status == 200:
                        raise
                    body = b""  # an error answer past its cap: no message read
                status, answer_headers = response.status, response.headers
        except BodyTooLarge:
            self.responses["200"] += 1
            bound.debug("sendgrid.body_too_large", limit=MAX_BODY_BYTES)
            raise TryLater("malformed answer: body over 1 MiB", status=200) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection_error"
            self.responses[kind] += 1
            summary = _summary(exc)
            bound.debug("sendgrid.request_failed", kind=kind, error=summary)
            # `from None`: aiohttp errors carry the request headers, key included.
            raise TryLater(f"{kind.replace('_', ' ')}: {summary}") from None
        self.responses[str(status)] += 1
        if debug:
            bound.debug("sendgrid.response", status=status, seconds=self._clock.now() - started)
        return status, answer_headers, body

    def _url(self, job_id: str, path: str = _IMPORTS_PATH) -> URL | str:
        """The URL of a (valid) job id, parsed once: the URL aiohttp makes of the string, or
        the string itself when it does not parse (aiohttp then fails the request, as ever)."""
        text = f"{self._base_url}{path}{quote(job_id, safe='')}"
        try:
            return URL(text)
        except ValueError:
            return text

    def _interpret(
        self,
        job_id: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        bound: JobLog,
        known: _Known | None = None,
        parse: Callable[[bytes, JobLog], Snapshot] | None = None,
    ) -> Snapshot:
        """The answer as a Snapshot (`parse`: an import's, unless told), or the exception it stands for."""
        if status == 200:
            if known is not None and known.body == body and known.snapshot is not None:
                return known.snapshot  # the answer this job gave last time, parsed then
            try:
                snapshot = parse_snapshot(body) if parse is None else parse(body, bound)
            except ValueError as exc:
                self.responses["malformed"] += 1
                bound.debug("sendgrid.malformed_body", error=str(exc))
                raise TryLater(f"malformed answer: {exc}", status=200) from None
            if known is not None:
                known.body, known.snapshot = body, snapshot
            return snapshot
        if status == 404:
            raise ImportNotFound(job_id)
        message = error_message(body)
        if status in (401, 403):
            raise KeyRefused(status, message or "no message")
        retry_after = self._retry_after(headers, status)
        if status == 429:
            self.rate_limited += 1
            raise TryLater("rate limited (HTTP 429)", retry_after=retry_after, status=429)
        detail = f": {message}" if message else ""
        raise TryLater(f"HTTP {status}{detail}", retry_after=retry_after, status=status)

    def _retry_after(self, headers: Mapping[str, str], status: int) -> float | None:
        """Retry-After wins; a 429 without it waits for X-RateLimit-Reset."""
        now = self._clock.now()
        lowered = {name.lower(): value for name, value in headers.items()}
        seconds = retry_after_seconds(lowered.get("retry-after"), now)
        if seconds is None and status == 429:
            seconds = reset_seconds(lowered.get("x-ratelimit-reset"), now)
        return seconds


def _summary(exc: BaseException) -> str:
    text = mask_urls_in_text(redact(str(exc))).strip()
    name = type(exc).__name__
    return f"{name}: {text[:MAX_MESSAGE_CHARS]}" if text else name
