"""Slack: a Block Kit message through an incoming webhook or `chat.postMessage`.

Slack rejects a whole message when one block breaks a limit, so every text is
escaped first and clipped second, and the block layout is fixed and small: a
notification that is too long arrives shortened instead of not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp
import structlog

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import configured_url_problem
from watcher.notify import render
from watcher.notify.base import BaseNotifier
from watcher.notify.webhook import (
    USER_AGENT,
    answer_retry_after,
    network_error,
    raise_for_answer,
    read_some,
    read_whole,
    reveal,
)
from watcher.schema import Field, Secret, boolean, duration, optional_string, secret, url

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS = 10
MAX_CONTEXT_TEXT = 2000
MAX_FALLBACK_TEXT = 3000
_MAX_LINK_URL = 2000
_MAX_FIELD_SECTIONS = 4
_MAX_REASON_LINE = 400

# chat.postMessage answers 200 {"ok": false}; these errors are worth another try.
_RETRYABLE_API_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
    }
)

_log = structlog.get_logger("watcher.notify")


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


def _link(target: str, label: str) -> str | None:
    # Inside <url|label>, `|` and `>` would end the link early: percent-encode them.
    if len(target) > _MAX_LINK_URL:
        return None
    safe = quote(target, safe=":/?#[]@!$&'()*+,;=%~-._")
    return f"<{escape(safe)}|{escape(label)}>"


def _field(label: str, value: str) -> dict[str, Any]:
    text = f"*{escape(label)}*\n{escape(value)}"
    return {"type": "mrkdwn", "text": clip(text, MAX_FIELD_TEXT)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION_TEXT)}}


def build_message(event: Mapping[str, Any], *, title: str | None = None, text: str | None = None) -> dict[str, Any]:
    """The `text` fallback and Block Kit `blocks` for one event, always within the limits.

    `title` and `text` are rendered template overrides. `text` is escaped like any
    other user text; `title` lands in a plain_text header, which Slack shows literally
    (no links, no mentions), so it is only clipped.
    """
    heading = title if title else render.title(event)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": clip(heading, MAX_HEADER), "emoji": True},
        }
    ]
    if text is not None and text.strip():
        blocks.append(_section(escape(text)))
    else:
        text = None
        # Alerts may carry many details: a few sections of fields, the rest dropped.
        fields = [_field(label, value) for label, value in render.summary_fields(event)]
        fields = fields[: MAX_FIELDS * _MAX_FIELD_SECTIONS]
        for start in range(0, len(fields), MAX_FIELDS):
            blocks.append({"type": "section", "fields": fields[start : start + MAX_FIELDS]})
    if errors := render.errors_lines(event):
        # Clip each reason, so one huge reason cannot push the others out.
        reasons = (f"• {clip(escape(line), _MAX_REASON_LINE)}" for line in errors[1:])
        lines = [f"*Errors:* {clip(escape(errors[0]), _MAX_REASON_LINE)}", *reasons]
        blocks.append(_section("\n".join(lines)))
    if (target := render.errors_url(event)) and (link := _link(target, "Download the errors file")):
        blocks.append(_section(f"{link} (short-lived link)"))
    blocks.append(_context(event))
    fallback = heading if text is None else f"{heading}\n{text}"
    return {"text": clip(escape(fallback), MAX_FALLBACK_TEXT), "blocks": blocks[:MAX_BLOCKS]}


def _context(event: Mapping[str, Any]) -> dict[str, Any]:
    parts = ["import-watcher", escape(str(event.get("type", "")))]
    watch = render.data_of(event).get("watch")
    if isinstance(watch, Mapping) and watch.get("detected_at"):
        parts.append(f"detected {escape(str(watch['detected_at']))}")
    elif event.get("timestamp"):
        parts.append(escape(str(event["timestamp"])))
    text = clip(" · ".join(parts), MAX_CONTEXT_TEXT)
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _secret_url(value: Any) -> Secret:
    # The incoming-webhook URL embeds a token: parse it as a URL, keep it as a Secret.
    return Secret(url("http", "https")(value))


class SlackNotifier(BaseNotifier):
    """Posts to Slack with an incoming webhook, or with a bot token to a channel."""

    type_name: ClassVar[str] = "slack"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("webhook_url", _secret_url, secret=True, doc="incoming webhook URL"),
        Field("bot_token", secret, secret=True, doc="xoxb-... for chat.postMessage"),
        Field("channel", optional_string, doc="channel id or name, with bot_token"),
        Field("api_url", url("http", "https"), default="https://slack.com/api"),
        Field("timeout", duration(0.001), default=10.0),
        Field("allow_insecure", boolean, default=False, doc="allow http to non-loopback hosts"),
    )

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Exactly one way to post, and no token over plain http off the machine."""
        problems: list[tuple[str, str]] = []
        hook, token = reveal(settings.get("webhook_url")), reveal(settings.get("bot_token"))
        if hook and token:
            problems.append(("webhook_url", "set either webhook_url or bot_token, not both"))
        elif not hook and not token:
            problems.append(("webhook_url", "set webhook_url, or bot_token and channel"))
        if token and not settings.get("channel"):
            problems.append(("channel", "required with bot_token"))
        if hook and settings.get("channel"):
            problems.append(("channel", "an incoming webhook posts to its own channel; remove this"))
        for key, target in (
            ("webhook_url", hook),
            ("api_url", settings.get("api_url") if token else None),
        ):
            if isinstance(target, str):
                problem = configured_url_problem(target, allow_insecure=bool(settings.get("allow_insecure")))
                if problem is not None:
                    problems.append((key, problem))
        return problems

    async def send(self, delivery: Delivery) -> None:
        """Post the message once; raise a retryable or permanent error when Slack says no."""
        event = delivery.event
        message = build_message(
            event,
            title=render.render_override(self.templates, "title", event, notifier=self.name),
            text=render.render_override(self.templates, "text", event, notifier=self.name),
        )
        log = _log.bind(notifier=self.name, delivery=delivery.id)
        try:
            if token := reveal(self.settings.get("bot_token")):
                await self._post_api(token, message)
            else:
                await self._post_webhook(message)
        except PermanentDeliveryError as exc:
            log.warning("notify.slack_rejected", error=str(exc))
            raise
        except RetryableDeliveryError as exc:
            log.info("notify.slack_failed", error=str(exc), retry_after=exc.retry_after)
            raise
        log.debug("notify.slack_delivered")

    async def _post(
        self, target: str, payload: Mapping[str, Any], headers: Mapping[str, str], *, whole: bool = False
    ) -> tuple[int, str, dict[str, str]]:
        """POST; the answer read whole (up to 1 MiB) when `whole` and 2xx, else its start."""
        timeout = aiohttp.ClientTimeout(total=float(self.settings.get("timeout") or 10.0))
        try:
            body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
        except ValueError:
            raise PermanentDeliveryError("slack: the message holds a number JSON cannot carry") from None
        all_headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            **headers,
        }
        try:
            async with self.session.post(
                target, data=body, headers=all_headers, timeout=timeout, allow_redirects=False
            ) as response:
                if whole and response.status < 300:
                    # chat.postMessage echoes the message: its success is known only from the whole answer.
                    text = await read_whole(response, "slack chat.postMessage")
                else:
                    text = await read_some(response)
                return response.status, text, dict(response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise network_error("slack", exc) from None

    async def _post_webhook(self, message: Mapping[str, Any]) -> None:
        hook = reveal(self.settings.get("webhook_url"))
        if not hook:
            raise PermanentDeliveryError("slack: neither webhook_url nor bot_token is set")
        status, text, headers = await self._post(hook, message, {})
        if status >= 300:
            # Slack answers with short codes (invalid_payload, channel_is_archived): safe to show.
            raise_for_answer("slack webhook", status, text, headers)

    async def _post_api(self, token: str, message: Mapping[str, Any]) -> None:
        target = str(self.settings.get("api_url") or "https://slack.com/api").rstrip("/")
        payload = {"channel": self.settings.get("channel"), **message}
        status, text, headers = await self._post(
            f"{target}/chat.postMessage", payload, {"Authorization": f"Bearer {token}"}, whole=True
        )
        if status >= 300:
            raise_for_answer("slack chat.postMessage", status, text, headers)
        try:
            answer = json.loads(text)
        except ValueError:
            raise RetryableDeliveryError("slack chat.postMessage: answer is not JSON") from None
        if not isinstance(answer, dict) or answer.get("ok") is True:
            return
        error = str(answer.get("error") or "unknown_error")
        if error in _RETRYABLE_API_ERRORS:
            raise RetryableDeliveryError(f"slack chat.postMessage: {error}", answer_retry_after(headers))
        raise PermanentDeliveryError(f"slack chat.postMessage: {error}")
