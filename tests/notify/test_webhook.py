"""The webhook notifier against a real receiver that verifies Standard Webhooks signatures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.helpers import free_port
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.render import sample_event
from watcher.notify.webhook import WebhookNotifier
from watcher.ratelimit.signals import MAX_WAIT
from watcher.schema import Secret

from .conftest import Answer

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class VerifyingReceiver:
    """Verifies every request with the standardwebhooks package, then answers from a script."""

    def __init__(self, secret: str, answers: list[Answer] | None = None) -> None:
        self.webhook = Webhook(secret)
        self.answers = answers or []
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.failures: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            payload = self.webhook.verify(body, headers)
        except Exception as exc:
            self.failures.append(repr(exc))
            return web.Response(status=400, text="bad signature")
        self.received.append((headers, payload))
        answer = self.answers.pop(0) if self.answers else Answer(204, b"")
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))


def notifier(url: str, **settings: Any) -> WebhookNotifier:
    return WebhookNotifier("audit-hook", {"url": url, "secret": Secret(SECRET), **settings})


async def test_body_is_exactly_the_three_public_keys(http_server, start_notifier, make_delivery) -> None:
    """The receiver verifies the signature and gets only type, timestamp and data."""
    receiver = VerifyingReceiver(SECRET)
    server = await http_server(handler=receiver.handle)
    event = sample_event("errored")
    assert "errors_sample_csv" in event
    hook = await start_notifier(notifier(server.url + "/hook"))

    await hook.send(make_delivery(event))

    assert [] == receiver.failures
    ((_, payload),) = receiver.received
    assert {
        "type": event["type"],
        "timestamp": event["timestamp"],
        "data": event["data"],
    } == payload


async def test_webhook_id_is_stable_across_retries(http_server, start_notifier, make_delivery) -> None:
    """Two sends of one delivery carry the same webhook-id: the Delivery id."""
    receiver = VerifyingReceiver(SECRET)
    server = await http_server(handler=receiver.handle)
    hook = await start_notifier(notifier(server.url))
    delivery = make_delivery(sample_event("completed"), id="msg_stable42")

    await hook.send(delivery)
    await hook.send(delivery)

    assert ["msg_stable42", "msg_stable42"] == [h["webhook-id"] for h, _ in receiver.received]
    assert all(h["webhook-timestamp"].isdigit() for h, _ in receiver.received)


@pytest.mark.parametrize(
    ("answer", "error", "retry_after", "in_message"),
    [
        (Answer(500, "boom"), RetryableDeliveryError, None, "500"),
        (Answer(503, "", {"Retry-After": "0.01"}), RetryableDeliveryError, 0.01, "503"),
        (Answer(429, "slow down", {"Retry-After": "7"}), RetryableDeliveryError, 7.0, "429"),
        (Answer(410, "gone for good"), PermanentDeliveryError, None, "410"),
        (Answer(400, "x" * 1000), PermanentDeliveryError, None, "400"),
        (
            Answer(301, "", {"Location": "https://else.example/x?t=1"}),
            PermanentDeliveryError,
            None,
            "301",
        ),
    ],
)
async def test_error_answers_map_to_delivery_errors(
    http_server, start_notifier, make_delivery, answer, error, retry_after, in_message
) -> None:
    """429/5xx are retryable (with Retry-After), 3xx/4xx permanent, the status in the message."""
    receiver = VerifyingReceiver(SECRET, [answer])
    server = await http_server(handler=receiver.handle)
    hook = await start_notifier(notifier(server.url))

    with pytest.raises(error) as caught:
        await hook.send(make_delivery(sample_event("failed")))

    assert in_message in str(caught.value)
    assert len(str(caught.value)) < 400  # the response is shown, but only its start
    if isinstance(caught.value, RetryableDeliveryError):
        assert retry_after == caught.value.retry_after


async def test_connection_refused_is_retryable(start_notifier, make_delivery) -> None:
    """Nobody listening is a network error worth retrying."""
    hook = await start_notifier(notifier(f"http://127.0.0.1:{free_port()}/hook", timeout=2.0))

    with pytest.raises(RetryableDeliveryError, match="cannot connect"):
        await hook.send(make_delivery(sample_event("completed")))


async def test_timeout_is_retryable(http_server, start_notifier, make_delivery) -> None:
    """A receiver slower than `timeout` is retried later."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    server = await http_server(handler=slow)
    hook = await start_notifier(notifier(server.url, timeout=0.05))

    with pytest.raises(RetryableDeliveryError, match="timed out"):
        await hook.send(make_delivery(sample_event("completed")))
    release.set()


async def test_extra_headers_arrive_but_cannot_replace_signature_headers(
    http_server, start_notifier, make_delivery
) -> None:
    """User headers are sent; a user `webhook-id` or signature is dropped, not sent beside ours."""
    receiver = VerifyingReceiver(SECRET)
    sent: list[tuple[list[str], list[str]]] = []

    async def handle(request: web.Request) -> web.Response:
        sent.append((request.headers.getall("webhook-id"), request.headers.getall("webhook-signature")))
        return await receiver.handle(request)

    server = await http_server(handler=handle)
    headers = {"X-Team": "growth", "Authorization": "Bearer abc123", "Webhook-Id": "forged",
               "WEBHOOK-SIGNATURE": "v1,forged"}  # fmt: skip
    hook = await start_notifier(notifier(server.url, headers=headers))

    await hook.send(make_delivery(sample_event("completed"), id="msg_real"))
    ((ids, signatures),) = sent
    assert ["msg_real"] == ids
    assert 1 == len(signatures) and "forged" not in signatures[0]

    ((seen, _),) = receiver.received
    assert ("growth", "Bearer abc123", "msg_real") == (
        seen["X-Team"],
        seen["Authorization"],
        seen["webhook-id"],
    )


async def test_without_secret_the_request_is_unsigned(http_server, start_notifier, make_delivery) -> None:
    """No secret: no webhook-signature header, the same body."""
    server = await http_server()
    hook = await start_notifier(WebhookNotifier("plain", {"url": server.url}))

    await hook.send(make_delivery(sample_event("completed")))

    (request,) = server.requests
    assert "webhook-signature" not in {k.lower() for k in request.headers}
    assert ["data", "timestamp", "type"] == sorted(json.loads(request.body))


@pytest.mark.parametrize(
    ("settings", "problems"),
    [
        ({"url": "http://example.com/hook"}, ["url"]),
        ({"url": "http://example.com/hook", "allow_insecure": True}, []),
        ({"url": "http://127.0.0.1:8080/hook"}, []),
        ({"url": "http://127.1.2.3/hook"}, []),
        ({"url": "http://[::1]:9000/hook"}, []),
        ({"url": "http://localhost/hook"}, []),
        ({"url": "https://hooks.example.com/x"}, []),
        ({"url": "https://hooks.example.com/x", "secret": Secret("not-a-whsec")}, ["secret"]),
        ({"url": "https://hooks.example.com/x", "secret": Secret("whsec_***")}, ["secret"]),
        ({"url": "https://hooks.example.com/x", "secret": Secret(SECRET)}, []),
    ],
)
def test_check(settings: dict[str, Any], problems: list[str]) -> None:
    """https is required off loopback unless allow_insecure; secrets must be whsec_<base64>."""
    assert problems == [key for key, _ in WebhookNotifier.check(settings)]


def test_describe_and_repr_hide_secrets() -> None:
    """describe() masks the secret and credential headers; repr shows neither."""
    hook = notifier("https://hooks.example.com/x", headers={"Authorization": "Bearer tok-123", "X-Team": "a"})

    shown = hook.describe()

    assert "********" == shown["secret"]
    assert {"Authorization": "********", "X-Team": "a"} == shown["headers"]
    assert SECRET not in repr(hook) and SECRET not in str(shown)
    assert "tok-123" not in str(shown)


async def test_an_absurd_retry_after_is_clamped_by_the_one_parser(http_server, start_notifier, make_delivery) -> None:
    """A 429 asking for 28 hours is clamped like every other Retry-After (one shared parser)."""
    server = await http_server(default=Answer(429, "", {"Retry-After": "100800"}))
    hook = await start_notifier(notifier(server.url))

    with pytest.raises(RetryableDeliveryError) as caught:
        await hook.send(make_delivery(sample_event("failed")))

    assert caught.value.retry_after is not None and caught.value.retry_after <= MAX_WAIT


CANARY = "canary-pw-7f3a9c"


async def test_a_password_in_the_url_never_reaches_a_log_line_or_an_error(
    http_server, start_notifier, make_delivery, json_logs
) -> None:
    """A canary password in the webhook URL: absent from every log line and every error message."""
    echoing = await http_server(
        default=Answer(503, f"upstream https://ops:{CANARY}@hooks.example.com/x?token={CANARY} is down")
    )
    port = echoing.url.rsplit(":", 1)[1]
    errors: list[str] = []
    for url in (f"http://ops:{CANARY}@127.0.0.1:{port}/hook", f"http://ops:{CANARY}@127.0.0.1:{free_port()}/hook"):
        hook = await start_notifier(notifier(url, timeout=2.0))
        with pytest.raises(RetryableDeliveryError) as caught:
            await hook.send(make_delivery(sample_event("failed")))
        errors.append(str(caught.value))
        errors.append(str(hook.describe()))

    logged = json_logs.getvalue()
    assert 2 == logged.count("notify.webhook_failed")
    assert [] == [text for text in [logged, *errors] if CANARY in text]
    assert "Basic" in echoing.requests[0].headers["Authorization"]  # the password was used, only never shown
