"""A fake Mattermost incoming webhook (`POST /hooks/<id>`), also standing in for Rocket.Chat.

Takes a JSON body (or Slack's `payload=` form) with `text` and/or Slack-style `attachments`
and answers 200 `ok` (text/plain). A malformed attachment, a post with nothing in it or over
16,383 characters (its text plus the attachments' text) is a 400 with Mattermost's error
JSON. The server's rate limiter (10 a second, a burst of 100) answers 429 with
`X-RateLimit-*` and `Retry-After`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from watcher.testing.chatfakes_b.base import FakeService, TokenBucket, retry_after_header

MAX_POST_CHARS = 16_383
_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})|good|warning|danger")
_TEXT_KEYS = ("fallback", "color", "pretext", "title", "title_link", "text", "footer", "author_name")


def post_problems(body: Any) -> list[str]:
    """Why Mattermost would refuse this webhook post."""
    if not isinstance(body, Mapping):
        return ["Unable to parse incoming data."]
    text, attachments = body.get("text", ""), body.get("attachments", [])
    if not isinstance(text, str) or not isinstance(attachments, list):
        return ["Unable to parse incoming data."]
    if not text and not attachments:
        return ["Either text or attachments must be set."]
    problems: list[str] = []
    for index, item in enumerate(attachments):
        problems += _attachment(item, f"attachments[{index}]")
    if not problems and (size := _chars(text, attachments)) > MAX_POST_CHARS:
        problems.append(f"post of {size} characters is over {MAX_POST_CHARS}")
    return problems


def _attachment(item: Any, where: str) -> list[str]:
    if not isinstance(item, Mapping):
        return [f"{where} is not an object"]
    problems = [f"{where}.{key} is not a string" for key in _TEXT_KEYS if not isinstance(item.get(key, ""), str)]
    if item.get("color") and not _COLOR.fullmatch(str(item["color"])):
        problems.append(f"{where}.color is not a hex colour")
    fields = item.get("fields", [])
    if not isinstance(fields, list):
        return [*problems, f"{where}.fields is not a list"]
    for index, field in enumerate(fields):
        ok = (
            isinstance(field, Mapping)
            and isinstance(field.get("title", ""), str)
            and isinstance(field.get("value", ""), str | int | float)
            and isinstance(field.get("short", False), bool)
        )
        if not ok:
            problems.append(f"{where}.fields[{index}] needs a string title, a value and a boolean short")
    return problems


def _chars(text: str, attachments: list[Mapping[str, Any]]) -> int:
    total = len(text)
    for item in attachments:
        total += sum(len(str(item.get(key) or "")) for key in ("pretext", "title", "text", "footer"))
        total += sum(len(str(f.get("title", ""))) + len(str(f.get("value", ""))) for f in item.get("fields", []))
    return total


class FakeMattermost(FakeService):
    """Hooks at `/hooks/<id>`; a 10-a-second limiter with a burst of 100 for all of them."""

    def app(self) -> web.Application:
        self.bucket = TokenBucket(10.0, 100, self.clock)
        app = web.Application()
        app.router.add_post("/hooks/{hook}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if (answer := self.scripted()) is not None:
            return answer
        wait = self.bucket.admit("client")
        if wait is not None:
            self.throttled += 1
            headers = {
                "X-RateLimit-Limit": "10",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": retry_after_header(wait),
                "Retry-After": retry_after_header(wait),
            }
            return web.Response(status=429, text="limit exceeded\n", headers=headers)
        try:
            body = _parse(await request.read(), request.content_type)
        except ValueError:
            body = None
        if problems := post_problems(body):
            self.rejected += problems
            return _error("; ".join(problems))
        assert isinstance(body, dict)  # noqa: S101 - post_problems accepted it
        self.accepted.append(body)
        return web.Response(text="ok", content_type="text/plain")


def _parse(raw: bytes, content_type: str) -> Any:
    if content_type == "application/x-www-form-urlencoded":
        return json.loads(parse_qs(raw.decode())["payload"][0])
    return json.loads(raw)


def _error(message: str) -> web.Response:
    body = {
        "id": "web.incoming_webhook.parse.app_error",
        "message": message,
        "detailed_error": "",
        "request_id": "fake",
        "status_code": 400,
    }
    return web.json_response(body, status=400)
