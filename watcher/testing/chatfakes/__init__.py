"""Local fakes of chat and paging services, written from their documentation.

Each fake is an aiohttp application that rejects what the real service rejects and
answers like it (status, body, rate-limit headers). They share a clock with the code
under test, so a test of pacing runs in virtual time: `JumpClock` moves forward by
exactly what a sleeper asks for, at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web


class JumpClock:
    """A clock whose `sleep` moves time forward at once by what was asked (virtual time)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


@dataclass
class Served:
    """A fake application listening on 127.0.0.1; `url` has no trailing slash."""

    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application) -> Served:
    """Start `app` on a free loopback port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1]
    return Served(runner, f"http://127.0.0.1:{port}")
