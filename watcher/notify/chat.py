"""What the chat notifiers (Teams, Google Chat, Mattermost, Discord, PagerDuty) share: one
`ChatNotifier` shape (render the Message, post it once through the destination's pacer, map
the answer, log it), how much of a message a rendering shows, posting JSON to a webhook
whose URL is the credential, checking and showing that URL, and reading an error answer."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, NoReturn
from urllib.parse import urlsplit

import aiohttp
import structlog

from watcher.clock import Clock
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import address_problem, configured_url_problem, is_loopback_host, mask_urls_in_text, scrub, shown_url
from watcher.notify import render
from watcher.notify.base import BaseNotifier
from watcher.notify.pacing import Pacer, destination_key, pacer_for
from watcher.notify.webhook import USER_AGENT, network_error, raise_for_answer, read_some, reveal
from watcher.schema import Field, Secret, boolean, duration, url

_log = structlog.get_logger("watcher.notify")


class Budget(NamedTuple):
    """How much of a message one rendering attempt shows: items, sections, facts, reasons, text."""

    items: int
    sections: int
    facts: int
    reasons: int
    text: int


#: Tried in order until the body fits: sections shrink first, then facts; the last always fits.
BUDGETS = (
    Budget(items=10, sections=6, facts=40, reasons=10, text=2000),
    Budget(items=5, sections=4, facts=40, reasons=10, text=1000),
    Budget(items=2, sections=2, facts=40, reasons=5, text=500),
    Budget(items=0, sections=0, facts=20, reasons=5, text=300),
    Budget(items=0, sections=0, facts=8, reasons=3, text=200),
    Budget(items=0, sections=0, facts=0, reasons=0, text=150),
)


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, ending in … when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def encode(body: Mapping[str, Any], refused: str = "the message holds a number JSON cannot carry") -> bytes:
    """Compact UTF-8 JSON; a number JSON cannot carry is a permanent problem of the event (`refused`)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise PermanentDeliveryError(refused) from None


async def post_json(
    session: aiohttp.ClientSession, target: str, body: bytes, what: str, seconds: float
) -> tuple[int, str, Mapping[str, str]]:
    """POST a JSON body without following redirects: the status, the answer's start, its headers
    (case-insensitive, as the pacer reads `Retry-After` and `X-RateLimit-*`)."""
    timeout = aiohttp.ClientTimeout(total=seconds)
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    try:
        async with session.post(target, data=body, headers=headers, timeout=timeout, allow_redirects=False) as answer:
            text = await read_some(answer)
            return answer.status, scrub(text, target), answer.headers.copy()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise network_error(what, exc) from None


def transport_fields(private: str = "allow a private IP address as the host") -> tuple[Field, ...]:
    """The settings every chat notifier ends with: the request timeout and the two URL-policy escapes."""
    return (
        Field("timeout", duration(0.001), default=10.0, doc="per request"),
        Field("allow_insecure", boolean, default=False, doc="allow http to non-loopback hosts"),
        Field("allow_private", boolean, default=False, doc=private),
    )


def secret_url(value: Any) -> Secret:
    """A webhook URL that embeds its credential: parsed as a URL, kept as a Secret."""
    return Secret(url("http", "https")(value))


def url_problems(
    key: str, target: str | None, settings: Mapping[str, Any], hosts: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """https (or loopback, or allow_insecure), the service's host unless loopback, no private IP literal."""
    if not target:
        return []
    problem = configured_url_problem(target, allow_insecure=bool(settings.get("allow_insecure")))
    if problem is not None:
        return [(key, problem)]
    host = (urlsplit(target).hostname or "").lower().rstrip(".")
    if is_loopback_host(host):
        return []  # local fakes stand in for every service
    if hosts and not any(host == suffix.lstrip(".") or host.endswith(suffix) for suffix in hosts):
        expected = ", ".join(f"*{suffix}" if suffix.startswith(".") else suffix for suffix in hosts)
        return [(key, f"expected a URL on {expected}, got {shown_url(target)}")]
    literal = ":" in host or host.replace(".", "").isdigit()
    kind = address_problem(host) if literal else None
    if kind is not None and not settings.get("allow_private"):
        return [(key, f"a {kind} address (set allow_private: true to send there)")]
    return []


def describe_with_url(shown: dict[str, Any], settings: Mapping[str, Any], key: str) -> dict[str, Any]:
    """describe() with the webhook URL's host shown and its path and credentials hidden."""
    target = reveal(settings.get(key))
    if target:
        shown[key] = shown_url(target)
    return shown


def json_answer(text: str) -> dict[str, Any] | str:
    """An answer's JSON object, or what to show of one that is not: its masked start ("" for other JSON)."""
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):  # a deeply nested answer is no answer
        return mask_urls_in_text(" ".join(text[:200].split()))
    return answer if isinstance(answer, dict) else ""


def answer_message(text: str) -> str:
    """`error.message` (or `message`) of a JSON error answer, else the text itself."""
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):  # a deeply nested answer is no answer
        return text
    if isinstance(answer, Mapping):
        error = answer.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            code = error.get("status") or error.get("code")
            return f"{code}: {error['message']}" if code else str(error["message"])
        if answer.get("message"):
            return str(answer["message"])
    return text


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One rendered request: where it goes, its JSON body, and what every log line of it says."""

    target: str
    body: bytes
    context: Mapping[str, Any] = field(default_factory=dict)


class ChatNotifier(BaseNotifier):
    """A chat service is a renderer (`render`) plus a transport (`pacer`, `post`, `refuse`).

    `send` posts once through the destination's pacer and logs `notify.<type>_rejected`,
    `_failed` or `_delivered`; a service with its own answer rules overrides `observe`/`refuse`.
    """

    #: How errors name the service ("google chat"), and who answered a refusal ("teams webhook").
    service: ClassVar[str] = ""
    answerer: ClassVar[str] = ""
    #: The last word of the success log line (`notify.teams_accepted`: a 202 is not a post).
    delivered: ClassVar[str] = "delivered"

    def __init__(self, name: str, settings: Mapping[str, Any], *, clock: Clock | None = None, **options: Any) -> None:
        super().__init__(name, settings, **options)
        self.clock = clock  # the pacer's; tests pass a virtual one

    @abstractmethod
    def pacer(self) -> Pacer:
        """The pacer of this notifier's destination, shared with every notifier posting there."""

    @abstractmethod
    def render(self, delivery: Delivery) -> Outgoing | None:
        """The request for this delivery in the service's format; None when there is nothing to send."""

    def overrides(self, event: Mapping[str, Any]) -> dict[str, str | None]:
        """The `title` and `text` templates rendered for this event (None: the message's own)."""
        return {key: render.render_override(self.templates, key, event, notifier=self.name)
                for key in ("title", "text")}

    def required_url(self, key: str) -> str:
        """The webhook URL setting `key`, revealed; a permanent error when it is not set."""
        target = reveal(self.settings.get(key))
        if not target:
            raise PermanentDeliveryError(f"{self.service}: {key} is not set")
        return target

    async def send(self, delivery: Delivery) -> None:
        """Post once (paced); raise a retryable or permanent error when the service says no."""
        log = _log.bind(notifier=self.name, delivery=delivery.id)
        try:
            outgoing = self.render(delivery)
            if outgoing is None:
                return
            log = log.bind(**outgoing.context)
            status = await self.post(outgoing)
        except PermanentDeliveryError as exc:
            log.warning(f"notify.{self.type_name}_rejected", error=str(exc))
            raise
        except RetryableDeliveryError as exc:
            log.info(f"notify.{self.type_name}_failed", error=str(exc), retry_after=exc.retry_after)
            raise
        log.debug(f"notify.{self.type_name}_{self.delivered}", status=status, bytes=len(outgoing.body))

    async def post(self, outgoing: Outgoing) -> int:
        """POST the body in the pacer's turn; a 2xx answer's status, else the error `refuse` raises."""
        pacer = self.pacer()
        seconds = float(self.settings.get("timeout") or 10.0)
        async with pacer.turn():
            status, text, headers = await post_json(self.session, outgoing.target, outgoing.body, self.service, seconds)
            wait = self.observe(pacer, status, text, headers)
        if status < 300:
            return status
        self.refuse(pacer, status, text, headers, wait)

    def observe(self, pacer: Pacer, status: int, text: str, headers: Mapping[str, str]) -> float | None:
        """Tell the pacer what the answer says about the rate; the wait it asks for."""
        return pacer.observe(status, headers)

    def refuse(self, pacer: Pacer, status: int, text: str, headers: Mapping[str, str], wait: float | None) -> NoReturn:
        """Raise the delivery error for a non-2xx answer: 429, 408 and 5xx retryable, the rest final."""
        raise_for_answer(self.answerer, status, answer_message(text), headers)


class WebhookChatNotifier(ChatNotifier):
    """A chat service reached through one incoming-webhook URL (the credential) on its `hosts`."""

    #: The setting that holds the webhook URL, and the hosts it must be on (none: any).
    url_key: ClassVar[str] = "webhook_url"
    hosts: ClassVar[tuple[str, ...]] = ()
    #: Sends per second and burst per destination.
    rate: ClassVar[tuple[float, int]] = (1.0, 1)

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """https on one of `hosts` (unless loopback or allow_insecure); a private IP literal needs allow_private."""
        return url_problems(cls.url_key, reveal(settings.get(cls.url_key)), settings, cls.hosts)

    def describe(self) -> dict[str, Any]:
        """Settings for logs: the URL reduced to its host (its path or query is the credential)."""
        return describe_with_url(super().describe(), self.settings, self.url_key)

    def destination(self) -> str:
        """What one pacer covers: the webhook URL itself, unless the service limits something wider."""
        return reveal(self.settings.get(self.url_key)) or ""

    def pacer(self) -> Pacer:
        rate, burst = self.rate
        return pacer_for(destination_key(self.type_name, self.destination()), rate, burst, clock=self.clock)
