"""The API's batch routes, GET /batches and GET /batches/{name}, registered by WatcherServer.

They run behind the server's middlewares (JSON errors, the Host and Origin guard): a refusal
here is an ApiError, rendered like every other one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from watcher.api_jobs import json_answer
from watcher.httpinput import ApiError, batch_name, page_after, page_limit
from watcher.models import BatchPhase
from watcher.status import batch_view, encode_cursor, stored_batch_totals
from watcher.store.base import StateStore

BATCH_STATES = frozenset(phase.value for phase in BatchPhase)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

class BatchRoutes:
    """The batch handlers over a daemon's store; `require_read` refuses a request without read access,
    `page` answers a browser with the status page."""

    def __init__(
        self, store: Callable[[], StateStore], *, require_read: Callable[[web.Request], None], page: Handler
    ) -> None:
        self._store = store
        self._require_read = require_read
        self._page = page

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/batches", self.list_batches)
        router.add_get("/batches/{name}", self.get_batch)

    async def list_batches(self, request: web.Request) -> web.Response:
        """GET /batches?state=&limit=&after=: one page of batches (without totals), oldest first, paged as /jobs."""
        self._require_read(request)
        state = request.query.get("state") or None
        if state is not None and state not in BATCH_STATES:
            raise ApiError(400, "invalid_state", f"state must be one of {', '.join(sorted(BATCH_STATES))}")
        limit = page_limit(request.query.get("limit"))
        after = page_after(request.query.get("after"), batch_name)
        batches = await self._store().list_batches(phase=state, limit=limit + 1, after=after)
        page = batches[:limit]
        headers = {}
        if len(batches) > limit:
            cursor = encode_cursor(page[-1].started_at, page[-1].name)
            query = urlencode({**({"state": state} if state else {}), "after": cursor, "limit": limit})
            headers = {"Link": f'</batches?{query}>; rel="next"', "X-Next-Cursor": cursor}
        return json_answer([batch_view(batch) for batch in page], headers=headers)

    async def get_batch(self, request: web.Request) -> web.StreamResponse:
        """GET /batches/{name}: the batch with its totals; a browser (Accept: text/html, as a link in a
        batch summary opens it) gets the status page, which opens that batch."""
        if wants_page(request):
            return await self._page(request)
        self._require_read(request)
        name = batch_name(request.match_info["name"])
        store = self._store()
        batch = await store.get_batch(name)
        if batch is None:
            raise ApiError(404, "batch_not_found", f"batch {name} is not known")
        return json_answer(batch_view(batch, totals=await stored_batch_totals(store, name)))


def wants_page(request: web.Request) -> bool:
    """A browser navigating (it asks for HTML first), not an API client."""
    accept = request.headers.get("Accept", "")
    return accept.startswith("text/html") and "application/json" not in accept
