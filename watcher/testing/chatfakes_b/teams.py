"""A fake Power Automate Workflows webhook ("When a Teams webhook request is received").

Accepts `{"type": "message", "attachments": [{"contentType":
"application/vnd.microsoft.card.adaptive", "content": <AdaptiveCard>}]}` with a card Teams
renders (version 1.4 at most, known element and action types) and answers 202 Accepted
with an empty body, as the real trigger does. Anything else is a 400 with the Logic Apps
error JSON; more than 4 requests a second to one webhook is a 429 with Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from watcher.testing.chatfakes_b.base import FakeService, SlidingWindow, retry_after_header

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_BODY_BYTES = 28_000
MAX_VERSION = (1, 4)
ELEMENTS = frozenset({"TextBlock", "FactSet", "Container", "ColumnSet", "Image", "ActionSet", "RichTextBlock"})
ACTIONS = frozenset({"Action.OpenUrl", "Action.ShowCard", "Action.ToggleVisibility", "Action.Submit"})
COLORS = frozenset({"default", "dark", "light", "accent", "good", "warning", "attention"})
STYLES = frozenset({"default", "emphasis", "good", "attention", "warning", "accent"})


def card_problems(card: Any) -> list[str]:
    """Why Teams would not render this card (empty when it would)."""
    if not isinstance(card, Mapping) or card.get("type") != "AdaptiveCard":
        return ["content is not an AdaptiveCard"]
    try:
        major, minor = (int(part) for part in str(card.get("version")).split("."))
    except ValueError:
        return [f"invalid card version {card.get('version')!r}"]
    problems = [] if (major, minor) <= MAX_VERSION else [f"card version {major}.{minor} above 1.4"]
    problems += _elements(card.get("body"), "body")
    actions = card.get("actions", [])
    if not isinstance(actions, list):
        return [*problems, "actions is not a list"]
    for index, action in enumerate(actions):
        problems += _action(action, f"actions[{index}]")
    return problems


def _elements(items: Any, where: str) -> list[str]:
    if not isinstance(items, list):
        return [f"{where} is not a list"]
    problems: list[str] = []
    for index, item in enumerate(items):
        problems += _element(item, f"{where}[{index}]")
    return problems


def _element(item: Any, where: str) -> list[str]:
    kind = item.get("type") if isinstance(item, Mapping) else None
    if kind not in ELEMENTS:
        return [f"{where}: unknown element type {kind!r}"]
    if kind == "TextBlock":
        problems = [] if isinstance(item.get("text"), str) else [f"{where}: TextBlock without text"]
        if item.get("color") not in (None, *COLORS):
            problems.append(f"{where}: unknown color {item.get('color')!r}")
        return problems
    if kind == "FactSet":
        facts = item.get("facts")
        ok = isinstance(facts, list) and all(
            isinstance(x, Mapping) and isinstance(x.get("title"), str) and isinstance(x.get("value"), str)
            for x in facts
        )
        return [] if ok else [f"{where}: facts must be title/value strings"]
    if kind == "Container":
        style = [f"{where}: unknown style"] if item.get("style") not in (None, *STYLES) else []
        return style + _elements(item.get("items"), f"{where}.items")
    if kind == "ColumnSet":
        columns = item.get("columns")
        if not isinstance(columns, list):
            return [f"{where}: columns is not a list"]
        problems = []
        for index, column in enumerate(columns):
            if not isinstance(column, Mapping) or column.get("type") != "Column":
                problems.append(f"{where}.columns[{index}] is not a Column")
            else:
                problems += _elements(column.get("items", []), f"{where}.columns[{index}].items")
        return problems
    return []


def _action(action: Any, where: str) -> list[str]:
    kind = action.get("type") if isinstance(action, Mapping) else None
    if kind not in ACTIONS:
        return [f"{where}: unknown action type {kind!r}"]
    if kind == "Action.OpenUrl" and not str(action.get("url", "")).startswith(("https://", "http://")):
        return [f"{where}: Action.OpenUrl needs an absolute url"]
    return []


def body_problems(raw: bytes) -> list[str]:
    """Why the Workflows trigger (and the Teams post after it) would refuse this body."""
    if len(raw) > MAX_BODY_BYTES:
        return [f"message of {len(raw)} bytes is over the size limit"]
    try:
        body = json.loads(raw)
    except ValueError:
        return ["body is not JSON"]
    if not isinstance(body, Mapping) or body.get("type") != "message":
        return ['body is not {"type": "message"}']
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return ["no attachments"]
    problems: list[str] = []
    for attachment in attachments:
        if not isinstance(attachment, Mapping) or attachment.get("contentType") != CARD_CONTENT_TYPE:
            problems.append("an attachment is not an Adaptive Card")
        else:
            problems += card_problems(attachment.get("content"))
    return problems


class FakeTeams(FakeService):
    """Workflows webhooks at any path; a 4-a-second window per path."""

    def app(self) -> web.Application:
        self.window = SlidingWindow(4, 1.0, self.clock)
        app = web.Application()
        app.router.add_post("/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if (answer := self.scripted()) is not None:
            return answer
        if not request.query.get("sig"):
            return _error(401, "DirectApiAuthorizationRequired", "The request must be authenticated")
        wait = self.window.admit(request.path)
        if wait is not None:
            self.throttled += 1
            return _error(429, "WorkflowRequestsThrottled", "Rate limit is exceeded", retry_after_header(wait))
        raw = await request.read()
        if problems := body_problems(raw):
            self.rejected += problems
            return _error(400, "InvalidRequestContent", "; ".join(problems))
        self.accepted.append(json.loads(raw))
        return web.Response(status=202)


def _error(status: int, code: str, message: str, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)
