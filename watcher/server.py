"""The HTTP API and status page (aiohttp.web), started by the Daemon when `server:` is set.

Every answer is JSON, errors included ({"error": code, "message": text}), except
/metrics (Prometheus text) and the status page. Job routes need the token when
one is configured: `Authorization: Bearer <token>`, compared in constant time.
The status page trades a `?token=` for an HttpOnly, SameSite=Strict cookie that
is derived from the token (not the token itself) and accepted for reads only,
so a leaked cookie cannot add or delete jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from watcher.errors import InvalidJobId, StoreUnavailable, WatcherError
from watcher.metrics import WatcherMetrics
from watcher.models import WATCHING, Outcome, validate_job_id
from watcher.sources.base import parse_job
from watcher.status import job_views

if TYPE_CHECKING:
    from watcher.config import ServerSettings
    from watcher.daemon import Daemon

log = structlog.get_logger("watcher.server")

COOKIE = "import_watcher_session"
STATIC_DIR = Path(__file__).parent / "static"
STATES = frozenset({WATCHING, *(o.value for o in Outcome)})
PING_TIMEOUT = 2.0
MAX_LIST_LIMIT = 100_000
# Only these package files are served; nothing else under static/ is reachable.
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
PAGE_HEADERS = {
    # The page runs only its own script and talks only to this server.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The one error shape of this API."""
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def _same(given: str, expected: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str; constant time either way.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _static_text(name: str) -> str:
    # A path next to this module, not importlib.resources: a setuptools editable install can
    # make `watcher` a namespace package there, whose resource reader fails.
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def openapi_document(notifiers: Sequence[str], version: str | None = None) -> dict[str, Any]:
    """The packaged static/openapi.json as one daemon serves it: with its version, and the names
    `notify` accepts (its configured notifiers) as an enum, so that a client, or a fuzzer, can
    tell a name that will be refused with 400 `unknown_notifier` from one that will not."""
    document: dict[str, Any] = json.loads(_static_text("openapi.json"))
    if version is not None:
        document["info"]["version"] = version
    # With no notifier configured the enum is empty: `notify` can then only be [] or null.
    document["components"]["schemas"]["NotifierName"]["enum"] = list(notifiers)
    return document


class WatcherServer:
    """One daemon's HTTP listener; `url` is the bound address (port 0 picks a free one)."""

    def __init__(self, daemon: Daemon, settings: ServerSettings) -> None:
        self.daemon = daemon
        self.settings = settings
        self.metrics = WatcherMetrics()
        self.url = ""
        self.app: web.Application | None = None
        token = settings.token.reveal() if settings.token is not None else None
        self._token = token or None
        self._cookie = (
            hmac.new(token.encode(), b"import-watcher status page", hashlib.sha256).hexdigest() if token else ""
        )
        self._page = _static_text("index.html")
        self._assets = {name: _static_text(name) for name in ASSETS}
        version = None
        with contextlib.suppress(metadata.PackageNotFoundError):
            version = metadata.version("import-watcher")
        # The notifiers are fixed for the daemon's life (the intake checks `notify` against the same names).
        self._openapi = openapi_document(list(daemon.notifiers), version)

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Listen; the listener is closed when `stack` unwinds (after the daemon's drain)."""
        self.metrics.hook_into(self.daemon)
        self.app = self.build_app()
        # In-flight requests get a few seconds when the listener closes; the daemon's drain came first.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=min(5.0, self.daemon.config.shutdown_grace))
        await runner.setup()
        stack.push_async_callback(self._stop, runner)
        host, port = self.settings.host, self.settings.port
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise WatcherError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        log.info("server.listening", url=self.url, token_required=self._token is not None)

    async def _stop(self, runner: web.AppRunner) -> None:
        await runner.cleanup()
        log.info("server.stopped", url=self.url)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=self.settings.max_body)
        routes = app.router
        routes.add_get("/healthz", self.healthz)
        routes.add_get("/readyz", self.readyz)
        routes.add_get("/metrics", self.metrics_text)
        routes.add_get("/openapi.json", self.openapi)
        routes.add_post("/jobs", self.add_job)
        routes.add_get("/jobs", self.list_jobs)
        routes.add_get("/jobs/{job_id}", self.get_job)
        routes.add_delete("/jobs/{job_id}", self.delete_job)
        routes.add_get("/", self.page)
        routes.add_get("/static/{name}", self.asset)
        return app

    # --- plumbing -------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """JSON for every error, unknown routes included; one debug line per request (no query string)."""
        started = time.monotonic()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except web.HTTPException as exc:  # the router's 404 and 405, aiohttp's own 413
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers)
        except StoreUnavailable:
            response = error_response(503, "store_unavailable", "the state store is unavailable; try again")
        except Exception as exc:
            log.exception("http.handler_failed", method=request.method, path=request.path, error=repr(exc))
            response = error_response(500, "internal_error", "internal error; see the daemon's log")
        job_id = request.match_info.get("job_id")  # lines about a job carry its id
        log.debug(
            "http.request", method=request.method, path=request.path, status=response.status,
            ms=round((time.monotonic() - started) * 1000, 1), **({"job_id": job_id} if job_id else {}),
        )
        return response

    def _authorized(self, request: web.Request, *, read_only: bool) -> bool:
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), self._token):
            return True
        cookie = request.cookies.get(COOKIE)
        return read_only and cookie is not None and _same(cookie, self._cookie)

    def _require_token(self, request: web.Request, *, read_only: bool) -> None:
        if not self._authorized(request, read_only=read_only):
            raise ApiError.refused()

    async def _body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body
        too_large = ApiError(413, "body_too_large", f"the body must be at most {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            return await request.read()  # a chunked body over client_max_size is cut off here
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    @staticmethod
    def _job_id(request: web.Request) -> str:
        try:
            return validate_job_id(request.match_info["job_id"])
        except InvalidJobId as exc:
            raise ApiError(400, "invalid_job_id", str(exc)) from None

    # --- probes, metrics, description ----------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """Answering at all proves the event loop is alive."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        reason = await self._not_ready_reason()
        if reason is not None:
            return web.json_response({"status": "not_ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    async def _not_ready_reason(self) -> str | None:
        # Unauthenticated: the reason names what is wrong, never a URL or an error text.
        daemon = self.daemon
        if daemon.stop_event.is_set():
            return "shutting down"
        if not daemon.ready:
            return "starting"
        for source in daemon.sources:
            if not source.started:
                return f"source {source.name} has not started"
        try:
            await asyncio.wait_for(daemon.store.ping(), PING_TIMEOUT)
        except Exception as exc:  # any failure to answer means "not ready", whatever the backend raised
            log.debug("server.store_ping_failed", error=repr(exc))
            return "state store unreachable"
        return None

    async def metrics_text(self, request: web.Request) -> web.Response:
        body = await self.metrics.render(self.daemon)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self._openapi)

    # --- jobs -----------------------------------------------------------------------

    async def add_job(self, request: web.Request) -> web.Response:
        """POST /jobs: a queue message; 202 when new, 200 when already tracked."""
        self._require_token(request, read_only=False)
        raw = await self._body(request)
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "the body must be a JSON object {id, labels, notify}") from None
        if isinstance(message, str) or (isinstance(message, Mapping) and "id" in message):
            try:
                validate_job_id(message if isinstance(message, str) else message["id"])
            except InvalidJobId as exc:
                raise ApiError(400, "invalid_job_id", str(exc)) from None
        if isinstance(message, Mapping) and not isinstance(message.get("labels"), Mapping | None):
            # parse_job (shared with the job file) reads any empty value as "no labels";
            # the API takes only what its document allows: an object, or null for none.
            raise ApiError(400, "invalid_job", "`labels` must be an object of strings or numbers, or null")
        try:
            ref = parse_job(message)
        except ValueError as exc:
            raise ApiError(400, "invalid_job", str(exc)) from None
        intake = self.daemon.intake
        if intake is None:  # pragma: no cover - the server starts after the intake
            raise ApiError(503, "starting", "the daemon is starting; try again")
        try:
            intake.check_notify(ref.notify)
        except ValueError as exc:
            raise ApiError(400, "unknown_notifier", str(exc)) from None
        added = await intake.add(ref)
        log.info("api.job_added" if added else "api.job_known", job_id=ref.id)
        job = await self.daemon.store.get_job(ref.id)
        view = (await job_views(self.daemon.store, [job]))[0] if job is not None else {"id": ref.id}
        return web.json_response(view, status=202 if added else 200, headers={"Location": f"/jobs/{ref.id}"})

    async def list_jobs(self, request: web.Request) -> web.Response:
        """GET /jobs?state=&limit=: the `status --json` objects, oldest first."""
        self._require_token(request, read_only=True)
        state = request.query.get("state") or None  # `state=` is "all", as the page's "all jobs" option
        if state is not None and state not in STATES:
            raise ApiError(400, "invalid_state", f"state must be one of {', '.join(sorted(STATES))}")
        limit_text = request.query.get("limit")
        limit = None
        if limit_text is not None:
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
            if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= MAX_LIST_LIMIT:
                raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
            limit = int(limit_text)
        jobs = await self.daemon.store.list_jobs(state=state, limit=limit)
        return web.json_response(await job_views(self.daemon.store, jobs))

    async def get_job(self, request: web.Request) -> web.Response:
        self._require_token(request, read_only=True)
        job_id = self._job_id(request)
        job = await self.daemon.store.get_job(job_id)
        if job is None:
            return error_response(404, "job_not_found", f"job {job_id} is not tracked")
        return web.json_response((await job_views(self.daemon.store, [job]))[0])

    async def delete_job(self, request: web.Request) -> web.Response:
        """Stop watching: the job and its pending deliveries go, and nobody is notified."""
        self._require_token(request, read_only=False)
        job_id = self._job_id(request)
        if not await self.daemon.store.remove_job(job_id):
            return error_response(404, "job_not_found", f"job {job_id} is not tracked")
        log.info("api.job_removed", job_id=job_id)
        return web.Response(status=204)

    # --- status page ----------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        """The status page; a valid `?token=` also sets the page's cookie."""
        given = request.query.get("token")
        if given is not None and self._token is not None:
            if not _same(given, self._token):
                raise ApiError.refused()
            # Answered here rather than by a redirect: a SameSite=Strict cookie is not sent on a
            # redirect that follows a link from another site (chat, e-mail), but it is sent on the
            # page's own fetches. The page then drops the token from the address bar.
            response = self._page_response()
            response.set_cookie(COOKIE, self._cookie, httponly=True, samesite="Strict", path="/",
                                secure=request.secure or None)
            return response
        self._require_token(request, read_only=True)
        return self._page_response()

    def _page_response(self) -> web.Response:
        return web.Response(text=self._page, content_type="text/html", headers=PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            return error_response(404, "not_found", "no such file")
        return web.Response(
            text=self._assets[name], content_type=ASSETS[name],
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )


class ApiError(Exception):
    """An answer other than success, rendered as {"error": code, "message": message} by the middleware."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    @classmethod
    def refused(cls) -> ApiError:
        return cls(
            401, "unauthorized", "a valid token is required: Authorization: Bearer <server.token>",
            {"WWW-Authenticate": 'Bearer realm="import-watcher"'},
        )
