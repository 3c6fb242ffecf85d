"""Answers a receiver should not give: a bogus charset on success, an error body nested 4,000 deep."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from watcher.errors import PermanentDeliveryError
from watcher.notify.mattermost import MattermostNotifier
from watcher.notify.pacing import forget_pacers
from watcher.notify.samples import sample_event
from watcher.notify.webhook import WebhookNotifier
from watcher.schema import Secret

from .conftest import Answer


@pytest.fixture(autouse=True)
def _fresh_pacers() -> None:
    forget_pacers()


def notifiers(url: str) -> list[Any]:
    return [
        WebhookNotifier("hook", {"url": f"{url}/hook"}),
        MattermostNotifier("mm", {"webhook_url": Secret(f"{url}/hooks/abc")}),
    ]


async def test_a_2xx_with_an_unknown_charset_is_delivered_once(http_server, start_notifier, make_delivery) -> None:
    """`Content-Type: text/plain; charset=bogus-xx` on a 200 is still a success, never a retried post."""
    server = await http_server(default=Answer(200, "ok", {"Content-Type": "text/plain; charset=bogus-xx"}))
    for notifier in notifiers(server.url):
        await start_notifier(notifier)
        await notifier.send(make_delivery(sample_event("completed")))  # raises if it were not a success


async def test_an_error_body_nested_4000_deep_is_a_final_refusal(http_server, start_notifier, make_delivery) -> None:
    """A 400 whose JSON body nests 4,000 levels is refused as final, not a RecursionError retried for a day."""
    server = await http_server(default=Answer(400, "[" * 4000, {"Content-Type": "application/json"}))
    for notifier in notifiers(server.url):
        await start_notifier(notifier)
        with pytest.raises(PermanentDeliveryError):
            await notifier.send(make_delivery(sample_event("failed")))


async def test_a_receiver_echoing_the_url_never_puts_its_path_credential_in_the_error(
    http_server, start_notifier, make_delivery
) -> None:
    """A 500 whose body repeats the webhook's path (the credential of Slack-style URLs) is reported without it."""
    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=500, text=f"no route for {request.path} ({request.url})")

    server = await http_server(handler=echo)
    from watcher.errors import RetryableDeliveryError
    from watcher.notify.slack import SlackNotifier

    for notifier in (
        WebhookNotifier("hook", {"url": f"{server.url}/hook/CANARYPATH1"}),
        SlackNotifier("slack", {"webhook_url": Secret(f"{server.url}/services/T0/B0/CANARYSLACK")}),
    ):
        await start_notifier(notifier)
        with pytest.raises(RetryableDeliveryError) as info:
            await notifier.send(make_delivery(sample_event("failed")))
        assert "CANARY" not in str(info.value), str(info.value)
