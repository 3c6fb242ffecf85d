"""The HTTP API and status page (aiohttp.web), started by the Daemon when `server:` is set.

Every answer is JSON, errors included ({"error": code, "message": text}), except
/metrics (Prometheus text) and the status page. Job routes need the token when
one is configured: `Authorization: Bearer <token>`, compared in constant time.
The status page trades a `?token=` for an HttpOnly, SameSite=Strict cookie that
is derived from the token (not the token itself) and accepted for reads only,
so a leaked cookie cannot add or delete jobs.

Safe in a browser's world (a web page the operator visits must not reach the API):
without a token only a `Host` naming loopback is served (421 otherwise: DNS
rebinding), and POST and DELETE need `Content-Type: application/json` (415: no
form post can send it without a CORS preflight, which is never granted) and no
`Origin` other than the server's own (403). Bodies are strict JSON (I-JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from watcher.api_batches import BatchRoutes
from watcher.api_imports import ImportAccounts, ImportRoutes
from watcher.api_jobs import Expecting, JobIntake, JobRoutes, error_response, json_answer
from watcher.clock import Clock
from watcher.config import ServerSettings
from watcher.errors import StoreBroken, StoreUnavailable, WatcherError
from watcher.httpinput import ApiError, authority, same_origin
from watcher.net import is_loopback_host
from watcher.status import summary_view
from watcher.store.base import StateStore

log = structlog.get_logger("watcher.server")

COOKIE = "import_watcher_session"
STATIC_DIR = Path(__file__).parent / "static"
# Counting every job is a scan; open tabs (each asks every 5 s) share one count this recent.
SUMMARY_MAX_AGE = 2.0
STATE_CHANGING = frozenset({"POST", "DELETE"})
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


# --- what the server reads of the daemon (it never imports watcher.daemon) ------------------


class _Metrics(Protocol):
    async def render(self, status: Any, /) -> bytes: ...


class ServedDaemon(Protocol):
    """The part of a running daemon the HTTP server reads."""

    @property
    def store(self) -> StateStore: ...
    @property
    def intake(self) -> JobIntake | None: ...
    @property
    def notifiers(self) -> Mapping[str, object]: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def metrics(self) -> _Metrics: ...
    @property
    def accounts(self) -> ImportAccounts | None: ...
    @property
    def learned(self) -> Expecting | None: ...

    async def not_ready_reason(self) -> str | None:
        """None when ready; otherwise a short reason safe to show without a token."""

    def close_time_left(self) -> float:
        """Seconds the listener may still take to close: the shutdown's fixed margin, less what is spent."""


# --- small pure helpers ----------------------------------------------------------------------


def _same(given: str, expected: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str; constant time either way.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _static_text(name: str) -> str:
    # A path next to this module, not importlib.resources: a setuptools editable install can
    # make `watcher` a namespace package there, whose resource reader fails.
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def openapi_document(
    notifiers: Sequence[str], version: str | None = None, accounts: Sequence[str] | None = None
) -> dict[str, Any]:
    """The packaged static/openapi.json as one daemon serves it: with its version, and the names
    `notify` and `account` accept (its configured notifiers and accounts) as enums, so that a client,
    or a fuzzer, can tell a name that will be refused with 400 from one that will not."""
    document: dict[str, Any] = json.loads(_static_text("openapi.json"))
    if version is not None:
        document["info"]["version"] = version
    # With no notifier configured the enum is empty: `notify` can then only be [] or null.
    document["components"]["schemas"]["NotifierName"]["enum"] = list(notifiers)
    if accounts is not None:
        document["components"]["schemas"]["AccountName"]["enum"] = list(accounts)
    return document


class WatcherServer:
    """One daemon's HTTP listener; `url` is the bound address (port 0 picks a free one)."""

    def __init__(self, daemon: ServedDaemon, settings: ServerSettings) -> None:
        self.daemon = daemon
        self.settings = settings
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
        accounts = daemon.accounts.names if daemon.accounts is not None else None
        self._openapi = openapi_document(list(daemon.notifiers), version, accounts)
        self._summary: tuple[float, dict[str, dict[str, int]]] | None = None
        self._summary_lock = asyncio.Lock()

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Listen; the listener is closed when `stack` unwinds (after the daemon's drain)."""
        self.app = self.build_app()
        # The daemon's drain came first; requests still open get what is left of the shutdown margin.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.daemon.close_time_left())
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
        try:
            await asyncio.wait_for(runner.cleanup(), self.daemon.close_time_left())
        except TimeoutError:
            log.warning("server.close_cut_short", url=self.url)
        log.info("server.stopped", url=self.url)

    def build_app(self) -> web.Application:
        # The error middleware comes first (outermost), so the guard's refusals are JSON too.
        app = web.Application(middlewares=[self._errors, self._guard], client_max_size=self.settings.max_body)
        routes = app.router
        routes.add_get("/healthz", self.healthz)
        routes.add_get("/readyz", self.readyz)
        routes.add_get("/metrics", self.metrics_text)
        routes.add_get("/openapi.json", self.openapi)
        routes.add_get("/summary", self.summary)
        readable = functools.partial(self._require_token, read_only=True)
        writable = functools.partial(self._require_token, read_only=False)
        JobRoutes(self.daemon, require_read=readable, require_write=writable, max_body=self.settings.max_body
                  ).register(routes)
        BatchRoutes(lambda: self.daemon.store, require_read=readable, page=self.page).register(routes)
        ImportRoutes(self.daemon, require_write=writable).register(routes)
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
        except (StoreUnavailable, StoreBroken) as exc:  # readiness tells the operator which; a client retries
            log.debug("http.store_failed", path=request.path, error=type(exc).__name__)
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

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse what only a hostile web page would send, before any handler reads anything."""
        if self._token is None and not is_loopback_host((authority(request.host, None) or ("", None))[0]):
            # DNS rebinding: a page at attacker.example whose name now points at 127.0.0.1.
            raise ApiError(421, "misdirected_request",
                           "without server.token only a loopback Host (127.0.0.1, [::1], localhost) is served")
        if request.method in STATE_CHANGING and request.match_info.http_exception is None:
            # A form or a no-cors fetch cannot send JSON. POST /imports takes the CSV as multipart (which a
            # form can send): the Origin check below and its own Sec-Fetch-Site check refuse other sites.
            upload = request.path == "/imports" and request.content_type == "multipart/form-data"
            if request.content_type != "application/json" and not upload:
                raise ApiError(415, "unsupported_media_type", "POST and DELETE need Content-Type: application/json")
            origin = request.headers.get("Origin")
            if origin is not None and not same_origin(origin, request.host):
                raise ApiError(403, "cross_origin", "requests from another origin may not change anything")
        return await handler(request)

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

    # --- probes, metrics, description ----------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """Answering at all proves the event loop is alive."""
        return json_answer({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        # Unauthenticated: the reason names what is wrong, never a URL or an error text.
        try:
            reason = await self.daemon.not_ready_reason()
        except Exception as exc:  # a readiness check that fails is an answer too: not ready
            log.warning("server.readiness_failed", error=repr(exc))
            reason = "readiness check failed"
        if reason is not None:
            return json_answer({"status": "not_ready", "reason": reason}, status=503)
        return json_answer({"status": "ready"})

    async def metrics_text(self, request: web.Request) -> web.Response:
        body = await self.daemon.metrics.render(self.daemon)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return json_answer(self._openapi)

    async def summary(self, request: web.Request) -> web.Response:
        """GET /summary: jobs and deliveries per state, counted at most SUMMARY_MAX_AGE ago."""
        self._require_token(request, read_only=True)
        async with self._summary_lock:  # concurrent askers wait for one count, then share it
            now = self.daemon.clock.now()
            if self._summary is None or not 0 <= now - self._summary[0] < SUMMARY_MAX_AGE:
                self._summary = (now, summary_view(await self.daemon.store.counts()))
            return json_answer(self._summary[1])

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
