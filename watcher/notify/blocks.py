"""A Message as Slack Block Kit, always within Block Kit's limits.

Slack rejects a whole message when one block breaks a limit, so every text is escaped first
and clipped second, and the layout is small and fixed: header, summary, up to four sections
of ten fields, errors, at most a few item sections of at most ten items each, links, context.
A message that is too long arrives shortened ("and N more") instead of not at all.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from watcher.notify.message import Message, Section, fit_lines

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS = 10
MAX_CONTEXT_TEXT = 2000
MAX_FALLBACK_TEXT = 3000
MAX_LINK_URL = 2000
MAX_FIELD_SECTIONS = 4
MAX_ITEM_SECTIONS = 6
#: Items a section shows on a phone before "and N more".
MAX_ITEMS = 10
MAX_LINE = 400


def escape(text: str) -> str:
    """Slack's three control characters; everything else is shown as typed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, ending in … when cut, never inside an `&amp;` entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def link(target: str, label: str) -> str | None:
    """`<url|label>`, or None for a URL too long to be a link."""
    # Inside <url|label>, `|` and `>` would end the link early: percent-encode them.
    if len(target) > MAX_LINK_URL:
        return None
    safe = quote(target, safe=":/?#[]@!$&'()*+,;=%~-._")
    return f"<{escape(safe)}|{escape(label)}>"


def blocks_message(message: Message, *, title: str | None = None, text: str | None = None) -> dict[str, Any]:
    """The `text` fallback and Block Kit `blocks` for one message.

    `title` and `text` are rendered template overrides. `text` is escaped like any other
    user text and replaces the summary, facts and sections; `title` lands in a plain_text
    header, which Slack shows literally (no links, no mentions), so it is only clipped.
    """
    heading = title if title else message.heading
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(heading, MAX_HEADER), "emoji": True}}
    ]
    if text is not None and text.strip():
        blocks.append(_section(escape(text)))
    else:
        text = None
        blocks.append(_section(escape(message.summary or message.title)))
        fields = [_field(label, value) for label, value in message.facts][: MAX_FIELDS * MAX_FIELD_SECTIONS]
        for start in range(0, len(fields), MAX_FIELDS):
            blocks.append({"type": "section", "fields": fields[start : start + MAX_FIELDS]})
    if errors := message.error_lines():
        # Clip each reason, so one huge reason cannot push the others out.
        reasons = (f"• {clip(escape(line), MAX_LINE)}" for line in errors[1:])
        blocks.append(_section("\n".join([f"*Errors:* {clip(escape(errors[0]), MAX_LINE)}", *reasons])))
    if text is None:
        blocks += [_items(section) for section in message.sections[:MAX_ITEM_SECTIONS]]
    links = [(shown, item.note) for item in message.links if (shown := link(item.url, item.label))]
    if links:
        blocks.append(_section("\n".join(shown + (f" ({escape(note)})" if note else "") for shown, note in links)))
    context = clip(" · ".join(["import-watcher", escape(message.footer)]), MAX_CONTEXT_TEXT)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    preview = f"{heading}\n{message.summary}" if text is None else f"{heading}\n{text}"
    return {"text": clip(escape(preview), MAX_FALLBACK_TEXT), "blocks": blocks[:MAX_BLOCKS]}


def _field(label: str, value: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(f"*{escape(label)}*\n{escape(value)}", MAX_FIELD_TEXT)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION_TEXT) or " "}}


def _items(section: Section) -> dict[str, Any]:
    """A heading and the first items that fit, then "and N more" for everything left out."""
    head = f"*{clip(escape(section.heading), MAX_LINE)}*"
    shown, more = fit_lines(
        section, budget=MAX_SECTION_TEXT - len(head) - 40,  # room for the "and N more" line
        max_items=MAX_ITEMS, render=lambda line: f"• {clip(escape(line), MAX_LINE)}",
    )
    tail = [f"_… and {more:,} more_"] if more > 0 else []
    return _section("\n".join([head, *shown, *tail]))
