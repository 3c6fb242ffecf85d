"""Google Chat: a card (`cardsV2`) with a `text` fallback through a space's incoming webhook.

A space takes 60 messages a minute from all its apps and webhooks together, so sends are
paced a little below that per space (the space is in the webhook's path); a 429 without a
hint backs off exponentially, as Google asks. Messages about one batch (or, with
`thread: job`, one job) share a thread through `thread.threadKey`, with
`messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` so the first one opens it.
Card text is Google's small HTML subset, so every text from an event is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, ClassVar, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from watcher.clock import Clock
from watcher.errors import RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import shown_url
from watcher.notify import facts as f
from watcher.notify.chat import (
    BUDGETS,
    Budget,
    Outgoing,
    WebhookChatNotifier,
    answer_message,
    clip,
    encode,
    secret_url,
    transport_fields,
)
from watcher.notify.message import Message, Section, Severity, message_from_event
from watcher.notify.pacing import Pacer
from watcher.schema import Field, choice

#: Google Chat refuses messages of 32,000 bytes or more.
MAX_BODY_BYTES = 31_000
#: Widgets beyond this are dropped by Google Chat.
MAX_WIDGETS = 100
MAX_LINKS = 5
MAX_LINK_URL = 2048
#: 60 writes a minute per space, shared with everyone else posting there: stay a little below.
RATE_PER_SECOND = 59 / 60
BURST = 1
#: Exponential backoff after a 429 without a hint: 2, 4, 8 ... seconds, at most this.
MAX_BACKOFF = 64.0
REPLY_OPTION = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
THREAD_MODES = ("batch", "job", "none")

SEVERITY_COLOR: Mapping[Severity, str] = {
    Severity.INFO: "#188038",
    Severity.WARNING: "#e37400",
    Severity.ERROR: "#d93025",
    Severity.CRITICAL: "#a50e0e",
}


def esc(text: str, limit: int) -> str:
    """Clipped first, then escaped: Google's card HTML must never see an event's `<` or `&`."""
    return html.escape(clip(text, limit), quote=False)


def thread_key(event: Mapping[str, Any], mode: str) -> str | None:
    """The batch name (batch events, batched jobs); with `job` the job (or export) id first; None unthreaded."""
    data = f.data_of(event)
    batch, job = data.get("batch"), data.get("job_id") or data.get("export_id")
    candidates = (job, batch) if mode == "job" else (batch,) if mode == "batch" else ()
    return next((str(value)[:4000] for value in candidates if isinstance(value, str) and value), None)


def _facts_section(message: Message, budget: Budget, text: str | None) -> dict[str, Any]:
    color = SEVERITY_COLOR.get(message.severity, "#5f6368")
    status = f'<font color="{color}"><b>{esc(message.status, 60)}</b></font>'
    lead = f"{status} · {esc(text or message.summary, budget.text)}"
    widgets: list[dict[str, Any]] = [{"textParagraph": {"text": lead}}]
    if text is None:
        widgets += [
            {"decoratedText": {"topLabel": esc(label, 100), "text": esc(value, budget.text), "wrapText": True}}
            for label, value in message.facts[: budget.facts]
        ]
    return {"widgets": widgets}


def _errors_section(message: Message, budget: Budget) -> dict[str, Any] | None:
    errors = message.error_lines()
    if not errors:
        return None
    lines = [f"<b>{esc(errors[0], budget.text)}</b>"]
    lines += [esc(line, budget.text) for line in errors[1 : 1 + budget.reasons]]
    return {"header": "Errors", "widgets": [{"textParagraph": {"text": "<br>".join(lines)}}]}


def _items_section(section: Section, budget: Budget) -> dict[str, Any]:
    shown = [f"• {esc(line, budget.text)}" for line in section.lines[: budget.items]]
    more = section.more + len(section.lines) - len(shown)
    if more > 0:
        shown.append(f"<i>… and {more:,} more</i>")
    return {"header": esc(section.heading, 200), "widgets": [{"textParagraph": {"text": "<br>".join(shown) or " "}}]}


def _links_section(message: Message) -> dict[str, Any] | None:
    links = [item for item in message.links if 0 < len(item.url) <= MAX_LINK_URL][:MAX_LINKS]
    if not links:
        return None
    buttons = [{"text": clip(item.label, 80), "onClick": {"openLink": {"url": item.url}}} for item in links]
    return {"widgets": [{"buttonList": {"buttons": buttons}}]}


def card_message(
    message: Message, budget: Budget, *, title: str | None = None, text: str | None = None
) -> dict[str, Any]:
    """The `text` fallback and one `cardsV2` card for a message within `budget`."""
    heading = title or message.heading
    sections = [_facts_section(message, budget, text)]
    sections.append(_errors_section(message, budget) or {})
    if text is None:
        sections += [_items_section(section, budget) for section in message.sections[: budget.sections]]
    sections.append(_links_section(message) or {})
    footer = f"<i>{esc('import-watcher · ' + message.footer, 300)}</i>"
    sections.append({"widgets": [{"textParagraph": {"text": footer}}]})
    kept = _within_widgets([section for section in sections if section])
    card = {"header": {"title": clip(heading, 200), "subtitle": clip(message.summary, 200)}, "sections": kept}
    fallback = f"{heading}\n{text if text is not None else message.summary}"
    return {"text": clip(fallback, budget.text * 2), "cardsV2": [{"cardId": "import-watcher", "card": card}]}


def _within_widgets(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sections up to MAX_WIDGETS widgets in all; Google would silently drop the rest."""
    kept, left = [], MAX_WIDGETS
    for section in sections:
        widgets = section["widgets"][:left]
        if not widgets:
            break
        kept.append({**section, "widgets": widgets})
        left -= len(widgets)
    return kept


def build_body(
    message: Message, *, title: str | None = None, text: str | None = None, thread: str | None = None
) -> bytes:
    """The encoded request body from the first budget that fits MAX_BODY_BYTES."""
    extra = {"thread": {"threadKey": thread}} if thread else {}
    for budget in BUDGETS:
        body = encode({**card_message(message, budget, title=title, text=text), **extra})
        if len(body) <= MAX_BODY_BYTES:
            return body
    return encode({**card_message(message, BUDGETS[-1]), **extra})


def threaded_url(target: str) -> str:
    """The webhook URL with `messageReplyOption` set; its `key` and `token` stay as they are."""
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "messageReplyOption"]
    query.append(("messageReplyOption", REPLY_OPTION))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def space_of(target: str) -> str:
    """The space a webhook posts to (`/v1/spaces/<space>/messages`); the whole path when not found."""
    parts = urlsplit(target)
    segments = parts.path.strip("/").split("/")
    space = segments[segments.index("spaces") + 1] if "spaces" in segments[:-1] else parts.path
    return f"{parts.netloc}/{space}"


class GoogleChatNotifier(WebhookChatNotifier):
    """Posts a card to a Google Chat space, threaded per batch or per job.

    2xx is success, 429 backs off, 5xx retryable, other 4xx final.
    """

    type_name: ClassVar[str] = "google_chat"
    service = answerer = "google chat"
    hosts, rate = ("chat.googleapis.com",), (RATE_PER_SECOND, BURST)
    fields: ClassVar[tuple[Field, ...]] = (
        Field("webhook_url", secret_url, required=True, secret=True, doc="the space's incoming webhook URL"),
        Field("thread", choice(*THREAD_MODES), default="batch", doc="one thread per batch, per job, or none"),
        *transport_fields(),
    )

    def __init__(self, name: str, settings: Mapping[str, Any], *, clock: Clock | None = None, **options: Any) -> None:
        super().__init__(name, settings, clock=clock, **options)
        self._strikes = 0  # 429s in a row without a hint

    def destination(self) -> str:
        """The space: its 60 messages a minute are shared by every webhook posting there."""
        return space_of(super().destination())

    def render(self, delivery: Delivery) -> Outgoing:
        """The card of the event, threaded by `thread:`, within MAX_BODY_BYTES."""
        target = self.required_url("webhook_url")
        event = delivery.event
        key = thread_key(event, str(self.settings.get("thread") or "batch"))
        body = build_body(message_from_event(event), **self.overrides(event), thread=key)
        return Outgoing(threaded_url(target) if key else target, body, {"url": shown_url(target), "thread": key})

    async def post(self, outgoing: Outgoing) -> int:
        status = await super().post(outgoing)
        self._strikes = 0
        return status

    def observe(self, pacer: Pacer, status: int, text: str, headers: Mapping[str, str]) -> float | None:
        """A 429 without a hint backs off exponentially (2, 4, 8 ... s), as Google asks."""
        hinted = pacer.observe(status, headers) if status != 429 or _has_hint(headers) else None
        if status == 429 and hinted is None:
            self._strikes += 1
            hinted = pacer.hold(min(MAX_BACKOFF, 2.0**self._strikes))
        return hinted

    def refuse(self, pacer: Pacer, status: int, text: str, headers: Mapping[str, str], wait: float | None) -> NoReturn:
        if status == 429:
            raise RetryableDeliveryError(f"google chat answered HTTP 429: {answer_message(text)}", wait)
        super().refuse(pacer, status, text, headers, wait)


def _has_hint(headers: Mapping[str, str]) -> bool:
    return any(k.lower() in ("retry-after", "x-ratelimit-reset") for k in headers)
