"""Mattermost and Rocket.Chat: Slack-style message `attachments` through an incoming webhook.

Both take Slack's older attachment format (fallback, color, pretext, title, title_link,
text, fields with `short`), not Block Kit. Their text is Markdown, so event text is escaped
and `@` mentions are broken (a label `@channel` must not wake a whole channel). A post is
kept within Mattermost's 16,383 characters, counting the attachment text as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from watcher.models import Delivery
from watcher.net import shown_url
from watcher.notify.chat import (
    BUDGETS,
    Budget,
    Outgoing,
    WebhookChatNotifier,
    clip,
    encode,
    secret_url,
    transport_fields,
)
from watcher.notify.message import Message, Section, Severity, message_from_event
from watcher.schema import Field, optional_string, url

#: Mattermost's post limit (runes); the text of all attachments is held to it too.
MAX_POST_CHARS = 16_383
MAX_FIELDS = 20
MAX_LINK_URL = 2048
#: Mattermost's own limiter (when on) allows 10 a second with a burst of 100 per address.
RATE_PER_SECOND = 10.0
BURST = 10

SEVERITY_COLOR: Mapping[Severity, str] = {
    Severity.INFO: "#2eb886",
    Severity.WARNING: "#daa038",
    Severity.ERROR: "#d00000",
    Severity.CRITICAL: "#8b0000",
}
# Markdown that event text could otherwise trigger: emphasis, code, links, headings, tables, HTML.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+|<>~])")
_MENTION = re.compile(r"@(?=\w)")


def md(text: str, limit: int) -> str:
    """Clipped, Markdown-escaped, mentions broken with a zero-width space."""
    return _MENTION.sub("@\u200b", _MARKDOWN.sub(r"\\\1", clip(text, limit)))


def link_target(target: str) -> str:
    """A URL safe inside Markdown's `(...)`: brackets and spaces percent-encoded."""
    return quote(target, safe=":/?#@!$&'*+,;=%~-._[]")


def _items(section: Section, budget: Budget) -> str:
    shown = [f"- {md(line, budget.text)}" for line in section.lines[: budget.items]]
    more = section.more + len(section.lines) - len(shown)
    tail = [f"_… and {more:,} more_"] if more > 0 else []
    return "\n".join([f"**{md(section.heading, 200)}**", *shown, *tail])


def attachment(
    message: Message, budget: Budget, *, title: str | None = None, text: str | None = None
) -> dict[str, Any]:
    """One Slack-style attachment for a message within `budget`; `title`/`text` are template overrides."""
    heading = title or message.heading
    parts = [md(text if text is not None else message.summary, budget.text * 2)]
    if errors := message.error_lines():
        parts.append(f"**Errors:** {md(errors[0], budget.text)}")
        parts += [f"- {md(line, budget.text)}" for line in errors[1 : 1 + budget.reasons]]
    if text is None:
        parts += [_items(section, budget) for section in message.sections[: budget.sections]]
    links = [item for item in message.links if 0 < len(item.url) <= MAX_LINK_URL]
    for item in links:
        note = f" ({md(item.note, 100)})" if item.note else ""
        parts.append(f"[{md(item.label, 100)}]({link_target(item.url)}){note}")
    shown: dict[str, Any] = {
        "fallback": clip(f"{heading}: {message.summary}", 500),
        "color": SEVERITY_COLOR.get(message.severity, "#888888"),
        "title": clip(heading, 250),
        "text": "\n".join(parts),
        "footer": clip(f"import-watcher · {message.footer}", 300),
    }
    if links:
        shown["title_link"] = links[0].url
    if text is None and budget.facts:
        shown["fields"] = [
            {"title": clip(label, 100), "value": md(value, budget.text), "short": len(value) <= 40}
            for label, value in message.facts[: min(budget.facts, MAX_FIELDS)]
        ]
    return shown


def post_chars(payload: Mapping[str, Any]) -> int:
    """Characters a post shows: its text plus every attachment's text fields."""
    total = len(str(payload.get("text") or ""))
    for item in payload.get("attachments") or []:
        total += sum(len(str(item.get(key) or "")) for key in ("pretext", "title", "text", "footer"))
        fields = item.get("fields") or []
        total += sum(len(str(fld.get("title", ""))) + len(str(fld.get("value", ""))) for fld in fields)
    return total


def build_payload(
    message: Message, settings: Mapping[str, Any], *, title: str | None = None, text: str | None = None
) -> dict[str, Any]:
    """The webhook payload from the first budget that keeps the post within MAX_POST_CHARS."""
    extra = {key: settings[key] for key in ("username", "icon_url", "channel") if settings.get(key)}
    payload: dict[str, Any] = {}
    for budget in BUDGETS:
        payload = {**extra, "attachments": [attachment(message, budget, title=title, text=text)]}
        if post_chars(payload) <= MAX_POST_CHARS:
            return payload
    return {**extra, "attachments": [attachment(message, BUDGETS[-1])]}


class MattermostNotifier(WebhookChatNotifier):
    """Posts a Slack-style attachment to Mattermost or Rocket.Chat through an incoming webhook.

    2xx is success, 429 and 5xx retryable, other 4xx final.
    """

    type_name: ClassVar[str] = "mattermost"
    service, answerer, rate = "mattermost", "mattermost webhook", (RATE_PER_SECOND, BURST)
    fields: ClassVar[tuple[Field, ...]] = (
        Field("webhook_url", secret_url, required=True, secret=True, doc="the incoming webhook URL"),
        Field("username", optional_string, doc="shown as the sender, where the server allows overrides"),
        Field("icon_url", url("https"), doc="the sender's picture, where the server allows overrides"),
        Field("channel", optional_string, doc="another channel than the webhook's own"),
        *transport_fields(),
    )

    def render(self, delivery: Delivery) -> Outgoing:
        """The attachment of the event, within MAX_POST_CHARS."""
        target = self.required_url("webhook_url")
        payload = build_payload(message_from_event(delivery.event), self.settings, **self.overrides(delivery.event))
        return Outgoing(target, encode(payload), {"url": shown_url(target)})
