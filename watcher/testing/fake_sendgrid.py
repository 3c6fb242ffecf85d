"""A fake Twilio SendGrid Marketing Contacts API, answering like the real one.

It serves the import-status, add-or-update, delete and CSV-import endpoints of
`tsg_mc_contacts_v3.yaml`, plus the two links the real API hands out (the
upload URI and the errors CSV) and a `/_control/` JSON API so another process
can script jobs and faults. All job times come from an injectable `Clock`, so a
test with a `ManualClock` drives a job's life without sleeping. It is built for
speed: O(1) per status request and no per-request logging.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from watcher.clock import Clock, SystemClock

DEFAULT_API_KEY = "SG.fake-key"
OUTCOMES = ("completed", "errored", "failed", "pending")
_CONTROL_PREFIX = "/_control/"
_SYNTHETIC_REASONS = ("invalid email", "invalid email", "invalid email", "email is required")
# What a 200 looks like when a proxy or the API misbehaves: cut JSON, an HTML
# error page, a JSON array, an object with the wrong types, nothing at all.
_MALFORMED_BODIES = (
    (b'{"id": "', "application/json"),
    (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    (b'[{"status": "completed"}]', "application/json"),
    (b'{"id": 42, "status": ["completed"], "results": "n/a"}', "application/json"),
    (b"", "application/json"),
)

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, field_name: str | None = None) -> web.Response:
    """A JSON error in SendGrid's ErrorResponse shape: {"errors": [{"field", "message"}]}."""
    return web.json_response({"errors": [{"field": field_name, "message": message}]},
                             status=status)


def _iso(epoch: float) -> str:
    """ISO 8601 UTC, second precision, as SendGrid writes timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(slots=True)
class _Job:
    """One scripted job; `ready_at` None means waiting for its CSV upload."""

    id: str
    job_type: str
    outcome: str
    started_at: float
    ready_at: float | None
    visible_at: float
    requested: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    errored: int = 0
    error_rows: list[tuple[str, str]] | None = None
    status_override: str | None = None
    email_column: int | None = None  # CSV imports: the column field_mappings maps to email
    started_iso: str = field(init=False)

    def __post_init__(self) -> None:
        self.started_iso = _iso(self.started_at)

    def document(self, now: float, link_base: str) -> dict[str, Any]:
        """The ContactImport body as seen at `now`."""
        due = self.ready_at is not None and now >= self.ready_at
        status = (self.status_override or self.outcome) if due else "pending"
        final = due and self.outcome != "pending"
        results: dict[str, Any] = {
            "requested_count": self.requested,
            "created_count": self.created if final else 0,
            "updated_count": self.updated if final else 0,
            "deleted_count": self.deleted if final else 0,
            "errored_count": self.errored if final else 0,
        }
        body: dict[str, Any] = {"id": self.id, "status": status, "job_type": self.job_type,
                                "results": results, "started_at": self.started_iso}
        if final and self.ready_at is not None:
            body["finished_at"] = _iso(self.ready_at)
            if self.outcome in ("errored", "failed"):
                results["errors_url"] = f"{link_base}/_errors/{self.id}.csv"
        return body

    def rejected_rows(self) -> list[tuple[str, str]]:
        """The rows of the errors CSV: scripted ones, or one made-up row per errored row."""
        if self.error_rows is not None:
            return self.error_rows
        reasons = _SYNTHETIC_REASONS
        return [(f"row{i}.example.com", reasons[i % len(reasons)]) for i in range(self.errored)]


def _outcome_of(requested: int, errored: int) -> str:
    """SendGrid's status for a finished job with these counts."""
    if errored == 0:
        return "completed"
    return "failed" if errored >= requested else "errored"


def _contact_problem(contact: object) -> tuple[str, str] | None:
    """(email, reason) when SendGrid would reject this contact, else None."""
    if not isinstance(contact, dict):
        return ("", "contact must be an object")
    email = contact.get("email")
    if email is None:
        others = ("phone_number_id", "external_id", "anonymous_id")
        return None if any(contact.get(k) for k in others) else ("", "email is required")
    if not isinstance(email, str) or "@" not in email:
        return (str(email), "invalid email")
    return None


def _read_upload(data: bytes, email_column: int | None) -> tuple[int, list[tuple[str, str]]]:
    """Count the CSV's data rows and reject those without an '@' in the email column."""
    if data[:2] == b"\x1f\x8b":  # gzip sent without Content-Encoding
        data = gzip.decompress(data)
    rows = [row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if any(row)]
    if not rows:
        raise ValueError("empty file")
    header = [cell.strip().lower() for cell in rows[0]]
    if email_column is not None:
        column = email_column
    else:
        column = header.index("email") if "email" in header else 0
    rejected = []
    for row in rows[1:]:
        email = row[column].strip() if column < len(row) else ""
        if "@" not in email:
            rejected.append((email, "invalid email" if email else "email is required"))
    return len(rows) - 1, rejected


class FakeSendGrid:
    """The fake API: script jobs and faults, then point a client at `base_url`."""

    def __init__(self, *, api_keys: Iterable[str] = (DEFAULT_API_KEY,), clock: Clock | None = None,
                 rate_limit: int | None = None, rate_window: float = 1.0,
                 base_url: str | None = None) -> None:
        self.api_keys = frozenset(api_keys)
        self.clock: Clock = clock or SystemClock()
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.base_url = base_url or ""
        self._fixed_base = base_url is not None
        self.default_pending_for = 0.5
        self.errors_url_ttl: float | None = None  # seconds after finished_at; None = forever
        self._runner: web.AppRunner | None = None
        self._pauses: set[asyncio.Future[None]] = set()  # latency and hangs, cut by close()
        self._in_flight: dict[str, int] = {}
        self._jobs: dict[str, _Job] = {}
        self._windows: dict[str, list[int]] = {}  # API key -> [window index, requests used]
        self._refused_status: int | None = None
        self.polls: Counter[str] = Counter()
        self.requests_total = 0
        self.responses_by_status: Counter[int] = Counter()
        self.max_concurrent_per_job: dict[str, int] = {}
        self.last_on_behalf_of: str | None = None
        self.last_user_agent: str | None = None
        self.app = web.Application(middlewares=[self._count], client_max_size=64 * 1024 * 1024)
        self._add_routes()
        self.set_faults()

    def _add_routes(self) -> None:
        """Register the API, link and control routes."""
        self.app.add_routes([
            web.get("/v3/marketing/contacts/imports/{id}", self._get_import),
            web.put("/v3/marketing/contacts", self._api_route(self._put_contacts)),
            web.delete("/v3/marketing/contacts", self._api_route(self._delete_contacts)),
            web.put("/v3/marketing/contacts/imports", self._api_route(self._put_import)),
            web.put("/_upload/{id}", self._upload),
            web.get("/_errors/{id}.csv", self._errors_csv),
            web.post("/_control/jobs", self._control_jobs),
            web.post("/_control/faults", self._control_faults),
            web.post("/_control/refuse_key", self._control_refuse_key),
            web.get("/_control/stats", self._control_stats),
            web.post("/_control/reset", self._control_reset),
        ])

    # -- lifecycle ---------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port) and return the listening URL."""
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        if not self._fixed_base:
            self.base_url = url
        return url

    async def close(self) -> None:
        """Cut short delayed and hanging requests, then stop listening."""
        for pause in list(self._pauses):
            _settle(pause)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scripting ---------------------------------------------------------

    def script_job(self, job_id: str, *, outcome: str = "completed", pending_for: float = 0.0,
                   job_type: str = "upsert", requested: int = 10, created: int | None = None,
                   updated: int = 0, deleted: int = 0, errored: int | None = None,
                   error_rows: list[tuple[str, str]] | None = None, visible_after: float = 0.0,
                   status_override: str | None = None) -> None:
        """Make `job_id` exist: pending for `pending_for` seconds, then `outcome`."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        if errored is None:
            errored = {"completed": 0, "pending": 0, "failed": requested}.get(outcome)
        if errored is None:  # "errored": the scripted rows, else about a tenth
            errored = len(error_rows) if error_rows else min(requested, max(1, requested // 10))
        if created is None:
            created = max(0, requested - updated - deleted - errored)
        rows = [(str(email), str(reason)) for email, reason in error_rows] if error_rows else None
        now = self.clock.now()
        self._jobs[job_id] = _Job(
            id=job_id, job_type=job_type, outcome=outcome, started_at=now,
            ready_at=now + pending_for, visible_at=now + visible_after, requested=requested,
            created=created, updated=updated, deleted=deleted, errored=errored,
            error_rows=rows, status_override=status_override)

    def set_faults(self, *, error_rate: float = 0.0, latency: float = 0.0,
                   malformed_rate: float = 0.0, drop_rate: float = 0.0, timeout_rate: float = 0.0,
                   status_429_rate: float = 0.0, seed: int | None = None) -> None:
        """Replace the fault settings applied to every /v3 request; all zero means none."""
        rates = {"drop": drop_rate, "timeout": timeout_rate, "error": error_rate,
                 "429": status_429_rate, "malformed": malformed_rate}
        if any(not 0.0 <= rate <= 1.0 for rate in rates.values()) or latency < 0:
            raise ValueError("rates must be within [0, 1] and latency >= 0")
        self._latency = latency
        self._rng = random.Random(seed)  # noqa: S311 - fault injection, not security
        # Cumulative thresholds over one draw, so each rate is that share of requests.
        self._fault_steps: list[tuple[float, str]] = []
        total = 0.0
        for kind, rate in rates.items():
            if rate > 0:
                total += rate
                self._fault_steps.append((total, kind))

    def refuse_key(self, refused: bool = True, status: int = 401) -> None:
        """Answer every API request with 401 (or 403) while `refused`, as for a revoked key."""
        if status not in (401, 403):
            raise ValueError("status must be 401 or 403")
        self._refused_status = status if refused else None

    def reset(self) -> None:
        """Forget jobs, counters, faults and key refusal."""
        self._jobs.clear()
        self._windows.clear()
        self.polls.clear()
        self.requests_total = 0
        self.responses_by_status.clear()
        self.max_concurrent_per_job.clear()
        self.last_on_behalf_of = self.last_user_agent = None
        self._refused_status = None
        self.set_faults()

    def stats(self) -> dict[str, Any]:
        """Counters as JSON-ready data."""
        return {"polls": dict(self.polls), "requests_total": self.requests_total,
                "responses_by_status": {str(k): v for k, v in self.responses_by_status.items()},
                "max_concurrent_per_job": dict(self.max_concurrent_per_job)}

    # -- request pipeline --------------------------------------------------

    @web.middleware
    async def _count(self, request: web.Request, handler: Answer) -> web.StreamResponse:
        """Count requests and statuses (control calls excluded); JSON 404 for unknown paths."""
        if request.path.startswith(_CONTROL_PREFIX):
            return await handler(request)
        self.requests_total += 1
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = _error(404, "resource not found")
        except web.HTTPException as exc:
            self.responses_by_status[exc.status] += 1
            raise
        transport = request.transport
        if transport is not None and not transport.is_closing():  # dropped: no status
            self.responses_by_status[response.status] += 1
        return response

    def _api_route(self, answer: Answer) -> Answer:
        """Wrap an API handler with auth, rate limiting and faults."""
        async def route(request: web.Request) -> web.StreamResponse:
            return await self._api(request, answer)
        return route

    async def _api(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        """Authenticate, take a rate-limit token, inject faults, then answer."""
        headers = request.headers
        self.last_user_agent = headers.get("User-Agent")
        if "On-Behalf-Of" in headers:
            self.last_on_behalf_of = headers["On-Behalf-Of"]
        auth = headers.get("Authorization", "")
        key = auth[7:] if auth[:7].lower() == "bearer " else None
        if self._refused_status == 403:
            return _error(403, "access forbidden")
        if self._refused_status == 401 or key is None or key not in self.api_keys:
            return _error(401, "authorization required")
        allowed, limit_headers = self._take_token(key)
        if not allowed:
            response: web.StreamResponse = _error(429, "too many requests")
        else:
            response = await self._faulty(request) or await answer(request)
        response.headers.update(limit_headers)
        return response

    def _take_token(self, key: str) -> tuple[bool, dict[str, str]]:
        """Fixed-window rate limit per API key; returns (allowed, X-RateLimit-* headers)."""
        limit = self.rate_limit
        if limit is None:
            return True, {}
        index = math.floor(self.clock.now() / self.rate_window)
        window = self._windows.get(key)
        if window is None or window[0] != index:
            window = self._windows[key] = [index, 0]
        allowed = window[1] < limit
        if allowed:
            window[1] += 1
        return allowed, {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - window[1]),
            "X-RateLimit-Reset": str(math.ceil((index + 1) * self.rate_window)),
        }

    async def _faulty(self, request: web.Request) -> web.StreamResponse | None:
        """Apply latency, then maybe one fault; None means answer normally."""
        if self._latency:
            await self._pause(self._latency)
        if not self._fault_steps:
            return None
        draw = self._rng.random()
        kind = next((kind for bound, kind in self._fault_steps if draw < bound), None)
        if kind == "error":
            return web.json_response({"errors": [{"message": "internal server error"}]},
                                     status=500)
        if kind == "429":
            return _error(429, "too many requests")
        if kind == "malformed":
            body, content_type = self._rng.choice(_MALFORMED_BODIES)
            return web.Response(body=body, content_type=content_type)
        if kind == "timeout":
            await self._pause(None)
        if kind in ("drop", "timeout"):
            if request.transport is not None:
                request.transport.close()  # the client sees the server disconnect
            return web.Response(status=204)  # never sent: the transport is closing
        return None

    async def _pause(self, seconds: float | None) -> None:
        """Wait `seconds` (None: until the client gives up), or less if the fake closes."""
        loop = asyncio.get_running_loop()
        pause: asyncio.Future[None] = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _settle, pause)
        self._pauses.add(pause)
        try:
            await pause
        finally:
            self._pauses.discard(pause)
            if timer is not None:
                timer.cancel()

    def _link_base(self, request: web.Request) -> str:
        """Base of the links handed out: base_url once known, else this request's origin."""
        return self.base_url or str(request.url.origin())

    # -- API handlers ------------------------------------------------------

    async def _get_import(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/marketing/contacts/imports/{id}, tracking overlapping polls per id."""
        job_id = request.match_info["id"]
        self.polls[job_id] += 1
        in_flight = self._in_flight.get(job_id, 0) + 1
        self._in_flight[job_id] = in_flight
        if in_flight > self.max_concurrent_per_job.get(job_id, 0):
            self.max_concurrent_per_job[job_id] = in_flight
        try:
            return await self._api(request, self._import_status)
        finally:
            left = self._in_flight[job_id] - 1
            if left:
                self._in_flight[job_id] = left
            else:
                del self._in_flight[job_id]

    async def _import_status(self, request: web.Request) -> web.StreamResponse:
        """The ContactImport document, or 404 while unknown or not yet visible."""
        job = self._jobs.get(request.match_info["id"])
        now = self.clock.now()
        if job is None or now < job.visible_at:
            return _error(404, "job not found")
        return web.json_response(job.document(now, self._link_base(request)))

    async def _put_contacts(self, request: web.Request) -> web.StreamResponse:
        """PUT /v3/marketing/contacts: queue an upsert job, 202 {"job_id"}."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON body")
        contacts = body.get("contacts") if isinstance(body, dict) else None
        if not isinstance(contacts, list) or not 1 <= len(contacts) <= 30_000:
            return _error(400, "contacts must hold 1 to 30000 items", "contacts")
        rejected = [row for row in map(_contact_problem, contacts) if row is not None]
        return self._queue(request, "upsert", len(contacts), rejected)

    async def _delete_contacts(self, request: web.Request) -> web.StreamResponse:
        """DELETE /v3/marketing/contacts?ids=a,b or ?delete_all_contacts=true: 202 {"job_id"}."""
        query = request.query
        ids = [i for i in query.get("ids", "").split(",") if i]
        if not ids and query.get("delete_all_contacts") != "true":
            return _error(400, "either ids or delete_all_contacts=true is required", "ids")
        return self._queue(request, "delete", len(ids), [])

    def _queue(self, request: web.Request, job_type: str, requested: int,
               rejected: list[tuple[str, str]]) -> web.Response:
        """Script a job that ends after default_pending_for; answer 202 with its id."""
        job_id = str(uuid.uuid4())
        errored = len(rejected)
        self.script_job(
            job_id, outcome=_outcome_of(requested, errored), job_type=job_type,
            pending_for=self.default_pending_for, requested=requested, errored=errored,
            error_rows=rejected, created=requested - errored if job_type == "upsert" else 0,
            deleted=requested if job_type == "delete" else 0)
        return web.json_response({"job_id": job_id}, status=202)

    async def _put_import(self, request: web.Request) -> web.StreamResponse:
        """PUT /v3/marketing/contacts/imports: a job pending until its CSV is uploaded."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON body")
        if not isinstance(body, dict) or body.get("file_type") != "csv":
            return _error(400, "file_type must be csv", "file_type")
        mappings = body.get("field_mappings")
        if not isinstance(mappings, list) or not mappings:
            return _error(400, "field_mappings must hold at least 1 item", "field_mappings")
        job_id = str(uuid.uuid4())
        now = self.clock.now()
        email_column = mappings.index("e1_T") if "e1_T" in mappings else None  # email field id
        self._jobs[job_id] = _Job(id=job_id, job_type="upsert", outcome="pending",
                                  started_at=now, ready_at=None, visible_at=now,
                                  email_column=email_column)
        return web.json_response({
            "job_id": job_id,
            "upload_uri": f"{self._link_base(request)}/_upload/{job_id}",
            "upload_headers": [{"header": "Content-Encoding", "value": "gzip"}],
        })

    # -- links handed out by the API (no auth, like pre-signed URLs) --------

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """PUT {upload_uri}: take the CSV (gzip or plain) and let the import job run."""
        job = self._jobs.get(request.match_info["id"])
        if job is None:
            return web.Response(status=404, text="no such upload")
        if job.ready_at is not None:
            return web.Response(status=409, text="already uploaded")
        try:
            requested, rejected = _read_upload(await request.read(), job.email_column)
        except (OSError, EOFError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            outcome, requested, rejected = "failed", 0, [("", f"unreadable file: {exc}")]
        else:
            outcome = _outcome_of(requested, len(rejected))
        job.outcome, job.requested, job.error_rows = outcome, requested, rejected
        job.errored = min(requested, len(rejected))
        job.created = requested - job.errored
        job.ready_at = self.clock.now() + self.default_pending_for
        return web.Response(status=200)

    async def _errors_csv(self, request: web.Request) -> web.StreamResponse:
        """GET {errors_url}: the rejected rows as CSV; 403 once the link has expired."""
        job = self._jobs.get(request.match_info["id"])
        now = self.clock.now()
        if job is None or "errors_url" not in job.document(now, "").get("results", {}):
            return web.Response(status=404, text="no such file")
        ttl, ready_at = self.errors_url_ttl, job.ready_at
        if ttl is not None and ready_at is not None and now > ready_at + ttl:
            return web.Response(status=403, text="link expired")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(("email", "error"))
        writer.writerows(job.rejected_rows())
        return web.Response(text=out.getvalue(), content_type="text/csv")

    # -- control API (no auth) ---------------------------------------------

    async def _control_jobs(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/jobs: one script_job object (with "id") or a list of them."""
        body = await _json_or_none(request)
        specs = body if isinstance(body, list) else [body]
        try:
            for spec in specs:
                kwargs = dict(spec)
                job_id = str(kwargs.pop("id"))
                if kwargs.get("error_rows") is not None:
                    kwargs["error_rows"] = [tuple(row) for row in kwargs["error_rows"]]
                self.script_job(job_id, **kwargs)
        except (TypeError, ValueError, KeyError) as exc:
            return web.json_response({"error": f"bad job: {exc!r}"}, status=400)
        return web.json_response({"scripted": len(specs)}, status=201)

    async def _control_faults(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/faults: set_faults keyword arguments as JSON."""
        return _call_with_json(self.set_faults, await _json_or_none(request) or {})

    async def _control_refuse_key(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/refuse_key: optional {"refused": bool, "status": 401|403}."""
        return _call_with_json(self.refuse_key, await _json_or_none(request) or {})

    async def _control_stats(self, request: web.Request) -> web.StreamResponse:
        """GET /_control/stats: the counters."""
        return web.json_response(self.stats())

    async def _control_reset(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/reset: back to a fresh fake."""
        self.reset()
        return web.json_response({"reset": True})


def _settle(pause: asyncio.Future[None]) -> None:
    """End a pause unless it already ended."""
    if not pause.done():
        pause.set_result(None)


async def _json_or_none(request: web.Request) -> Any:
    """The request's JSON body, or None when it is empty or not JSON."""
    try:
        return await request.json() if request.can_read_body else None
    except ValueError:
        return None


def _call_with_json(method: Callable[..., None], kwargs: Any) -> web.Response:
    """Call a setter with JSON kwargs: 200 {"ok": true}, or 400 with why."""
    try:
        method(**kwargs)
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": repr(exc)}, status=400)
    return web.json_response({"ok": True})


async def serve(host: str = "127.0.0.1", port: int = 0, *,
                on_ready: Callable[[str], None] | None = None,
                fake: FakeSendGrid | None = None) -> None:
    """Run a fake (a default one unless given) on host:port until cancelled."""
    fake = fake or FakeSendGrid()
    url = await fake.start(host, port)
    try:
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await fake.close()
