"""Answered URLs on the wire (watcher.net.OutboundPolicy.open_answered), against a local aiohttp server:
signed links sent byte for byte through redirects, a PUT never redirected, and Lifecycle.download's
retries and refusals on the one implementation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from watcher.clock import SystemClock
from watcher.lifecycle import DownloadFailed, Lifecycle
from watcher.net import OutboundPolicy, OutboundRefused
from watcher.ratelimit import LocalRateBudget
from watcher.schema import Secret
from watcher.sendgrid import SendGridSettings

SIGNED = "/f.csv?X-Amz-Credential=AK%2F20261201%2Fus-east-1%2Fs3&x=%7E&X-Amz-Signature=ab%2Bcd"
POLICY = OutboundPolicy(allow_insecure=True, allow_private=True)  # the peer is plain http on loopback


class Peer:
    """Redirects, a signed file, a PUT that answers 307, and a file that fails `fail_first` times first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.seen: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{name}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.raw_path}")
        name = request.match_info["name"]
        if name == "to-signed":
            return web.Response(status=302, headers={"Location": SIGNED})  # as written (HTTPFound would requote)
        if name == "to-nowhere":
            return web.Response(status=302, headers={"Location": "http://[::1"})
        if name == "put":
            raise web.HTTPTemporaryRedirect("/f.csv")
        if name == "flaky.csv" and self.fail_first:
            self.fail_first -= 1
            return web.Response(status=503, text="slow down")
        return web.Response(body=b"email\na@example.com\n")


@contextlib.asynccontextmanager
async def serving(peer: Peer) -> AsyncIterator[str]:
    runner = web.AppRunner(peer.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Sleeps(SystemClock):
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def lifecycle(base: str, clock: Sleeps) -> Lifecycle:
    settings = SendGridSettings(api_key=Secret("SG.k"), base_url=base, allow_insecure=True, allow_private=True)
    account = SimpleNamespace(name="main", settings=settings, session=None,
                              budget=LocalRateBudget(max_rate=None, clock=clock))
    return Lifecycle(account, clock=clock)  # type: ignore[arg-type]


async def test_a_signed_link_is_sent_byte_for_byte_through_a_redirect() -> None:
    """The redirect target's query reaches the server as written: %2F, %7E and %2B stay escaped."""
    peer = Peer()
    async with serving(peer) as base, POLICY.make_session() as session:
        body = await POLICY.fetch_answered(session, f"{base}/to-signed", max_bytes=1024, total_timeout=5.0)
    assert b"email\na@example.com\n" == body
    assert ["GET /to-signed", f"GET {SIGNED}"] == peer.seen


async def test_a_put_is_not_redirected() -> None:
    """A PUT's body cannot be sent twice: its first answer, a 307 here, is the answer."""
    peer = Peer()
    async with serving(peer) as base, POLICY.make_session() as session:
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with POLICY.open_answered(session, f"{base}/put", method="PUT", data=b"x", timeout=timeout) as answer:
            status = answer.status
    assert (307, ["PUT /put"]) == (status, peer.seen)


@pytest.mark.parametrize("url", ["https://files.example.com/a b.csv", "https://files.example.com/é.csv",
                                 "https://files.example.com/e.csv\r\nX-Injected: 1"])
def test_a_url_that_cannot_be_sent_as_written_is_refused(url: str) -> None:
    """Answered URLs go out as written, so spaces, controls and non-ASCII are refused before any request."""
    with pytest.raises(OutboundRefused, match="not a URL as sent"):
        OutboundPolicy(True, True).check_answered(url)


async def test_a_download_is_retried_after_a_503_and_lands_whole(tmp_path: Path) -> None:
    """Two 503s, then the file: it lands whole after the backoff's two waits."""
    peer, clock = Peer(fail_first=2), Sleeps()
    async with serving(peer) as base:
        size, _ = await lifecycle(base, clock).download(f"{base}/flaky.csv", tmp_path / "f.csv")
    assert (20, b"email\na@example.com\n") == (size, (tmp_path / "f.csv").read_bytes())
    assert ([1.0, 4.0], 3) == (clock.slept, len(peer.seen))


async def test_a_download_that_keeps_failing_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    """Every try answering 503: DownloadFailed naming the last failure, after ATTEMPTS tries, no file."""
    peer, clock = Peer(fail_first=10), Sleeps()
    async with serving(peer) as base:
        with pytest.raises(DownloadFailed, match=r"failed 4 times; last: HTTP 503 from http://127\.0\.0\.1:\d+/flaky"):
            await lifecycle(base, clock).download(f"{base}/flaky.csv", tmp_path / "f.csv")
    assert (4, []) == (len(peer.seen), list(tmp_path.iterdir()))


async def test_a_redirect_to_an_invalid_url_is_refused_in_one_line(tmp_path: Path) -> None:
    """A Location no URL parser takes is a refusal, not a traceback, and is not retried."""
    peer, clock = Peer(), Sleeps()
    async with serving(peer) as base:
        with pytest.raises(OutboundRefused, match=r"redirect from http://127\.0\.0\.1:\d+/to-nowhere to an invalid"):
            await lifecycle(base, clock).download(f"{base}/to-nowhere", tmp_path / "f.csv")
    assert (1, []) == (len(peer.seen), clock.slept)
