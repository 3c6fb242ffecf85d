"""Fault injection for the fake SendGrid: the fault plan, the pauses, and applying them.

A `FaultPlan` is what `FakeSendGrid.set_faults` (or `POST /_control/faults`)
asked for: a latency added to every API request and the share of requests that
get dropped, hang, answer 500, answer 429 or answer a malformed 200, picked by
one seeded draw per request. `Pauses` tracks latency and hangs in progress so
closing the fake can cut them short; `inject` applies a plan to one request.
"""

from __future__ import annotations

import asyncio
import random

from aiohttp import web

from watcher.testing.responses import sendgrid_error

# What a 200 looks like when a proxy or the API misbehaves: cut JSON, an HTML
# error page, a JSON array, an object with the wrong types, nothing at all.
MALFORMED_BODIES = (
    (b'{"id": "', "application/json"),
    (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    (b'[{"status": "completed"}]', "application/json"),
    (b'{"id": 42, "status": ["completed"], "results": "n/a"}', "application/json"),
    (b"", "application/json"),
)


class FaultPlan:
    """Latency plus cumulative fault thresholds over one seeded draw; all zero means none."""

    __slots__ = ("latency", "rng", "steps")

    def __init__(self, *, error_rate: float = 0.0, latency: float = 0.0,
                 malformed_rate: float = 0.0, drop_rate: float = 0.0, timeout_rate: float = 0.0,
                 status_429_rate: float = 0.0, seed: int | None = None) -> None:
        rates = {"drop": drop_rate, "timeout": timeout_rate, "error": error_rate,
                 "429": status_429_rate, "malformed": malformed_rate}
        if any(not 0.0 <= rate <= 1.0 for rate in rates.values()) or latency < 0:
            raise ValueError("rates must be within [0, 1] and latency >= 0")
        self.latency = latency
        self.rng = random.Random(seed)  # noqa: S311 - fault injection, not security
        # Cumulative thresholds over one draw, so each rate is that share of requests.
        self.steps: list[tuple[float, str]] = []
        total = 0.0
        for kind, rate in rates.items():
            if rate > 0:
                total += rate
                self.steps.append((total, kind))

    def draw(self) -> str | None:
        """The fault for one request ("drop", "timeout", "error", "429", "malformed"), or None."""
        if not self.steps:
            return None
        draw = self.rng.random()
        return next((kind for bound, kind in self.steps if draw < bound), None)

    def malformed_body(self) -> tuple[bytes, str]:
        """(body, content type) of a malformed 200, picked with the plan's own draws."""
        return self.rng.choice(MALFORMED_BODIES)


class Pauses:
    """Latency and hangs in progress, so that closing the fake can cut them short."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[None]] = set()

    async def wait(self, seconds: float | None) -> None:
        """Wait `seconds` (None: until the client gives up), or less if cut short."""
        loop = asyncio.get_running_loop()
        pause: asyncio.Future[None] = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _settle, pause)
        self._pending.add(pause)
        try:
            await pause
        finally:
            self._pending.discard(pause)
            if timer is not None:
                timer.cancel()

    def cut(self) -> None:
        """End every pause in progress."""
        for pause in list(self._pending):
            _settle(pause)


def _settle(pause: asyncio.Future[None]) -> None:
    """End a pause unless it already ended."""
    if not pause.done():
        pause.set_result(None)


async def inject(plan: FaultPlan, pauses: Pauses,
                 request: web.Request) -> web.StreamResponse | None:
    """Apply the plan's latency, then maybe one fault; None means answer normally."""
    if plan.latency:
        await pauses.wait(plan.latency)
    kind = plan.draw()
    if kind == "error":
        return web.json_response({"errors": [{"message": "internal server error"}]},
                                 status=500)
    if kind == "429":
        return sendgrid_error(429, "too many requests")
    if kind == "malformed":
        body, content_type = plan.malformed_body()
        return web.Response(body=body, content_type=content_type)
    if kind == "timeout":
        await pauses.wait(None)
    if kind in ("drop", "timeout"):
        if request.transport is not None:
            request.transport.close()  # the client sees the server disconnect
        return web.Response(status=204)  # never sent: the transport is closing
    return None
