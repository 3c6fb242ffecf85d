"""The answered-URL policy against real TLS servers: redirects, private addresses, time budget.

The strict-policy cases need a server at a *public* address, so they run in a child
process inside fresh network and mount namespaces (`unshare -nm`): there the loopback
interface also carries 192.88.99.7 (a global address) and /etc/hosts is our own, so
nothing on the machine is touched. The watcher trusts the test CA through SSL_CERT_FILE.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from watcher.net import OutboundPolicy, configured_session
from watcher.notify.errors_file import summarize_errors_file

PUBLIC_IP = "192.88.99.7"
CSV = "email,error\na@x,invalid email\nb@x,invalid email\n"
NAMES = ("errors.test", "internal.test", "mixed.test", "localhost")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and a server certificate for our test names and addresses, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    where = tmp_path_factory.mktemp("tls")
    san = ",".join([*(f"DNS:{name}" for name in NAMES), "IP:127.0.0.1", f"IP:{PUBLIC_IP}"])
    (where / "ext.cnf").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=watcher test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=where)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=errors.test",
             "-keyout", "server.key", "-out", "server.csr", cwd=where)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem", cwd=where)  # fmt: skip
    return where


def server_context(tls: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls / "server.pem", tls / "server.key")
    return context


Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    """Start aiohttp apps on 127.0.0.1 (https with `tls`); yields their base URLs."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], tls: Path | None = None) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tls) if tls else None)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


class Counter:
    """An internal server that must never be reached: counts every request."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text="email,error\nsecret@internal,INTERNAL DATA\n")


async def redirect_to(target: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/ok.csv":
            return web.Response(text=CSV)
        raise web.HTTPFound(target)

    return handle


async def test_https_redirect_to_plain_http_loopback_is_refused(serve, tls_files, monkeypatch) -> None:
    """An https errors URL redirecting to plain http on loopback: the internal server sees nothing."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files / "ca.pem"))
    internal = Counter()
    internal_url = await serve(internal.handle)
    public = await serve(await redirect_to(f"{internal_url}/internal.csv"), tls=tls_files)
    # allow_private: the "public" server is on loopback here; plain http stays refused.
    policy = OutboundPolicy(allow_private=True)

    fine = await summarize_errors_file(None, f"{public}/ok.csv", policy=policy)
    result = await summarize_errors_file(None, f"{public}/errors.csv", policy=policy)

    assert 2 == fine.summary["rows"]  # TLS through the test CA works: the refusal is the policy's
    assert result.summary["unavailable"].startswith(f"refusing {internal_url}/internal.csv: only https URLs are read")
    assert 0 == internal.requests


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/e.csv", "http://localhost:{port}/e.csv"])
async def test_plain_http_loopback_errors_urls_are_refused(serve, url: str) -> None:
    """http://127.0.0.1 and http://localhost errors URLs are refused without the two flags."""
    internal = Counter()
    port = (await serve(internal.handle)).rsplit(":", 1)[1]

    strict = await summarize_errors_file(None, url.format(port=port))
    insecure = await summarize_errors_file(None, url.format(port=port), policy=OutboundPolicy(allow_insecure=True))

    assert "only https URLs are read" in strict.summary["unavailable"]
    assert "loopback" in insecure.summary["unavailable"]
    assert 0 == internal.requests


async def test_both_flags_let_a_loopback_fake_through(serve) -> None:
    """With allow_private and allow_insecure (the demo, tests) a plain-http loopback fake is read."""

    async def csv(request: web.Request) -> web.Response:
        return web.Response(text=CSV)

    base = await serve(csv)

    result = await summarize_errors_file(None, f"{base}/e.csv", policy=OutboundPolicy(True, True))

    assert 2 == result.summary["rows"]


async def test_metadata_address_is_refused_before_any_connection() -> None:
    """https://169.254.169.254/... is refused at once, not tried (a try would time out here)."""
    started = time.monotonic()

    result = await summarize_errors_file(None, "https://169.254.169.254/latest/meta-data/", timeout=5.0)

    assert "refusing https://169.254.169.254/latest/meta-data/: link-local address" in result.summary["unavailable"]
    assert time.monotonic() - started < 1.0


async def test_a_trickling_errors_file_gives_up_within_the_total_budget(serve) -> None:
    """A server that sends a byte every 50 ms for 30 s: unavailable once the total budget is spent."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"email,error\n")
        for _ in range(600):
            await asyncio.sleep(0.05)
            await response.write(b"x")
        return response

    base = await serve(trickle)
    started = time.monotonic()

    result = await summarize_errors_file(None, f"{base}/slow.csv", policy=OutboundPolicy(True, True), timeout=0.5)

    assert {"unavailable": "download timed out after 0.5s"} == result.summary
    assert time.monotonic() - started < 2.0


# --- strict policy, public address: in a child process in its own namespaces -----------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, ssl, sys
    from aiohttp import web
    from watcher.net import OutboundPolicy
    from watcher.notify.errors_file import summarize_errors_file

    PUBLIC, TLS, CSV = sys.argv[1], sys.argv[2], sys.argv[3]
    counts = {"http": 0, "https": 0, "same-port": 0}

    def tls():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(TLS + "/server.pem", TLS + "/server.key")
        return context

    async def public(request):
        if request.path == "/ok.csv":
            return web.Response(text=CSV)
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        raise web.HTTPFound(request.query["to"])

    def internal(kind):
        async def handle(request):
            counts[kind] += 1
            return web.Response(text="email,error\\nsecret@internal,INTERNAL DATA\\n")
        return handle

    async def start(handler, host, port, context=None):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=context).start()

    async def main():
        await start(public, PUBLIC, 8443, tls())
        await start(internal("http"), "127.0.0.1", 8080)
        await start(internal("https"), "127.0.0.1", 9443, tls())
        await start(internal("same-port"), "127.0.0.1", 8443, tls())
        policy = OutboundPolicy()  # the default: https to public addresses only
        results = {}
        async with policy.make_session() as session:  # one session for every download, as a daemon keeps
            for case in json.loads(sys.stdin.read()):
                answer = await summarize_errors_file(session, case, policy=policy, timeout=5.0)
                results[case] = answer.summary
        print(json.dumps({"results": results, "counts": counts}))

    asyncio.run(main())
    """
)

# mixed.test resolves to loopback first, then the public address: only the public one may be used.
HOSTS = (
    f"127.0.0.1 localhost\n{PUBLIC_IP} errors.test\n127.0.0.1 internal.test\n"
    f"127.0.0.1 mixed.test\n{PUBLIC_IP} mixed.test\n"
)
BASE = "https://errors.test:8443"


def run_isolated(tls: Path, tmp_path: Path, cases: list[str]) -> dict[str, Any]:
    """Run CHILD in fresh network + mount namespaces; its JSON report."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a private network namespace")
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    setup = f"mount --bind {hosts} /etc/hosts && ip link set lo up && ip addr add {PUBLIC_IP}/32 dev lo"
    command = f'{setup} && exec "$0" "$@"'
    env = {**os.environ, "SSL_CERT_FILE": str(tls / "ca.pem")}
    done = subprocess.run(
        ["unshare", "-nm", "sh", "-c", command, sys.executable, str(script), PUBLIC_IP, str(tls), CSV],
        input=json.dumps(cases), capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_every_redirect_hop_is_checked_before_it_is_followed(tls_files: Path, tmp_path: Path) -> None:
    """Redirects from a public https server to loopback (by scheme, address or name) are refused per hop,
    and a name with a loopback and a public address connects only to the public one."""
    cases = {
        f"{BASE}/ok.csv": None,
        "https://mixed.test:8443/ok.csv": None,
        f"{BASE}/r?to=http://127.0.0.1:8080/internal.csv": "only https URLs are read",
        f"{BASE}/r?to=https://127.0.0.1:9443/internal.csv": "loopback address",
        f"{BASE}/r?to=https://localhost:9443/internal.csv": "loopback host",
        f"{BASE}/r?to=https://internal.test:9443/internal.csv": "internal.test resolves to a loopback address",
        f"{BASE}/r?to=https://169.254.169.254/latest/meta-data/": "link-local address",
        "https://internal.test:9443/direct.csv": "internal.test resolves to a loopback address",
        f"{BASE}/loop": "more than 5 redirects",
    }

    report = run_isolated(tls_files, tmp_path, list(cases))

    assert {"http": 0, "https": 0, "same-port": 0} == report["counts"]
    for url, why in cases.items():
        if why is None:
            assert 2 == report["results"][url].get("rows"), (url, report["results"][url])
        else:
            assert why in report["results"][url].get("unavailable", ""), (url, report["results"][url])


async def test_a_configured_session_reads_the_trust_store_when_it_is_made(serve, tls_files, monkeypatch) -> None:
    """configured_session (the SendGrid API, the daemon's API) trusts SSL_CERT_FILE as it is when the session
    is made, not when aiohttp was imported: a private CA set for the process works."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files / "ca.pem"))

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    url = await serve(ok, tls=tls_files)
    async with configured_session() as session, session.get(f"{url}/v3/ping") as response:
        assert (200, "ok") == (response.status, await response.text())
