"""A fake Discord webhook endpoint, from Discord's documentation.

`POST /api[/v{n}]/webhooks/{id}/{token}[?wait=true]` (docs.discord.com "Execute Webhook",
"Embed Limits", "Rate Limits"):
- an unknown webhook id is 404 `{"message": "Unknown Webhook", "code": 10015}`, a wrong
  token 401 `{"message": "Invalid Webhook Token", "code": 50027}`;
- every webhook has its own bucket (`limit` requests per `window` seconds; Discord answers
  5 per 2 s); every answer carries `X-RateLimit-Limit/-Remaining/-Reset/-Reset-After/-Bucket`,
  and a request over the bucket is 429 `{"message", "retry_after" (seconds, fractional),
  "global": false}` with `Retry-After` and `X-RateLimit-Scope`. Failed requests count too;
- a body Discord would refuse is 400 with its error body: invalid JSON (50109), nothing to
  send (50006), or "Invalid Form Body" (50035) with the failing path for every embed limit
  (10 embeds, title 256, description 4096, 25 fields, field name 256 / value 1024, footer
  2048, author 256, 6,000 characters in all), content 2000, username 80;
- success is 200 with the message object under `?wait=true`, 204 otherwise.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from watcher.clock import Clock, SystemClock

MAX_EMBEDS, MAX_TITLE, MAX_DESCRIPTION, MAX_FIELDS = 10, 256, 4096, 25
MAX_FIELD_NAME, MAX_FIELD_VALUE, MAX_FOOTER, MAX_AUTHOR, MAX_TOTAL = 256, 1024, 2048, 256, 6000
MAX_CONTENT, MAX_USERNAME = 2000, 80
_SNOWFLAKES = itertools.count(1_200_000_000_000_000_000)


@dataclass
class _Bucket:
    remaining: int = 0
    reset_at: float = 0.0


@dataclass
class FakeDiscord:
    """Webhooks by id (with their tokens), what was posted, and what was refused."""

    clock: Clock = field(default_factory=SystemClock)
    limit: int = 5
    window: float = 2.0
    webhooks: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    rate_limited: int = 0
    invalid: int = 0  # 401, 403 and 429 answers: what Discord counts toward its ban
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def add_webhook(self) -> tuple[str, str]:
        """A new webhook: (id, token)."""
        hook_id, token = str(next(_SNOWFLAKES)), secrets.token_urlsafe(48)
        self.webhooks[hook_id] = token
        return hook_id, token

    def delete_webhook(self, hook_id: str) -> None:
        self.webhooks.pop(hook_id, None)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/webhooks/{id}/{token}", self.execute)
        app.router.add_post(r"/api/v{version:\d+}/webhooks/{id}/{token}", self.execute)
        return app

    async def execute(self, request: web.Request) -> web.Response:
        """Execute Webhook."""
        self.requests += 1
        hook_id, token = request.match_info["id"], request.match_info["token"]
        if hook_id not in self.webhooks:
            return self._answer(404, {"message": "Unknown Webhook", "code": 10015})
        if not secrets.compare_digest(self.webhooks[hook_id], token):
            self.invalid += 1
            return self._answer(401, {"message": "Invalid Webhook Token", "code": 50027})
        headers, over = self._take(hook_id)
        if over is not None:
            self.rate_limited += 1
            self.invalid += 1
            retry = math.ceil(over * 1000) / 1000
            limited = {"message": "You are being rate limited.", "retry_after": retry, "global": False}
            headers |= {"Retry-After": str(math.ceil(over)), "X-RateLimit-Scope": "user"}
            return self._answer(429, limited, headers)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return self._refuse({"message": "The request body contains invalid JSON.", "code": 50109}, headers)
        refusal = refusal_of(payload)
        if refusal is not None:
            return self._refuse(refusal, headers)
        message = self._message(hook_id, payload)
        self.messages.append(message)
        if request.query.get("wait", "").lower() == "true":
            return self._answer(200, message, headers)
        return web.Response(status=204, headers=headers)

    def _take(self, hook_id: str) -> tuple[dict[str, str], float | None]:
        """Count one request against the webhook's bucket: its headers, and the wait when over."""
        now = self.clock.now()
        bucket = self._buckets.setdefault(hook_id, _Bucket())
        if now >= bucket.reset_at:
            bucket.remaining, bucket.reset_at = self.limit, now + self.window
        over = None if bucket.remaining > 0 else bucket.reset_at - now
        bucket.remaining = max(0, bucket.remaining - 1)
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(bucket.remaining),
            "X-RateLimit-Reset": f"{math.ceil(bucket.reset_at * 1000) / 1000:.3f}",
            "X-RateLimit-Reset-After": f"{math.ceil((bucket.reset_at - now) * 1000) / 1000:.3f}",
            "X-RateLimit-Bucket": f"webhook-{hook_id[-6:]}",
        }
        return headers, over

    def _refuse(self, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
        self.refused.append(body)
        return self._answer(400, body, headers)

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    def _message(self, hook_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(next(_SNOWFLAKES)),
            "type": 0,
            "channel_id": "1100000000000000001",
            "webhook_id": hook_id,
            "content": payload.get("content", ""),
            "embeds": payload.get("embeds", []),
            "author": {"id": hook_id, "username": payload.get("username") or "import-watcher", "bot": True},
            "timestamp": "2026-12-01T00:00:00.000000+00:00",
        }


# --- what Discord refuses -------------------------------------------------------


def refusal_of(payload: Any) -> dict[str, Any] | None:
    """Discord's 400 body for a payload it refuses, None when it would post it."""
    if not isinstance(payload, dict):
        return {"message": "The request body contains invalid JSON.", "code": 50109}
    content, embeds = payload.get("content"), payload.get("embeds")
    if not content and not embeds:
        return {"message": "Cannot send an empty message", "code": 50006}
    errors: list[tuple[tuple[str, ...], str, str]] = []
    if content is not None and (not isinstance(content, str) or len(content) > MAX_CONTENT):
        errors.append((("content",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."))
    username = payload.get("username")
    if username is not None and (not isinstance(username, str) or not 1 <= len(username) <= MAX_USERNAME):
        errors.append((("username",), "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_USERNAME} in length."))
    if embeds is not None:
        errors += _embeds_errors(embeds)
    if not errors:
        return None
    return {"code": 50035, "message": "Invalid Form Body", "errors": _nest(errors)}


def _embeds_errors(embeds: Any) -> list[tuple[tuple[str, ...], str, str]]:
    if not isinstance(embeds, list):
        return [(("embeds",), "LIST_TYPE_CONVERT", "Must be an array.")]
    if len(embeds) > MAX_EMBEDS:
        return [(("embeds",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")]
    errors: list[tuple[tuple[str, ...], str, str]] = []
    total = 0
    for index, embed in enumerate(embeds):
        if not isinstance(embed, dict):
            errors.append((("embeds", str(index)), "DICT_TYPE_CONVERT", "Only dictionaries may be used."))
            continue
        found, size = _embed_errors(embed)
        errors += [(("embeds", str(index), *where), code, text) for where, code, text in found]
        total += size
    if total > MAX_TOTAL:
        errors.append((("embeds",), "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {MAX_TOTAL}"))
    return errors


def _embed_errors(embed: dict[str, Any]) -> tuple[list[tuple[tuple[str, ...], str, str]], int]:
    """One embed's problems, and its size as Discord counts it toward the 6,000."""
    errors: list[tuple[tuple[str, ...], str, str]] = []
    texts: list[tuple[tuple[str, ...], Any, int, bool]] = [
        (("title",), embed.get("title"), MAX_TITLE, False),
        (("description",), embed.get("description"), MAX_DESCRIPTION, False),
    ]
    if "footer" in embed:
        texts.append((("footer", "text"), (embed["footer"] or {}).get("text"), MAX_FOOTER, True))
    if "author" in embed:
        texts.append((("author", "name"), (embed["author"] or {}).get("name"), MAX_AUTHOR, True))
    fields = embed.get("fields") or []
    if not isinstance(fields, list) or len(fields) > MAX_FIELDS:
        errors.append((("fields",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FIELDS} or fewer in length."))
        fields = []
    for index, item in enumerate(fields):
        item = item if isinstance(item, dict) else {}
        texts.append((("fields", str(index), "name"), item.get("name"), MAX_FIELD_NAME, True))
        texts.append((("fields", str(index), "value"), item.get("value"), MAX_FIELD_VALUE, True))
    size = 0
    for where, value, limit, required in texts:
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not value.strip()):
            errors.append((where, "BASE_TYPE_REQUIRED", "This field is required"))
        elif len(value) > limit:
            errors.append((where, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))
        size += len(value) if isinstance(value, str) else 0
    url = embed.get("url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        errors.append((("url",), "URL_TYPE_INVALID_URL", "Not a well formed URL."))
    color = embed.get("color")
    if color is not None and (isinstance(color, bool) or not isinstance(color, int) or not 0 <= color <= 0xFFFFFF):
        errors.append((("color",), "NUMBER_TYPE_MAX", "int value should be less than or equal to 16777215."))
    return errors, size


def _nest(errors: list[tuple[tuple[str, ...], str, str]]) -> dict[str, Any]:
    """Discord's nested error tree: {"embeds": {"0": {"title": {"_errors": [...]}}}}."""
    tree: dict[str, Any] = {}
    for where, code, text in errors:
        node = tree
        for part in where:
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": code, "message": text})
    return tree
