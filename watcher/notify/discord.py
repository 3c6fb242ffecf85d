"""Discord: the Message as one embed through a webhook, within every embed limit, paced.

Limits (docs.discord.com, "Embed Limits"): 10 embeds, title 256, description 4096, 25
fields, field name 256 / value 1024, footer 2048, 6,000 characters in all; every text is
escaped, then clipped (counted in UTF-16 units, never less than Discord counts), and the
6,000 are shared out title, footer, description, facts, links, then item sections.

`?wait=true` makes Discord answer 200 with the posted message, so a success is a real
message (204 without it). Rate: Discord says to read the headers rather than hard-code
limits; webhooks answer `X-RateLimit-Limit: 5` per 2 s bucket (birdie0's webhooks guide:
"5 requests per 2 seconds per webhook"), so the pacer starts at that and follows
`X-RateLimit-Remaining`/`-Reset-After` and a 429's JSON `retry_after` (seconds, fractional).
401, 403 and 429 count toward Discord's ban after 10,000 invalid requests in 10 minutes:
after a 404 or 401 (webhook deleted, token wrong) the pacer refuses sends for a minute.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import configured_url_problem, is_loopback_host, mask_urls_in_text
from watcher.notify.chat import ChatNotifier, Outgoing, encode, json_answer, secret_url, transport_fields
from watcher.notify.message import Message, Section, Severity, fit_lines, message_from_event
from watcher.notify.pacing import Pacer, destination_key, pacer_for
from watcher.notify.webhook import reveal
from watcher.schema import Field, optional_string

MAX_TITLE, MAX_DESCRIPTION, MAX_FIELDS = 256, 4096, 25
MAX_FIELD_NAME, MAX_FIELD_VALUE, MAX_FOOTER, MAX_TOTAL, MAX_USERNAME = 256, 1024, 2048, 6000, 80
#: Requests per second and burst per webhook (5 per 2 s).
RATE, BURST = 2.5, 5
#: After a 404/401 the webhook is left alone this long: no flood of invalid requests.
GONE_FOR = 60.0
HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com")
_PATH = re.compile(r"/api(?:/v\d+)?/webhooks/\d+/[A-Za-z0-9_.-]+/?")
_MARKDOWN = re.compile(r"([\\*_~`|\[\]<>#])")
_COLORS = {Severity.INFO: 0x2EB67D, Severity.WARNING: 0xECB22E, Severity.ERROR: 0xE01E5A, Severity.CRITICAL: 0x8B0000}
_MAX_ITEMS = 10


# --- rendering --------------------------------------------------------------------


def units(text: str) -> int:
    """Length in UTF-16 code units: never less than the characters Discord counts."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def escape(text: str) -> str:
    """Markdown and mention characters shown as typed."""
    return _MARKDOWN.sub(r"\\\1", text)


def clip(text: str, limit: int) -> str:
    """At most `limit` UTF-16 units, ending in … when cut, never after a lone escaping backslash."""
    if units(text) <= limit:
        return text
    kept, size = [], 0
    for ch in text:
        size += 2 if ord(ch) > 0xFFFF else 1
        if size > limit - 1:
            break
        kept.append(ch)
    cut = "".join(kept)
    trailing = len(cut) - len(cut.rstrip("\\"))
    return (cut[:-1] if trailing % 2 else cut) + "…"


def link(label: str, target: str, note: str = "") -> str | None:
    """`[label](url)` with the note after it; None for a URL that is not http(s)."""
    if not target.startswith(("https://", "http://")):
        return None
    safe = quote(target, safe=":/?#[]@!$&'*+,;=%~-._")
    return f"[{escape(label)}]({safe})" + (f" ({escape(note)})" if note else "")


def discord_payload(
    message: Message, *, title: str | None = None, text: str | None = None, username: str | None = None
) -> dict[str, Any]:
    """The webhook body for one message: one embed within every limit, no mentions."""
    embed: dict[str, Any] = {
        "title": clip(title or message.heading, MAX_TITLE),
        "color": _COLORS.get(message.severity, _COLORS[Severity.WARNING]),
        "footer": {"text": clip(f"import-watcher · {message.footer}", MAX_FOOTER)},
    }
    budget = MAX_TOTAL - units(embed["title"]) - units(embed["footer"]["text"])
    described = text.strip() if text and text.strip() else None
    description = clip(_description(message, described), min(MAX_DESCRIPTION, budget // 2))
    if description:
        embed["description"] = description
        budget -= units(description)
    candidates = [] if described else list(_fact_fields(message.facts))
    candidates += _link_fields(message)
    if not described:
        candidates += [_section_field(section) for section in message.sections]
    fields = []
    for name, value, inline in candidates[:MAX_FIELDS]:
        name = clip(name, MAX_FIELD_NAME) or "\u200b"
        value = clip(value, min(MAX_FIELD_VALUE, budget - units(name)))
        if not value or value == "…":
            break
        fields.append({"name": name, "value": value, "inline": inline})
        budget -= units(name) + units(value)
    if fields:
        embed["fields"] = fields
    body: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
    if username:
        body["username"] = clip(username, MAX_USERNAME)
    return body


def _description(message: Message, text: str | None) -> str:
    # A template's text is the user's markdown; the message's own words are escaped.
    lines = [text] if text is not None else [escape(message.summary or message.title)]
    errors = message.error_lines()
    if errors:
        lines += ["", f"**Errors:** {escape(errors[0])}", *(f"• {escape(clip(line, 400))}" for line in errors[1:])]
    return "\n".join(lines)


def _fact_fields(facts: Iterable[tuple[str, str]]) -> Iterable[tuple[str, str, bool]]:
    for label, value in facts:
        if label.strip() and value.strip():
            yield escape(label), escape(value), len(value) <= 40


def _link_fields(message: Message) -> list[tuple[str, str, bool]]:
    shown = [text for item in message.links if (text := link(item.label, item.url, item.note))]
    return [("Links", "\n".join(shown), False)] if shown else []


def _section_field(section: Section) -> tuple[str, str, bool]:
    """A heading and the first items that fit in one field, then "and N more"."""
    shown, more = fit_lines(
        section, budget=MAX_FIELD_VALUE - 40,  # room for the "and N more" line
        max_items=_MAX_ITEMS, render=lambda line: f"• {clip(escape(line), 300)}", size=units,
    )
    tail = [f"*… and {more:,} more*"] if more > 0 else []
    return escape(section.heading), "\n".join([*shown, *tail]) or "—", False


# --- the notifier ------------------------------------------------------------------


def webhook_url_problem(target: str, *, allow_insecure: bool, allow_private: bool) -> str | None:
    """Why a Discord webhook URL may not be used (None: it may)."""
    problem = configured_url_problem(target, allow_insecure=allow_insecure)
    if problem is not None:
        return problem
    parts = urlsplit(target)
    host = (parts.hostname or "").rstrip(".").lower()
    if not is_loopback_host(host) and not allow_private and host not in HOSTS:
        return "expected a Discord webhook URL (https://discord.com/api/webhooks/ID/TOKEN)"
    if not _PATH.fullmatch(parts.path):
        return "expected a webhook path: /api/webhooks/ID/TOKEN"
    return None


def with_wait(target: str) -> str:
    """The URL with `wait=true`, keeping other parameters (`thread_id`)."""
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "wait"]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode([*query, ("wait", "true")]), ""))


class DiscordNotifier(ChatNotifier):
    """Posts each event as an embed to a Discord channel webhook."""

    type_name: ClassVar[str] = "discord"
    service = answerer = "discord"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("webhook_url", secret_url, required=True, secret=True, doc="channel webhook URL"),
        Field("username", optional_string, doc="shown as the sender; the webhook's own name when absent"),
        *transport_fields(private="allow a host other than discord.com (a relay)"),
    )

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A Discord webhook URL (any host when loopback), a username Discord accepts."""
        problems: list[tuple[str, str]] = []
        target = reveal(settings.get("webhook_url"))
        if target is not None:
            problem = webhook_url_problem(
                target,
                allow_insecure=bool(settings.get("allow_insecure")),
                allow_private=bool(settings.get("allow_private")),
            )
            if problem is not None:
                problems.append(("webhook_url", problem))
        username = settings.get("username")
        if isinstance(username, str) and not 1 <= len(username) <= MAX_USERNAME:
            problems.append(("username", f"Discord takes 1 to {MAX_USERNAME} characters"))
        return problems

    def pacer(self) -> Pacer:
        """The pacer of this webhook, shared with every notifier posting to it."""
        target = urlsplit(reveal(self.settings.get("webhook_url")) or "")
        key = destination_key("discord", target.netloc.lower(), target.path.rstrip("/"))
        return pacer_for(key, RATE, BURST, clock=self.clock)

    def render(self, delivery: Delivery) -> Outgoing:
        """The embed of the event, within every limit, to the webhook with `?wait=true`."""
        hook = self.required_url("webhook_url")
        event = delivery.event
        payload = discord_payload(
            message_from_event(event), **self.overrides(event), username=self.settings.get("username")
        )
        return Outgoing(with_wait(hook), encode(payload, "discord: the message holds a number JSON cannot carry"))

    async def post(self, outgoing: Outgoing) -> int:
        """Nothing is sent for a minute after the webhook was found gone (no flood of invalid requests)."""
        if reason := self.pacer().shut_reason():
            raise PermanentDeliveryError(f"{reason}; not sent (the webhook refused a send less than a minute ago)")
        return await super().post(outgoing)

    def observe(self, pacer: Pacer, status: int, text: str, headers: Mapping[str, str]) -> float | None:
        """The headers, and a 429's JSON `retry_after`."""
        return pacer.observe(status, headers, retry_after=_body_retry_after(text) if status == 429 else None)

    def refuse(self, pacer: Pacer, status: int, text: str, headers: Mapping[str, str], wait: float | None) -> NoReturn:
        raise _answer_error(pacer, status, text, wait)


def _body_retry_after(text: str) -> float | None:
    """A 429 body's `retry_after` (seconds, fractional)."""
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):  # a deeply nested answer is no answer
        return None
    value = answer.get("retry_after") if isinstance(answer, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _answer_error(pacer: Pacer, status: int, text: str, wait: float | None) -> Exception:
    """The delivery error for a non-2xx answer (and a shut pacer for a webhook that is gone)."""
    said = _discord_says(text)
    if status == 429:
        return RetryableDeliveryError(f"discord: rate limited ({said or 'HTTP 429'})", wait)
    if status in (401, 403, 404):
        reason = f"discord: the webhook is deleted or its token is wrong (HTTP {status}: {said}); update webhook_url"
        pacer.shut(reason, GONE_FOR)
        return PermanentDeliveryError(reason)
    if status == 408 or status >= 500:
        return RetryableDeliveryError(f"discord answered HTTP {status}" + (f": {said}" if said else ""), wait)
    return PermanentDeliveryError(f"discord refused the message (HTTP {status})" + (f": {said}" if said else ""))


def _discord_says(text: str) -> str:
    """Discord's error message and the first failing path ("embeds.0.title: Must be 256 ..."), masked."""
    answer = json_answer(text)
    if isinstance(answer, str):
        return answer
    said = str(answer.get("message") or "")
    path: list[str] = []
    node = answer.get("errors")
    while isinstance(node, dict) and node:
        if "_errors" in node and isinstance(node["_errors"], list) and node["_errors"]:
            first = node["_errors"][0]
            detail = first.get("message", "") if isinstance(first, dict) else str(first)
            said += f" ({'.'.join(path)}: {detail})"
            break
        key = next(iter(node))
        path.append(str(key))
        node = node[key]
    return mask_urls_in_text(said[:300])
