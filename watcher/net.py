"""The one outbound-URL policy: where the watcher may send requests, and how URLs are shown.

Two kinds of URL (DESIGN.md, "Tombstones, safety and limits"):
- configured: written by the operator (notifier URLs, sendgrid.base_url): https, or plain
  http to a loopback host; `allow_insecure` lifts the https rule for other hosts.
- answered: arriving in answers (errors_url, upload_uri, export urls, redirect targets):
  https only, every redirect hop checked before it is followed, and private, loopback,
  link-local and multicast addresses refused unless `allow_private` (and, for plain http,
  `allow_insecure`). The address check runs in the resolver of the session that connects,
  so a name that resolves differently at connect time (DNS rebinding) cannot slip through.

Every HTTP client the watcher runs is built on this module: `configured_session` for configured
URLs, `OutboundPolicy.make_session` for answered ones, whose requests go through `open_answered`
(streamed: uploads, downloads) or `fetch_answered` (a whole capped body: the errors file).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

#: Redirect hops followed for an answered URL before giving up.
MAX_REDIRECTS = 5
#: Bytes read at a time from a body.
CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MASK = "***"
# Query parameter names whose values are credentials (signed links, API keys).
_SECRET_QUERY_WORDS = ("token", "key", "sig", "secret", "pass", "pwd", "auth", "credential", "session")
_SECRET_QUERY_PREFIXES = ("x-amz-", "x-goog-")
# A URL inside free text (log messages, exception text): up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


class OutboundRefused(Exception):
    """The policy refuses a URL or the address it resolves to; the message is fit to show."""


class AnswerStatus(Exception):
    """An answered URL gave a final status other than 200."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {shown_url(url, path=True)}")
        self.status = status


class BodyTooLarge(Exception):
    """A body went past its cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


# --- showing URLs -----------------------------------------------------------


def _is_secret_query_name(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith(_SECRET_QUERY_PREFIXES) or any(word in lowered for word in _SECRET_QUERY_WORDS)


def _host_port(parts: Any) -> str:
    """netloc without the userinfo."""
    return str(parts.netloc).rpartition("@")[2]


def mask_url(url: str) -> str:
    """The URL with its userinfo and secret query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MASK}@{_host_port(parts)}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret_query_name(name) for name, _ in pairs):
            query = urlencode([(n, _MASK if _is_secret_query_name(n) else v) for n, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_urls_in_text(text: str) -> str:
    """Every URL inside `text` masked (userinfo, secret query values); other text unchanged."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)


def shown_url(url: str, *, path: bool = False) -> str:
    """Scheme and host (and the path if asked), never userinfo or query: for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid URL)"
    return f"{parts.scheme}://{_host_port(parts)}{parts.path if path else '/…'}"


# --- configured URLs -----------------------------------------------------------


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: plain http cannot leak off the machine."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def configured_url_problem(url: str, *, allow_insecure: bool = False) -> str | None:
    """Why an operator-configured URL may not be used (None: it may)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "expected an https URL"
    if parts.scheme not in ("https", "http") or not host:
        return "expected an https URL"
    if parts.scheme == "http" and not allow_insecure and not is_loopback_host(host):
        return "must use https (plain http only to a loopback host, or set allow_insecure: true)"
    return None


def base_url_problem(url: str, allow_insecure: bool = False) -> str | None:
    """Why a SendGrid API base URL may not be used: a configured URL, without /v3 or extras."""
    problem = configured_url_problem(url, allow_insecure=allow_insecure)
    if problem is not None:
        return problem
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return "must not contain a user name or password (the API key is sent in a header)"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    if parts.path.rstrip("/").lower().endswith("/v3"):
        return "must not end in /v3: the watcher adds /v3/... itself (e.g. https://api.sendgrid.com)"
    return None


# --- answered URLs -------------------------------------------------------------


def address_problem(address: str) -> str | None:
    """What kind of non-public address this is ("loopback", "private", ...); None when public."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return kind
    return None if ip.is_global else "non-public"


@dataclass(frozen=True)
class OutboundPolicy:
    """The rules for answered URLs; the flags are `sendgrid.allow_insecure` / `allow_private`."""

    allow_insecure: bool = False
    allow_private: bool = False

    @classmethod
    def of(cls, settings: Any) -> OutboundPolicy:
        """The policy of an object with `allow_insecure` / `allow_private` (SendGridSettings)."""
        return cls(bool(getattr(settings, "allow_insecure", False)), bool(getattr(settings, "allow_private", False)))

    def answered_url_problem(self, url: str) -> str | None:
        """Why a URL from an answer may not be requested, judged before any connection."""
        if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
            return "not a URL as sent (spaces, control or non-ASCII characters)"
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            return "not a valid URL"
        if parts.scheme not in ("https", "http") or not host:
            return "only https URLs are read"
        if parts.scheme == "http" and not self.allow_insecure:
            return "only https URLs are read (plain http needs sendgrid.allow_insecure)"
        literal = ":" in host or host.replace(".", "").isdigit()
        kind = address_problem(host) if literal else None
        if kind == "invalid":
            return "not a canonical IP address"
        if self.allow_private:
            return None
        name = host.rstrip(".").lower()
        if name == "localhost" or name.endswith(".localhost"):
            return "loopback host (needs sendgrid.allow_private)"
        return None if kind is None else f"{kind} address (needs sendgrid.allow_private)"

    def check_answered(self, url: str) -> None:
        """Raise OutboundRefused when a URL from an answer may not be requested."""
        problem = self.answered_url_problem(url)
        if problem is not None:
            raise OutboundRefused(f"refusing {shown_url(url, path=True)}: {problem}")

    def make_session(self, **options: Any) -> aiohttp.ClientSession:
        """A session for answered URLs: its resolver drops refused addresses, its SSL context is fresh.

        A fresh context reads the trust store now (SSL_CERT_FILE included), not at import.
        """
        connector = aiohttp.TCPConnector(resolver=_CheckedResolver(self), ssl=ssl.create_default_context())
        return aiohttp.ClientSession(connector=connector, trust_env=False, **options)

    async def fetch_answered(
        self, session: aiohttp.ClientSession | None, url: str, *, max_bytes: int, total_timeout: float
    ) -> bytes:
        """GET a URL from an answer: every hop checked before it is followed, the body capped,
        everything (redirects and body) within `total_timeout` seconds.

        `session` should come from `make_session` of an equal policy (it then filters the
        resolved addresses); any other session (or None) is replaced by one for this fetch.
        Raises OutboundRefused, AnswerStatus, BodyTooLarge, TimeoutError or aiohttp.ClientError.
        """
        async with asyncio.timeout(total_timeout), contextlib.AsyncExitStack() as stack:
            if session is None or _policy_of(session) != self:
                session = await stack.enter_async_context(self.make_session())
            timeout = aiohttp.ClientTimeout(total=total_timeout)
            async with self.open_answered(session, url, timeout=timeout) as response:
                if response.status != 200:
                    raise AnswerStatus(response.status, str(response.url))
                return await read_capped(response, max_bytes)

    @contextlib.asynccontextmanager
    async def open_answered(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's, per request
        method: str = "GET",
        **options: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The final answer to a request to a URL from an answer, whatever its status; released on exit.

        Every hop is checked before it is sent; a GET follows up to MAX_REDIRECTS redirects, any other
        method (a streamed body cannot be sent twice) yields its first answer. The URL is sent as it
        is written, so a presigned signature stays byte for byte. A refusal by the session's resolver
        (`make_session`) is raised as OutboundRefused naming the URL.
        """
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            self.check_answered(current)
            try:
                async with session.request(
                    method, URL(current, encoded=True), allow_redirects=False, timeout=timeout, **options
                ) as response:
                    if method != "GET" or response.status not in _REDIRECT_STATUSES:
                        yield response
                        return
                    current = _next_hop(current, response)
            except aiohttp.ClientConnectorError as exc:
                refused = exc.os_error if isinstance(exc.os_error, OutboundRefused) else exc.__cause__
                if isinstance(refused, OutboundRefused):
                    raise OutboundRefused(f"refusing {shown_url(current, path=True)}: {refused}") from None
                raise
        raise OutboundRefused(f"more than {MAX_REDIRECTS} redirects from {shown_url(url, path=True)}")


def configured_session(**options: Any) -> aiohttp.ClientSession:
    """A session for operator-configured URLs (the SendGrid API, notifiers, the daemon's own API),
    judged when the configuration was read (`configured_url_problem`); its SSL context is fresh,
    as `OutboundPolicy.make_session`'s."""
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
    return aiohttp.ClientSession(connector=connector, trust_env=False, **options)


def _next_hop(current: str, response: aiohttp.ClientResponse) -> str:
    location = response.headers.get("Location")
    if not location:
        raise AnswerStatus(response.status, current)
    try:
        return str(URL(current, encoded=True).join(URL(location, encoded=True)))
    except ValueError:
        raise OutboundRefused(f"redirect from {shown_url(current, path=True)} to an invalid URL") from None


async def capped_chunks(
    response: aiohttp.ClientResponse, max_bytes: int | None, *, chunk_bytes: int = CHUNK
) -> AsyncIterator[bytes]:
    """The body chunk by chunk, to stream it to disk; BodyTooLarge past `max_bytes` (declared or read)."""
    if max_bytes is not None and (response.content_length or 0) > max_bytes:
        raise BodyTooLarge(max_bytes)
    size = 0
    async for chunk in response.content.iter_chunked(chunk_bytes):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BodyTooLarge(max_bytes)
        yield chunk


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body; BodyTooLarge past `max_bytes` (declared or read)."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise BodyTooLarge(max_bytes)
    if declared is not None and "Content-Encoding" not in response.headers:
        return await response.read()  # exactly the declared length, as sent: one read, not a loop
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(min(CHUNK, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(max_bytes)
        chunks.append(chunk)


class _RefusedAddress(OSError, OutboundRefused):
    """Every address a name resolves to is refused: an OSError so aiohttp reports it as such."""


class _CheckedResolver(AbstractResolver):
    """The default resolver, minus the addresses the policy refuses."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve, then keep only the addresses the policy allows."""
        results = await self._inner.resolve(host, port, family)
        if self.policy.allow_private:
            return results
        kept = [result for result in results if address_problem(result["host"]) is None]
        if not kept:
            kind = address_problem(results[0]["host"]) if results else "no"
            raise _RefusedAddress(f"{host} resolves to a {kind} address (needs sendgrid.allow_private)")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _policy_of(session: aiohttp.ClientSession) -> OutboundPolicy | None:
    # aiohttp keeps the resolver private; should that change, every fetch gets its own session.
    resolver = getattr(session.connector, "_resolver", None)
    return resolver.policy if isinstance(resolver, _CheckedResolver) else None


def scrub(text: str, target: str) -> str:
    """An answer without the webhook URL or its path, which may be the credential (`/hooks/<id>`)."""
    text = text.replace(target, shown_url(target))
    path = urlsplit(target).path
    return text.replace(path, "/…") if len(path) > 1 else text
