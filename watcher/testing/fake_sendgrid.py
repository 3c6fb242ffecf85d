"""A fake Twilio SendGrid Marketing Contacts API, answering like the real one.

It serves the import-status, add-or-update, delete, CSV-import and export
endpoints of `tsg_mc_contacts_v3.yaml` and the field definitions of
`tsg_mc_custom_fields_v3.yaml`, plus the links the real API hands out (the
upload URI, the errors CSV, the export files), and a `/_control/` JSON API so
another process can script jobs, exports, contacts and faults. All times come
from an injectable `Clock`, so a test with a `ManualClock` drives a job's life
without sleeping. It is built for speed: O(1) per status request and no
per-request logging.

This module holds the aiohttp app and server: `FakeSendGrid` (lifecycle,
scripting, auth, rate limit, contact handlers) and `serve`. Under
`watcher.testing`: the job model in `jobs`, CSV imports in `fake_imports`,
exports in `fake_exports`, contacts in `fake_contacts`, field definitions in
`fake_fields`, import/export settings and S3-style answers in
`fake_lifecycle`, fault injection in `faults`, the control API in `control`
and the shared response helpers in `responses`.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Self

from aiohttp import web

from watcher.clock import Clock, SystemClock
from watcher.testing.control import CONTROL_PREFIX, ControlAPI
from watcher.testing.fake_contacts import DEFAULT_CONTACT_LIMIT, ContactStore, row_from_json
from watcher.testing.fake_exports import Export, Exports
from watcher.testing.fake_fields import DEFAULT_CUSTOM_FIELDS, RESERVED_FIELDS, FieldDefinition, Fields
from watcher.testing.fake_imports import Imports
from watcher.testing.fake_lifecycle import LifecycleSettings
from watcher.testing.faults import FaultPlan, Pauses, inject
from watcher.testing.jobs import OUTCOMES, Job, contact_problem, outcome_of
from watcher.testing.responses import sendgrid_error as _error

__all__ = ["DEFAULT_API_KEY", "OUTCOMES", "Answer", "FakeSendGrid", "FieldDefinition", "serve"]

DEFAULT_API_KEY = "SG.fake-key"

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeSendGrid:
    """The fake API: script jobs and faults, then point a client at `base_url`."""

    def __init__(self, *, api_keys: Iterable[str] = (DEFAULT_API_KEY,), clock: Clock | None = None,
                 rate_limit: int | None = None, rate_window: float = 1.0,
                 base_url: str | None = None, latency: float = 0.0,
                 custom_fields: Iterable[FieldDefinition] = DEFAULT_CUSTOM_FIELDS,
                 reserved_fields: Iterable[FieldDefinition] = RESERVED_FIELDS,
                 contact_limit: int = DEFAULT_CONTACT_LIMIT) -> None:
        self.api_keys = frozenset(api_keys)
        self.clock: Clock = clock or SystemClock()
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.base_url = base_url or ""
        self._fixed_base = base_url is not None
        self.default_pending_for = 0.5
        self._initial_latency = latency
        self.latency = 0.0  # seconds every API answer waits, on top of any fault plan
        self.set_latency(latency)
        self.errors_url_ttl: float | None = None  # seconds after finished_at; None = forever
        self._runner: web.AppRunner | None = None
        self._pauses = Pauses()  # latency and hangs, cut by close()
        self._in_flight: dict[str, int] = {}
        self.jobs: dict[str, Job] = {}
        self._initial_fields = Fields(custom_fields, reserved_fields)
        self.fields = self._initial_fields
        self.contacts = ContactStore(contact_limit)
        self.lifecycle = LifecycleSettings()
        self.imports = Imports(self)
        self.exports = Exports(self)
        self._windows: dict[str, list[int]] = {}  # API key -> [window index, requests used]
        self._refused_status: int | None = None
        self.polls: Counter[str] = Counter()
        self.requests_total = 0
        self.responses_by_status: Counter[int] = Counter()
        self.requests_by_route: Counter[str] = Counter()  # "METHOD /path/{pattern}" -> requests
        self.max_concurrent_per_job: dict[str, int] = {}
        self.last_on_behalf_of: str | None = None
        self.last_user_agent: str | None = None
        self.app = web.Application(middlewares=[self._count], client_max_size=64 * 1024 * 1024)
        self._add_routes()
        self.set_faults()

    def _add_routes(self) -> None:
        """Register the API, link and control routes."""
        api, exports = self._api_route, self.exports
        self.app.add_routes([
            web.get("/v3/marketing/contacts/imports/{id}", self._get_import),
            web.put("/v3/marketing/contacts", api(self._put_contacts)),
            web.delete("/v3/marketing/contacts", api(self._delete_contacts)),
            web.put("/v3/marketing/contacts/imports", api(self.imports.start)),
            web.post("/v3/marketing/contacts/exports", api(exports.start)),
            web.get("/v3/marketing/contacts/exports", api(exports.listing)),
            web.get("/v3/marketing/contacts/exports/{id}", api(exports.status)),
            web.get("/v3/marketing/field_definitions", api(self._field_definitions)),
            web.route("*", "/_upload/{id}", self.imports.upload),
            web.get("/_exports/{id}/{name}", exports.download),
            web.get("/_errors/{id}.csv", self._errors_csv),
            *ControlAPI(self).routes(),
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
        self._pauses.cut()
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
        self.jobs[job_id] = Job.scripted(
            job_id, self.clock.now(), outcome=outcome, pending_for=pending_for, job_type=job_type,
            requested=requested, created=created, updated=updated, deleted=deleted,
            errored=errored, error_rows=error_rows, visible_after=visible_after,
            status_override=status_override)

    def script_export(self, export_id: str, *, outcome: str | None = None, pending_for: float | None = None,
                      file_type: str = "csv", list_ids: Iterable[str] = (), segment_ids: Iterable[str] = (),
                      max_file_size: int = 5000, message: str | None = None,
                      url_ttl: float | None = None) -> Export:
        """Make export `export_id` of the contacts there now; unset arguments follow `lifecycle`."""
        return self.exports.create(export_id, outcome=outcome, pending_for=pending_for, file_type=file_type,
                                   list_ids=tuple(list_ids), segment_ids=tuple(segment_ids),
                                   max_file_size=max_file_size, message=message, url_ttl=url_ttl)

    def set_lifecycle(self, **changes: Any) -> None:
        """Change LifecycleSettings fields (import/export timing, forced outcomes, URL expiry, file size)."""
        self.lifecycle = self.lifecycle.changed(**changes)

    def set_custom_fields(self, fields: Iterable[FieldDefinition | Mapping[str, Any]]) -> None:
        """Replace the custom field definitions (FieldDefinition or {"id", "name", "field_type"})."""
        parsed = [f if isinstance(f, FieldDefinition) else FieldDefinition.parse(f) for f in fields]
        self.fields = Fields(parsed, self.fields.reserved)

    def add_contacts(self, contacts: Iterable[Mapping[str, Any]], list_ids: Iterable[str] = ()) -> int:
        """Store contacts (PUT /v3/marketing/contacts items) at once; returns how many had an identifier."""
        rows = [row for row in map(row_from_json, contacts) if row is not None]
        self.contacts.stage(rows[:self.contacts.room()], self.clock.now(), list_ids)
        return len(rows)

    def set_faults(self, *, error_rate: float = 0.0, latency: float = 0.0,
                   malformed_rate: float = 0.0, drop_rate: float = 0.0, timeout_rate: float = 0.0,
                   status_429_rate: float = 0.0, seed: int | None = None) -> None:
        """Replace the fault settings applied to every /v3 request; all zero means none."""
        self._faults = FaultPlan(
            error_rate=error_rate, latency=latency, malformed_rate=malformed_rate,
            drop_rate=drop_rate, timeout_rate=timeout_rate, status_429_rate=status_429_rate,
            seed=seed)

    def set_latency(self, seconds: float) -> None:
        """Make every API answer take `seconds`; unlike a fault plan's latency it survives set_faults.

        Without it two requests for one job can never overlap at the fake, so its
        max_concurrent_per_job could not see two pollers at once.
        """
        if not 0.0 <= seconds < 60.0:
            raise ValueError("latency must be within [0, 60) seconds")
        self.latency = seconds

    def refuse_key(self, refused: bool = True, status: int = 401) -> None:
        """Answer every API request with 401 (or 403) while `refused`, as for a revoked key."""
        if status not in (401, 403):
            raise ValueError("status must be 401 or 403")
        self._refused_status = status if refused else None

    def reset(self) -> None:
        """Forget jobs, exports, contacts, counters, faults, key refusal and lifecycle settings."""
        self.jobs.clear()
        self.imports.uploads.clear()
        self.exports.exports.clear()
        self.contacts.clear()
        self.lifecycle = LifecycleSettings()
        self.fields = self._initial_fields
        self.requests_by_route.clear()
        self._windows.clear()
        self.polls.clear()
        self.requests_total = 0
        self.responses_by_status.clear()
        self.max_concurrent_per_job.clear()
        self.last_on_behalf_of = self.last_user_agent = None
        self._refused_status = None
        self.set_faults()
        self.set_latency(self._initial_latency)

    def stats(self) -> dict[str, Any]:
        """Counters as JSON-ready data."""
        return {"latency": self.latency, "polls": dict(self.polls), "requests_total": self.requests_total,
                "responses_by_status": {str(k): v for k, v in self.responses_by_status.items()},
                "requests_by_route": dict(self.requests_by_route),
                "max_concurrent_per_job": dict(self.max_concurrent_per_job),
                "uploads": [upload.document() for upload in self.imports.uploads.values()],
                "exports": len(self.exports.exports), "contacts_dropped": self.contacts.dropped}

    # -- request pipeline --------------------------------------------------

    @web.middleware
    async def _count(self, request: web.Request, handler: Answer) -> web.StreamResponse:
        """Count requests and statuses (control calls excluded); JSON 404 for unknown paths."""
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        self.requests_total += 1
        route = request.match_info.route.resource
        self.requests_by_route[f"{request.method} {route.canonical if route else request.path}"] += 1
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
        if self.latency:
            await self._pauses.wait(self.latency)
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
            response = await inject(self._faults, self._pauses, request) or await answer(request)
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

    def link_base(self, request: web.Request) -> str:
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
        job = self.jobs.get(request.match_info["id"])
        now = self.clock.now()
        if job is None or now < job.visible_at:
            return _error(404, "job not found")
        return web.json_response(job.document(now, self.link_base(request)))

    async def _field_definitions(self, request: web.Request) -> web.StreamResponse:
        """GET /v3/marketing/field_definitions: the custom and reserved fields."""
        return web.json_response(self.fields.document(self.link_base(request)))

    async def _put_contacts(self, request: web.Request) -> web.StreamResponse:
        """PUT /v3/marketing/contacts: queue an upsert job, 202 {"job_id"}; its contacts land when it ends."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid JSON body")
        contacts = body.get("contacts") if isinstance(body, dict) else None
        if not isinstance(contacts, list) or not 1 <= len(contacts) <= 30_000:
            return _error(400, "contacts must hold 1 to 30000 items", "contacts")
        list_ids = body.get("list_ids", [])
        if not isinstance(list_ids, list) or not all(isinstance(i, str) for i in list_ids):
            return _error(400, "list_ids must be an array of strings", "list_ids")
        rejected = [row for row in map(contact_problem, contacts) if row is not None]
        rows = [row for row in (row_from_json(c) for c in contacts if isinstance(c, dict)) if row is not None]
        self.contacts.stage(rows[:self.contacts.room()], self.clock.now() + self.default_pending_for, list_ids)
        return self._queue("upsert", len(contacts), rejected)

    async def _delete_contacts(self, request: web.Request) -> web.StreamResponse:
        """DELETE /v3/marketing/contacts?ids=a,b or ?delete_all_contacts=true: 202 {"job_id"}."""
        query = request.query
        ids = [i for i in query.get("ids", "").split(",") if i]
        if not ids and query.get("delete_all_contacts") != "true":
            return _error(400, "either ids or delete_all_contacts=true is required", "ids")
        deleted = self.contacts.delete(self.clock.now(), ids or None)
        return self._queue("delete", len(ids) or deleted, [])

    def _queue(self, job_type: str, requested: int, rejected: list[tuple[str, str]]) -> web.Response:
        """Script a job that ends after default_pending_for; answer 202 with its id."""
        job_id = str(uuid.uuid4())
        errored = len(rejected)
        self.script_job(
            job_id, outcome=outcome_of(requested, errored), job_type=job_type,
            pending_for=self.default_pending_for, requested=requested, errored=errored,
            error_rows=rejected, created=requested - errored if job_type == "upsert" else 0,
            deleted=requested if job_type == "delete" else 0)
        return web.json_response({"job_id": job_id}, status=202)

    # -- links handed out by the API (no auth, like pre-signed URLs) --------

    async def _errors_csv(self, request: web.Request) -> web.StreamResponse:
        """GET {errors_url}: the rejected rows as CSV; 403 once the link has expired."""
        job = self.jobs.get(request.match_info["id"])
        now = self.clock.now()
        if job is None or "errors_url" not in job.document(now, "").get("results", {}):
            return web.Response(status=404, text="no such file")
        ttl, ready_at = self.errors_url_ttl, job.ready_at
        if ttl is not None and ready_at is not None and now > ready_at + ttl:
            return web.Response(status=403, text="link expired")
        return web.Response(text=job.errors_csv(), content_type="text/csv")


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
