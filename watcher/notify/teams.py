"""Microsoft Teams: an Adaptive Card through a Power Automate Workflows webhook.

Workflows ("When a Teams webhook request is received") take `{"type": "message",
"attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", ...}]}` and
answer 202 Accepted with an empty body as soon as the flow has *accepted* the request: a
card the flow then fails to post shows up only in the flow's run history. So the card is
kept to what Teams renders (Adaptive Cards 1.4: TextBlock, FactSet, Container, ColumnSet,
Action.OpenUrl) and to the ~28 KB a Teams message may hold, shrinking the sections first,
then the facts, never sending anything larger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

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
from watcher.schema import Field

CARD_VERSION = "1.4"  # the highest version Teams renders
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
#: A Teams message holds about 28 KB; the whole request body stays below this many bytes.
MAX_BODY_BYTES = 28_000
MAX_LINK_URL = 2048
MAX_LINKS = 5
#: Workflows webhooks take about 4 requests a second; evenly spaced, so no one-second window holds more.
RATE_PER_SECOND = 4.0
BURST = 1
#: The hosts Power Automate gives Workflows webhook URLs on.
WORKFLOW_HOST_SUFFIXES = (".logic.azure.com", ".environment.api.powerplatform.com")

#: Severity as Adaptive Card colours (TextBlock `color`, Container `style`).
SEVERITY_COLOR: Mapping[Severity, str] = {
    Severity.INFO: "good",
    Severity.WARNING: "warning",
    Severity.ERROR: "attention",
    Severity.CRITICAL: "attention",
}


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text or " ", "wrap": True, **extra}


def _table(section: Section, budget: Budget) -> dict[str, Any]:
    """A compact table: one Column per column, one single-line TextBlock per row (1.4 has no Table)."""
    rows = section.rows[: budget.items]
    columns = []
    for index, name in enumerate(section.columns):
        cells = [_text(clip(name, 60), weight="Bolder", wrap=False)]
        cells += [_text(clip(row[index] if index < len(row) else "", 120), wrap=False, spacing="Small") for row in rows]
        columns.append({"type": "Column", "width": "stretch" if index == 0 else "auto", "items": cells})
    return {"type": "ColumnSet", "columns": columns}


def _section(section: Section, budget: Budget) -> dict[str, Any]:
    items: list[dict[str, Any]] = [_text(clip(section.heading, 200), weight="Bolder")]
    shown = min(len(section.lines), budget.items)
    if section.columns and section.rows:
        shown = min(len(section.rows), budget.items)
        items.append(_table(section, budget))
    else:
        items += [_text("- " + clip(line, budget.text), spacing="None") for line in section.lines[:shown]]
    more = section.more + max(len(section.lines), len(section.rows)) - shown
    if more > 0:
        items.append(_text(f"… and {more:,} more", isSubtle=True, spacing="Small"))
    return {"type": "Container", "separator": True, "items": items}


def _links(message: Message) -> list[dict[str, Any]]:
    shown = [item for item in message.links if 0 < len(item.url) <= MAX_LINK_URL][:MAX_LINKS]
    return [
        {
            "type": "Action.OpenUrl",
            "title": clip(item.label + (f" ({item.note})" if item.note else ""), 80),
            "url": item.url,
        }
        for item in shown
    ]


def adaptive_card(
    message: Message, budget: Budget, *, title: str | None = None, text: str | None = None
) -> dict[str, Any]:
    """The Adaptive Card (1.4) for a message within `budget`; `title`/`text` are template overrides."""
    color = SEVERITY_COLOR.get(message.severity, "default")
    heading = _text(clip(title or message.heading, 200), weight="Bolder", size="Medium", color=color)
    body: list[dict[str, Any]] = [{"type": "Container", "style": color, "bleed": True, "items": [heading]}]
    if text is not None:
        body.append(_text(clip(text, budget.text * 4)))
    else:
        body.append(_text(clip(message.summary or message.title, budget.text)))
        facts = [{"title": clip(k, 100), "value": clip(v, budget.text)} for k, v in message.facts[: budget.facts]]
        if facts:
            body.append({"type": "FactSet", "facts": facts})
    if errors := message.error_lines():
        lines = [f"**Errors:** {clip(errors[0], budget.text)}"]
        lines += [f"- {clip(line, budget.text)}" for line in errors[1 : 1 + budget.reasons]]
        body.append(_text("\n".join(lines), color="attention" if message.reasons else "default"))
    if text is None:
        body += [_section(section, budget) for section in message.sections[: budget.sections]]
    body.append(_text(clip(f"import-watcher · {message.footer}", 300), isSubtle=True, size="Small"))
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": CARD_VERSION,
        "msteams": {"width": "Full"},
        "body": body,
    }
    if actions := _links(message):
        card["actions"] = actions
    return card


def teams_body(card: Mapping[str, Any]) -> dict[str, Any]:
    """The Workflows request body around one card."""
    return {"type": "message", "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}]}


def build_body(message: Message, *, title: str | None = None, text: str | None = None) -> bytes:
    """The encoded request body, from the first budget whose card fits MAX_BODY_BYTES."""
    for budget in BUDGETS:
        body = encode(teams_body(adaptive_card(message, budget, title=title, text=text)))
        if len(body) <= MAX_BODY_BYTES:
            return body
    # Only a template override can get here (the last budget clips everything else): drop it.
    return encode(teams_body(adaptive_card(message, BUDGETS[-1])))


class TeamsNotifier(WebhookChatNotifier):
    """Posts an Adaptive Card to a Teams channel through a Workflows webhook.

    202 or 200 is success (the flow accepted the message; whether it posted it shows only in
    its run history), 429 and 5xx retryable, other 4xx final.
    """

    type_name: ClassVar[str] = "teams"
    service, answerer, delivered = "teams", "teams webhook", "accepted"
    url_key, hosts, rate = "url", WORKFLOW_HOST_SUFFIXES, (RATE_PER_SECOND, BURST)
    fields: ClassVar[tuple[Field, ...]] = (
        Field("url", secret_url, required=True, secret=True, doc="the Workflows webhook URL"),
        *transport_fields(),
    )

    def render(self, delivery: Delivery) -> Outgoing:
        """The card of the event, within MAX_BODY_BYTES."""
        target = self.required_url("url")
        body = build_body(message_from_event(delivery.event), **self.overrides(delivery.event))
        return Outgoing(target, body, {"url": shown_url(target)})
