"""Servers the benchmarks run against, each in a process of its own.

`fixed_json_server`: a fast local HTTP server answering every GET with one fixed JSON body.

nginx when it is installed (a temporary config on 127.0.0.1, nothing outside a temp
directory); otherwise a minimal asyncio.Protocol HTTP/1.1 keep-alive server
(`benchmarks._fastserver`). Either answers in microseconds, so what a client
benchmark measures is the client. ``BENCH_SERVER=python`` forces the fallback.

`redis_server`: a private redis-server on a free port of 127.0.0.1 (no persistence), so
that its INFO commandstats count only what the benchmark sends; without the binary,
the Redis of ``BENCH_REDIS_URL`` (default 127.0.0.1:6379 db 14), whose counts then
include whatever else uses that server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks._harness import free_port, python, wait_for_port, worker_env

_NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Served:
    url: str
    kind: str  # "nginx" or "asyncio"


def nginx_binary() -> str | None:
    if os.environ.get("BENCH_SERVER") == "python":
        return None
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@contextlib.contextmanager
def fixed_json_server(body: bytes) -> Iterator[Served]:
    """Serve `body` to every request on 127.0.0.1 until the block ends."""
    binary = nginx_binary()
    if binary is not None:
        with _nginx(binary, body) as served:
            yield served
    else:
        with _asyncio_server(body) as served:
            yield served


@contextlib.contextmanager
def _nginx(binary: str, body: bytes) -> Iterator[Served]:
    text = body.decode()
    if "'" in text or "$" in text or "\\" in text:
        raise ValueError("the body must not need nginx escaping")
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=tmp, port=port, body=text), encoding="utf-8")
        process = subprocess.Popen(
            [binary, "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            try:
                wait_for_port("127.0.0.1", port)
            except OSError:
                process.kill()
                _, err = process.communicate()
                raise RuntimeError(f"nginx did not start: {err.decode(errors='replace')}") from None
            yield Served(f"http://127.0.0.1:{port}", "nginx")
        finally:
            _stop(process, signal.SIGQUIT)


@contextlib.contextmanager
def _asyncio_server(body: bytes) -> Iterator[Served]:
    with tempfile.NamedTemporaryFile(prefix="bench-body-", delete=False) as handle:
        handle.write(body)
    process = subprocess.Popen(
        [python(), "-m", "benchmarks._fastserver", handle.name],
        stdout=subprocess.PIPE, text=True, env=worker_env(),
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().strip())
        yield Served(f"http://127.0.0.1:{port}", "asyncio")
    finally:
        _stop(process, signal.SIGTERM)
        os.unlink(handle.name)


def _stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], sig: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class RedisServed:
    url: str
    kind: str  # "private" (a redis-server of our own) or "shared"


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServed]:
    """A Redis for the block: a private redis-server when installed, else the shared one."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield RedisServed(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"), "shared")
        return
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        port = free_port()
        process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", tmp, "--logfile", f"{tmp}/redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port("127.0.0.1", port)
            yield RedisServed(f"redis://127.0.0.1:{port}/0", "private")
        finally:
            _stop(process, signal.SIGTERM)
