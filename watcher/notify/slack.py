"""Slack: a Block Kit message through an incoming webhook or `chat.postMessage`.

The message is the event's target-neutral Message (watcher.notify.message) drawn as Block
Kit by watcher.notify.blocks, which keeps every block within Slack's limits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp
import structlog

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import configured_url_problem, scrub
from watcher.notify import render
from watcher.notify.base import BaseNotifier
from watcher.notify.blocks import blocks_message
from watcher.notify.chat import secret_url
from watcher.notify.message import message_from_event
from watcher.notify.webhook import (
    USER_AGENT,
    answer_retry_after,
    network_error,
    raise_for_answer,
    read_some,
    read_whole,
    reveal,
)
from watcher.schema import Field, boolean, duration, optional_string, secret, url

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


def build_message(event: Mapping[str, Any], *, title: str | None = None, text: str | None = None) -> dict[str, Any]:
    """The `text` fallback and Block Kit `blocks` for one event (see watcher.notify.blocks)."""
    return blocks_message(message_from_event(event), title=title, text=text)


class SlackNotifier(BaseNotifier):
    """Posts to Slack with an incoming webhook, or with a bot token to a channel."""

    type_name: ClassVar[str] = "slack"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("webhook_url", secret_url, secret=True, doc="incoming webhook URL"),
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
            # Slack answers with short codes (invalid_payload, channel_is_archived); a proxy in
            # front may echo the URL, whose path is the credential.
            raise_for_answer("slack webhook", status, scrub(text, hook), headers)

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
