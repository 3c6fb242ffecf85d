"""Signed JSON webhooks (Standard Webhooks), plus the HTTP answer rules shared by HTTP notifiers.

The body is exactly `{"type", "timestamp", "data"}` of the stored event, so
what a receiver verifies is what DESIGN.md promises; other top-level keys of
the event (the errors CSV sample for e-mail) stay home. `webhook-id` is the
Delivery id, so a receiver can drop the duplicates that at-least-once delivery
allows.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import aiohttp
import structlog

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import BodyTooLarge, configured_url_problem, mask_url, mask_urls_in_text, read_capped, scrub, shown_url
from watcher.notify.base import BaseNotifier
from watcher.ratelimit.signals import retry_after_seconds
from watcher.schema import Field, Secret, boolean, duration, secret, string_map, url

BODY_KEYS = ("type", "timestamp", "data")
USER_AGENT = "import-watcher/0.1"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
_RESPONSE_SHOWN = 300
#: Answers that decide success (a chat API's JSON) are read whole up to this.
MAX_ANSWER_BYTES = 1 << 20
# Extra headers whose values are credentials: masked in describe(), never logged.
_SENSITIVE_HEADER_WORDS = (
    "authorization",
    "token",
    "key",
    "secret",
    "cookie",
    "signature",
    "password",
)

_log = structlog.get_logger("watcher.notify")
#: RFC 9110 token characters: what a header name may be.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# --- shared helpers for HTTP notifiers ------------------------------------


def reveal(value: Any) -> str | None:
    """A setting that may be a Secret, a plain string (tests, notify-test) or absent."""
    if value is None:
        return None
    text = value.reveal() if isinstance(value, Secret) else str(value)
    return text or None


def answer_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a `Retry-After` answer header asks for, through the one (clamping) parser."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    return retry_after_seconds(value, time.time())


def raise_for_answer(what: str, status: int, body: str, headers: Mapping[str, str]) -> NoReturn:
    """Map a non-2xx HTTP answer to the delivery error the outbox understands."""
    # A receiver may echo URLs (with credentials) back: the message reaches logs and notify-test.
    shown = mask_urls_in_text(" ".join(body[:_RESPONSE_SHOWN].split()))
    message = f"{what} answered HTTP {status}" + (f": {shown}" if shown else "")
    if status == 429 or status == 408 or status >= 500:
        raise RetryableDeliveryError(message, answer_retry_after(headers))
    if 300 <= status < 400:
        # Redirects are not followed: a signed POST should not wander to another host.
        location = headers.get("Location")
        where = f" to {shown_url(location)}" if location else ""  # a path may be a credential
        raise PermanentDeliveryError(f"{what} redirected (HTTP {status}){where}; update the URL")
    raise PermanentDeliveryError(message)


async def read_some(response: aiohttp.ClientResponse, limit: int = 4096) -> str:
    """The start of a response body as text: enough for an error message, never a huge read."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode(_charset(response), errors="replace")


async def read_whole(response: aiohttp.ClientResponse, what: str, limit: int = MAX_ANSWER_BYTES) -> str:
    """A whole answer as text, for answers that decide success; past `limit` it is retryable."""
    try:
        body = await read_capped(response, limit)
    except BodyTooLarge:
        raise RetryableDeliveryError(f"{what}: answer larger than {limit} bytes") from None
    return body.decode(_charset(response), errors="replace")


def _charset(response: aiohttp.ClientResponse) -> str:
    """The answer's charset when Python knows it, else UTF-8: a bogus name in a 2xx answer must not
    turn a delivered post into a retried one (LookupError would)."""
    name = response.charset or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        return "utf-8"
    return name


def network_error(what: str, exc: BaseException) -> RetryableDeliveryError:
    """A connection problem or timeout, described without the URL (it may hold a token)."""
    if isinstance(exc, TimeoutError):
        return RetryableDeliveryError(f"{what}: timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return RetryableDeliveryError(f"{what}: cannot connect ({exc.os_error.strerror or exc.os_error})")
    return RetryableDeliveryError(f"{what}: {type(exc).__name__}")


# --- Standard Webhooks ----------------------------------------------------


def secret_key(whsec: str) -> bytes:
    """The HMAC key: the base64 part after `whsec_`, decoded; ValueError when malformed."""
    encoded = whsec.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("expected whsec_ followed by base64") from None
    if not key:
        raise ValueError("expected whsec_ followed by base64, got an empty key")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_body(event: Mapping[str, Any]) -> bytes:
    """Exactly the DESIGN.md body: the three public keys of the stored event."""
    body = {key: event.get(key) for key in BODY_KEYS}
    # allow_nan=False: a non-finite number is a bug upstream, never invalid JSON on the wire.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class WebhookNotifier(BaseNotifier):
    """POSTs the event as JSON, signed per Standard Webhooks when a secret is set."""

    type_name: ClassVar[str] = "webhook"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("url", url("http", "https"), required=True, doc="where to POST"),
        Field("secret", secret, secret=True, doc="whsec_<base64>; unsigned when absent"),
        Field("headers", string_map, doc="extra request headers"),
        Field("timeout", duration(0.001), default=10.0, doc="per request"),
        Field("allow_insecure", boolean, default=False, doc="allow http to non-loopback hosts"),
    )
    _prepared: _Prepared | None = None  # set by start()

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """https unless loopback or allow_insecure; a well-formed whsec_ secret."""
        problems: list[tuple[str, str]] = []
        target = settings.get("url")
        if isinstance(target, str):
            problem = configured_url_problem(target, allow_insecure=bool(settings.get("allow_insecure")))
            if problem is not None:
                problems.append(("url", problem))
        for name, value in (settings.get("headers") or {}).items():
            # CR/LF would split the request (aiohttp refuses them at send time, after every retry)
            if not _HEADER_NAME.fullmatch(str(name)) or any(c in str(value) for c in "\r\n\0"):
                shown = str(name)[:40]
                problems.append(("headers", f"header {shown!r}: needs a token name and a value without CR, LF or NUL"))
        whsec = reveal(settings.get("secret"))
        if whsec is not None:
            if not whsec.startswith(SECRET_PREFIX):
                problems.append(("secret", "expected a Standard Webhooks secret: whsec_<base64>"))
            else:
                try:
                    secret_key(whsec)
                except ValueError as exc:
                    problems.append(("secret", str(exc)))
        return problems

    def describe(self) -> dict[str, Any]:
        """Settings for logs; extra headers that carry credentials are masked too."""
        shown = super().describe()
        if isinstance(shown.get("url"), str):
            shown["url"] = mask_url(shown["url"])
        headers = shown.get("headers")
        if isinstance(headers, Mapping):
            shown["headers"] = {
                k: "********" if any(w in k.lower() for w in _SENSITIVE_HEADER_WORDS) else v for k, v in headers.items()
            }
        return shown

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Take the session, and work out once what every send uses: the settings do not change."""
        await super().start(session)
        self._prepared = self._prepare()

    def _prepare(self) -> _Prepared:
        target = str(self.settings["url"])
        key: bytes | None = None
        key_error: str | None = None
        whsec = reveal(self.settings.get("secret"))
        if whsec is not None:
            try:
                key = secret_key(whsec)
            except ValueError as exc:
                key_error = f"webhook secret: {exc}"
        # User headers cannot replace the signature or the idempotency key.
        extra = self.settings.get("headers") or {}
        headers = {str(k): str(v) for k, v in extra.items() if str(k).lower() not in _OUR_HEADERS}
        timeout = aiohttp.ClientTimeout(total=float(self.settings.get("timeout") or 10.0))
        return _Prepared(target, shown_url(target), key, key_error, headers, timeout)

    async def send(self, delivery: Delivery) -> None:
        """POST once; return on 2xx, raise a retryable or permanent error otherwise."""
        ready = self._ready()
        try:
            body = webhook_body(delivery.event)
        except ValueError:
            raise PermanentDeliveryError("webhook: the event holds a number JSON cannot carry") from None
        headers = self._headers(ready, delivery.id, body)
        target = ready.target
        try:
            async with self.session.post(
                target, data=body, headers=headers, timeout=ready.timeout, allow_redirects=False
            ) as response:
                status = response.status
                if status < 300:
                    return  # delivered: the outbox logs it
                text = await read_some(response)
                answer_headers = dict(response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = network_error("webhook", exc)
            self._log(delivery).info("notify.webhook_failed", error=str(error))
            raise error from None
        log = self._log(delivery)
        try:
            raise_for_answer("webhook receiver", status, scrub(text, target), answer_headers)
        except PermanentDeliveryError as exc:
            log.warning("notify.webhook_rejected", status=status, error=str(exc))
            raise
        except RetryableDeliveryError as exc:
            log.info("notify.webhook_failed", status=status, error=str(exc), retry_after=exc.retry_after)
            raise

    def _ready(self) -> _Prepared:
        """What start() worked out (or, sent without start(), worked out now)."""
        return self._prepared if self._prepared is not None else self._prepare()

    def _log(self, delivery: Delivery) -> Any:
        """Bound only when something is logged: a delivered send logs nothing here."""
        return _log.bind(notifier=self.name, delivery=delivery.id, url=self._ready().shown)

    @staticmethod
    def _headers(ready: _Prepared, msg_id: str, body: bytes) -> dict[str, str]:
        timestamp = int(time.time())
        ours = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if ready.key_error is not None:
            raise PermanentDeliveryError(ready.key_error)
        if ready.key is not None:
            ours["webhook-signature"] = sign(ready.key, msg_id, timestamp, body)
        return {**ready.headers, **ours}


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What every send of one webhook notifier uses, worked out once at start()."""

    target: str
    shown: str  # the URL as logs may show it
    key: bytes | None  # the HMAC key; None: unsigned
    key_error: str | None  # a malformed secret: every send is refused with this
    headers: dict[str, str]  # the user's extra headers, minus ours
    timeout: aiohttp.ClientTimeout


#: Headers the notifier sets itself (lower case): user headers cannot replace them.
_OUR_HEADERS = frozenset({"content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature"})
