"""What the chat notifiers (Teams, Google Chat, Mattermost) share: how much of a message a
rendering shows, posting JSON to a webhook whose URL is the credential, checking and
showing that URL, and reading a service's error answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp

from watcher.errors import PermanentDeliveryError
from watcher.net import address_problem, configured_url_problem, is_loopback_host, shown_url
from watcher.notify.webhook import USER_AGENT, network_error, read_some, reveal
from watcher.schema import Secret, url


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


def encode(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; a number JSON cannot carry is a permanent problem of the event."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise PermanentDeliveryError("the message holds a number JSON cannot carry") from None


async def post_json(
    session: aiohttp.ClientSession, target: str, body: bytes, what: str, seconds: float
) -> tuple[int, str, dict[str, str]]:
    """POST a JSON body without following redirects: the status, the answer's start, its headers."""
    timeout = aiohttp.ClientTimeout(total=seconds)
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    try:
        async with session.post(target, data=body, headers=headers, timeout=timeout, allow_redirects=False) as answer:
            text = await read_some(answer)
            return answer.status, scrub(text, target), dict(answer.headers)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise network_error(what, exc) from None


def scrub(text: str, target: str) -> str:
    """An answer without the webhook URL or its path, which may be the credential (`/hooks/<id>`)."""
    text = text.replace(target, shown_url(target))
    path = urlsplit(target).path
    return text.replace(path, "/…") if len(path) > 1 else text


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


def answer_message(text: str) -> str:
    """`error.message` (or `message`) of a JSON error answer, else the text itself."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    if isinstance(answer, Mapping):
        error = answer.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            code = error.get("status") or error.get("code")
            return f"{code}: {error['message']}" if code else str(error["message"])
        if answer.get("message"):
            return str(answer["message"])
    return text
