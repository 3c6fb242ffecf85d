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

import structlog

from watcher.clock import Clock
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import shown_url
from watcher.notify import render
from watcher.notify.base import BaseNotifier
from watcher.notify.chat import (
    BUDGETS,
    Budget,
    answer_message,
    clip,
    describe_with_url,
    encode,
    post_json,
    secret_url,
    url_problems,
)
from watcher.notify.message import Message, Section, Severity, message_from_event
from watcher.notify.pacing import Pacer, destination_key, pacer_for
from watcher.notify.webhook import raise_for_answer, reveal
from watcher.schema import Field, boolean, duration

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

_log = structlog.get_logger("watcher.notify")


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


class TeamsNotifier(BaseNotifier):
    """Posts an Adaptive Card to a Teams channel through a Workflows webhook."""

    type_name: ClassVar[str] = "teams"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("url", secret_url, required=True, secret=True, doc="the Workflows webhook URL"),
        Field("timeout", duration(0.001), default=10.0, doc="per request"),
        Field("allow_insecure", boolean, default=False, doc="allow http to non-loopback hosts"),
        Field("allow_private", boolean, default=False, doc="allow a private IP address as the host"),
    )

    def __init__(self, name: str, settings: Mapping[str, Any], *, clock: Clock | None = None, **options: Any) -> None:
        super().__init__(name, settings, **options)
        self.clock = clock  # the pacer's; tests pass a virtual one

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The URL is https on a Workflows host (unless loopback)."""
        return url_problems("url", reveal(settings.get("url")), settings, WORKFLOW_HOST_SUFFIXES)

    def describe(self) -> dict[str, Any]:
        """Settings for logs: the URL reduced to its host (its `sig` is the credential)."""
        return describe_with_url(super().describe(), self.settings, "url")

    def _pacer(self, target: str) -> Pacer:
        return pacer_for(destination_key("teams", target), RATE_PER_SECOND, BURST, clock=self.clock)

    async def send(self, delivery: Delivery) -> None:
        """Post the card once; 202 or 200 is success, 429 and 5xx retryable, other 4xx final."""
        target = reveal(self.settings.get("url"))
        if not target:
            raise PermanentDeliveryError("teams: url is not set")
        event = delivery.event
        body = build_body(
            message_from_event(event),
            title=render.render_override(self.templates, "title", event, notifier=self.name),
            text=render.render_override(self.templates, "text", event, notifier=self.name),
        )
        log = _log.bind(notifier=self.name, delivery=delivery.id, url=shown_url(target))
        try:
            await self._post(target, body)
        except PermanentDeliveryError as exc:
            log.warning("notify.teams_rejected", error=str(exc))
            raise
        except RetryableDeliveryError as exc:
            log.info("notify.teams_failed", error=str(exc), retry_after=exc.retry_after)
            raise
        log.debug("notify.teams_accepted", bytes=len(body))

    async def _post(self, target: str, body: bytes) -> None:
        pacer = self._pacer(target)
        seconds = float(self.settings.get("timeout") or 10.0)
        async with pacer.turn():
            status, text, answer_headers = await post_json(self.session, target, body, "teams", seconds)
            pacer.observe(status, answer_headers)
        if status < 300:
            return  # 202: the flow accepted the message; whether it posted it shows only in its run history
        raise_for_answer("teams webhook", status, answer_message(text), answer_headers)
