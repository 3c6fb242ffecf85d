"""The API's job routes, POST /jobs, GET /jobs, GET /jobs/{job_id} and DELETE /jobs/{job_id}, registered
by WatcherServer; and the one JSON answer of the API (`json_answer`, `error_response`), which every
route module answers with.

They run behind the server's middlewares (JSON errors, the Host and Origin guard): a refusal here is
an ApiError, rendered like every other one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlencode

import structlog
from aiohttp import web

from watcher.clock import Clock
from watcher.errors import InvalidJobId
from watcher.httpinput import ApiError, batch_name, job_request, page_after, page_limit
from watcher.models import WATCHING, JobRef, JobState, Outcome, validate_job_id
from watcher.status import encode_cursor, job_views, tombstone_view
from watcher.store.base import StateStore
from watcher.strictjson import strict_json

log = structlog.get_logger("watcher.server")

STATES = frozenset({WATCHING, *(o.value for o in Outcome)})

_dumps = functools.partial(json.dumps, allow_nan=False)  # never NaN or Infinity on the wire


def json_answer(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer of this API."""
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The one error shape of this API."""
    return json_answer({"error": code, "message": message}, status=status, headers=headers)


class JobIntake(Protocol):
    """How jobs enter the daemon (watcher.sources.base.Intake)."""

    async def add(self, ref: JobRef, *, again: bool = False) -> bool: ...

    def check_notify(self, notify: Sequence[str] | None) -> None: ...
    def check_account(self, account: str | None) -> None: ...


class Expecting(Protocol):
    """When a running job is expected to finish (the learned poll policy)."""

    def expected_finish(self, job: JobState, now: float) -> float | None: ...


class RunningDaemon(Protocol):
    """The part of a running daemon every API route module uses."""

    @property
    def store(self) -> StateStore: ...
    @property
    def intake(self) -> JobIntake | None: ...
    @property
    def clock(self) -> Clock: ...


class JobsDaemon(RunningDaemon, Protocol):
    """The part of a running daemon the job routes use."""

    @property
    def learned(self) -> Expecting | None: ...


class JobRoutes:
    """The job handlers; `require_read` / `require_write` refuse a request without that access."""

    def __init__(
        self, daemon: JobsDaemon, *, require_read: Callable[[web.Request], None],
        require_write: Callable[[web.Request], None], max_body: int,
    ) -> None:
        self._daemon = daemon
        self._require_read = require_read
        self._require_write = require_write
        self._max_body = max_body

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/jobs", self.add_job)
        router.add_get("/jobs", self.list_jobs)
        router.add_get("/jobs/{job_id}", self.get_job)
        router.add_delete("/jobs/{job_id}", self.delete_job)

    async def add_job(self, request: web.Request) -> web.Response:
        """POST /jobs: a queue message; 202 when a watch starts, 200 when known or tombstoned."""
        self._require_write(request)
        try:
            message = strict_json(await self._body(request))
        except ValueError as exc:
            raise ApiError(400, "invalid_json", f"the body must be a JSON job message: {exc}") from None
        ref, again = job_request(message)
        intake = self._daemon.intake
        if intake is None:  # pragma: no cover - the server starts after the intake
            raise ApiError(503, "starting", "the daemon is starting; try again")
        try:
            intake.check_notify(ref.notify)
        except ValueError as exc:
            raise ApiError(400, "unknown_notifier", str(exc)) from None
        try:
            intake.check_account(ref.account)
        except ValueError as exc:
            raise ApiError(400, "unknown_account", str(exc)) from None
        added = await intake.add(ref, again=again)
        return await self._added_answer(ref.id, added)

    async def _added_answer(self, job_id: str, added: bool) -> web.Response:
        store = self._daemon.store
        job = await store.get_job(job_id)
        if job is not None:
            log.info("api.job_added" if added else "api.job_known", job_id=job_id)
            view = (await self._views([job]))[0]
            return json_answer(view, status=202 if added else 200, headers={"Location": f"/jobs/{job_id}"})
        tombstone = None if added else (await store.tombstones([job_id])).get(job_id)
        if tombstone is None:  # stopped or purged between the two reads
            raise ApiError(409, "conflict", f"job {job_id} changed meanwhile; try again")
        log.info("api.job_tombstoned", job_id=job_id, reason=tombstone.reason.value)
        return json_answer(tombstone_view(tombstone))

    async def list_jobs(self, request: web.Request) -> web.Response:
        """GET /jobs?state=&batch=&limit=&after=: one page of `status --json` objects, oldest first;
        the next page's cursor in `Link: <...>; rel="next"` and `X-Next-Cursor`."""
        self._require_read(request)
        state = request.query.get("state") or None  # `state=` is "all", as the page's "all jobs" option
        if state is not None and state not in STATES:
            raise ApiError(400, "invalid_state", f"state must be one of {', '.join(sorted(STATES))}")
        batch = batch_name(request.query["batch"]) if "batch" in request.query else None
        limit = page_limit(request.query.get("limit"))
        after = page_after(request.query.get("after"))
        store = self._daemon.store
        # One more than a page: is there a next page? A batch's page reads only that batch's index.
        jobs = await store.list_jobs(state=state, limit=limit + 1, after=after, batch=batch)
        page = jobs[:limit]
        headers = {}
        if len(jobs) > limit:
            cursor = encode_cursor(page[-1].added_at, page[-1].id)
            filters = {**({"state": state} if state else {}), **({"batch": batch} if batch else {})}
            query = urlencode({**filters, "after": cursor, "limit": limit})
            headers = {"Link": f'</jobs?{query}>; rel="next"', "X-Next-Cursor": cursor}
        return json_answer(await self._views(page), headers=headers)

    async def get_job(self, request: web.Request) -> web.Response:
        self._require_read(request)
        job_id = _job_id(request)
        job = await self._daemon.store.get_job(job_id)
        if job is None:
            return error_response(404, "job_not_found", f"job {job_id} is not tracked")
        return json_answer((await self._views([job]))[0])

    async def _views(self, jobs: Sequence[JobState]) -> list[dict[str, Any]]:
        """`status --json` objects, a running job's expected finish included when the daemon knows it."""
        learned, now = self._daemon.learned, self._daemon.clock.now()
        expected = None if learned is None else functools.partial(learned.expected_finish, now=now)
        return await job_views(self._daemon.store, jobs, expected)

    async def delete_job(self, request: web.Request) -> web.Response:
        """Stop watching: the job and its pending deliveries go, nobody is notified, a tombstone stays."""
        self._require_write(request)
        job_id = _job_id(request)
        if not await self._daemon.store.remove_job(job_id, now=self._daemon.clock.now()):
            return error_response(404, "job_not_found", f"job {job_id} is not tracked")
        log.info("api.job_removed", job_id=job_id)
        return web.Response(status=204)

    async def _body(self, request: web.Request) -> bytes:
        limit = self._max_body
        too_large = ApiError(413, "body_too_large", f"the body must be at most {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            return await request.read()  # a chunked body over client_max_size is cut off here
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None


def _job_id(request: web.Request) -> str:
    try:
        return validate_job_id(request.match_info["job_id"])
    except InvalidJobId as exc:
        raise ApiError(400, "invalid_job_id", str(exc)) from None
