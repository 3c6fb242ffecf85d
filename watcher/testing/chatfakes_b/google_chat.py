"""A fake Google Chat incoming webhook (`POST /v1/spaces/<space>/messages?key=...&token=...`).

Refuses what Google refuses with its error JSON (`{"error": {"code", "message", "status"}}`):
no `text` and no cards, a malformed `cardsV2`, a message of 32,000 bytes or more, a thread
key over 4,000 characters. Over 60 messages a minute in a space is a 429
`RESOURCE_EXHAUSTED` (without Retry-After, like Google). Success is 200 with the created
message, whose `thread.name` is shared by messages with one `threadKey` only when
`messageReplyOption` asks to reply (otherwise every message starts its own thread).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from watcher.testing.chatfakes_b.base import FakeService, SlidingWindow

MAX_BODY_BYTES = 32_000
MAX_THREAD_KEY = 4000
WIDGETS = frozenset({"textParagraph", "decoratedText", "buttonList", "divider", "image", "columns", "grid"})
REPLY_OPTIONS = frozenset({"REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD", "REPLY_MESSAGE_OR_FAIL"})


def message_problems(raw: bytes) -> list[str]:
    """Why Google Chat would answer 400 INVALID_ARGUMENT to this body."""
    if len(raw) >= MAX_BODY_BYTES:
        return [f"message of {len(raw)} bytes exceeds the 32,000 byte limit"]
    try:
        body = json.loads(raw)
    except ValueError:
        return ["Invalid JSON payload received."]
    if not isinstance(body, Mapping):
        return ["Invalid JSON payload received."]
    if not body.get("text") and not body.get("cardsV2") and not body.get("cards"):
        return ["Message cannot be empty. Discarding empty create message request."]
    thread = body.get("thread")
    if thread is not None and (
        not isinstance(thread, Mapping) or len(str(thread.get("threadKey", ""))) > MAX_THREAD_KEY
    ):
        return ["Invalid thread"]
    cards = body.get("cardsV2", [])
    if not isinstance(cards, list):
        return ["Invalid value at 'message.cards_v2'"]
    problems: list[str] = []
    for index, item in enumerate(cards):
        problems += _card(item, f"cards_v2[{index}]")
    return problems


def _card(item: Any, where: str) -> list[str]:
    if not isinstance(item, Mapping) or not isinstance(item.get("card"), Mapping):
        return [f"{where}: each entry needs cardId and card"]
    card = item["card"]
    header = card.get("header")
    if header is not None and not (isinstance(header, Mapping) and isinstance(header.get("title"), str)):
        return [f"{where}.card.header needs a title"]
    sections = card.get("sections")
    if not isinstance(sections, list) or not sections:
        return [f"{where}.card: a card needs sections"]
    problems: list[str] = []
    for s_index, section in enumerate(sections):
        widgets = section.get("widgets") if isinstance(section, Mapping) else None
        if not isinstance(widgets, list) or not widgets:
            problems.append(f"{where}.sections[{s_index}]: a section needs widgets")
            continue
        for w_index, widget in enumerate(widgets):
            problems += _widget(widget, f"{where}.sections[{s_index}].widgets[{w_index}]")
    return problems


def _widget(widget: Any, where: str) -> list[str]:
    kinds = [key for key in widget if key in WIDGETS] if isinstance(widget, Mapping) else []
    if len(kinds) != 1:
        return [f"{where}: a widget is exactly one of {', '.join(sorted(WIDGETS))}"]
    kind, value = kinds[0], widget[kinds[0]]
    if kind in ("textParagraph", "decoratedText") and not isinstance(value.get("text"), str):
        return [f"{where}.{kind}: text is required"]
    if kind == "buttonList":
        for button in value.get("buttons", []):
            link = button.get("onClick", {}).get("openLink", {}).get("url") if isinstance(button, Mapping) else None
            if not isinstance(button.get("text"), str) or not str(link).startswith(("https://", "http://")):
                return [f"{where}.buttonList: a button needs text and onClick.openLink.url"]
    return []


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": code}}, status=status)


class FakeGoogleChat(FakeService):
    """Spaces at `/v1/spaces/<space>/messages`; 60 messages a minute per space."""

    def app(self) -> web.Application:
        self.window = SlidingWindow(60, 60.0, self.clock)
        self.threads: dict[tuple[str, str], str] = {}
        self.created = 0
        self.thread_names: list[str] = []  # the thread of each accepted message, in order
        app = web.Application()
        app.router.add_post("/v1/spaces/{space}/messages", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        space = request.match_info["space"]
        self.queries.append(dict(request.query))
        if (answer := self.scripted()) is not None:
            return answer
        if not request.query.get("key") or not request.query.get("token"):
            return _error(401, "Request is missing required authentication credential.", "UNAUTHENTICATED")
        option = request.query.get("messageReplyOption")
        if option is not None and option not in REPLY_OPTIONS | {"MESSAGE_REPLY_OPTION_UNSPECIFIED"}:
            return _error(400, f"Invalid value at 'message_reply_option' ({option})", "INVALID_ARGUMENT")
        if self.window.admit(space) is not None:
            self.throttled += 1
            return _error(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")
        raw = await request.read()
        if problems := message_problems(raw):
            self.rejected += problems
            return _error(400, "; ".join(problems), "INVALID_ARGUMENT")
        body = json.loads(raw)
        self.accepted.append(body)
        return web.json_response(self._created(space, body, option in REPLY_OPTIONS))

    def _created(self, space: str, body: Mapping[str, Any], reply: bool) -> dict[str, Any]:
        self.created += 1
        key = str((body.get("thread") or {}).get("threadKey") or "")
        thread = self.threads.get((space, key)) if reply and key else None
        if thread is None:
            thread = f"spaces/{space}/threads/t{self.created}"
            if reply and key:
                self.threads[(space, key)] = thread
        self.thread_names.append(thread)
        shown_thread = {"name": thread, **({"threadKey": key} if key else {})}
        return {
            "name": f"spaces/{space}/messages/m{self.created}",
            "sender": {"name": "users/webhook", "type": "BOT"},
            "text": body.get("text", ""),
            "cardsV2": body.get("cardsV2", []),
            "thread": shown_thread,
            "space": {"name": f"spaces/{space}", "type": "ROOM"},
        }
