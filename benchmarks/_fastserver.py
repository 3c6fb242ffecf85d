"""A minimal HTTP/1.1 keep-alive server: every request gets the same JSON body.

``python -m benchmarks._fastserver BODY_FILE`` listens on a free port of 127.0.0.1,
prints the port on one line, and serves until SIGTERM. Requests are assumed to
carry no body (the benchmarks only GET), so one response per blank line.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class _Answer(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self._response = response
        self._pending = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._pending + data
        count = buffer.count(b"\r\n\r\n")
        if count and self._transport is not None:
            self._pending = buffer[buffer.rfind(b"\r\n\r\n") + 4 :]
            self._transport.write(self._response * count)
        else:
            self._pending = buffer


async def _serve(body: bytes) -> None:
    loop = asyncio.get_running_loop()
    response = _response(body)
    server = await loop.create_server(lambda: _Answer(response), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1]).read_bytes()))
