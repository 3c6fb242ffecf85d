"""The Mattermost (and Rocket.Chat) notifier against a fake incoming webhook that validates attachments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.mattermost import MattermostNotifier, build_payload, md
from watcher.notify.message import Link, Message, Section, Severity, message_from_event
from watcher.notify.pacing import forget_pacers
from watcher.notify.samples import sample_event
from watcher.schema import Secret
from watcher.testing.chatfakes_b import FakeMattermost, ScriptedAnswer, VirtualClock, deliver_burst, running
from watcher.testing.chatfakes_b.events import big_batch_event, every_event
from watcher.testing.chatfakes_b.mattermost import post_problems

HOOK = "xz7hook0secret0id00000000a"
Start = Callable[..., Any]


@pytest.fixture(autouse=True)
def _fresh_pacers() -> None:
    forget_pacers()


@pytest.fixture
async def mattermost(session: aiohttp.ClientSession) -> AsyncIterator[tuple[FakeMattermost, Start]]:
    """A fake Mattermost and a factory of started notifiers posting to its hook, on one virtual clock."""
    fake = FakeMattermost(clock=VirtualClock())
    async with running(fake.app()) as base:

        async def start(**settings: Any) -> MattermostNotifier:
            url = Secret(f"{base}/hooks/{HOOK}")
            notifier = MattermostNotifier("team-mm", {"webhook_url": url, **settings}, clock=fake.clock)
            await notifier.start(session)
            return notifier

        yield fake, start


@pytest.mark.parametrize(("name", "event"), every_event(), ids=[name for name, _ in every_event()])
async def test_every_event_is_accepted(mattermost, make_delivery, name: str, event: dict[str, Any]) -> None:
    """Each outcome, the 500-job batch summary, stuck warnings, the digest and alerts are posts Mattermost takes."""
    fake, start = mattermost
    notifier = await start()
    await notifier.send(make_delivery(event))
    assert [] == fake.rejected
    attachment = fake.accepted[0]["attachments"][0]
    assert message_from_event(event).heading == attachment["title"]
    assert attachment["fallback"]


async def test_optional_sender_settings_are_sent(mattermost, make_delivery) -> None:
    """username, icon_url and channel reach the webhook when set."""
    fake, start = mattermost
    notifier = await start(username="import-watcher", icon_url="https://example.com/i.png", channel="town-square")
    await notifier.send(make_delivery(sample_event("failed")))
    body = fake.accepted[0]
    expected = ("import-watcher", "https://example.com/i.png", "town-square")
    assert expected == (body["username"], body["icon_url"], body["channel"])


async def test_429_is_retryable_and_paces_the_next_send(mattermost, make_delivery) -> None:
    """Mattermost's limiter answer is retryable with its Retry-After, and the next send waits for it."""
    fake, start = mattermost
    notifier = await start()
    limited = {"Retry-After": "3", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "3"}
    fake.script.append(ScriptedAnswer(429, "limit exceeded", limited))
    began = fake.clock.now()
    with pytest.raises(RetryableDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("failed")))
    await notifier.send(make_delivery(sample_event("failed")))
    assert 3.0 == caught.value.retry_after
    assert 3.0 <= fake.clock.now() - began


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, PermanentDeliveryError),
        (404, PermanentDeliveryError),
        (403, PermanentDeliveryError),
        (500, RetryableDeliveryError),
        (503, RetryableDeliveryError),
    ],
)
async def test_answers_map_to_final_or_retryable(mattermost, make_delivery, status: int, error: type) -> None:
    """4xx other than 429 are final; 5xx are retryable."""
    fake, start = mattermost
    notifier = await start()
    body = json.dumps(
        {"id": "web.incoming_webhook.invalid.app_error", "message": "Invalid webhook", "status_code": status}
    )
    fake.script.append(ScriptedAnswer(status, body))
    with pytest.raises(error) as caught:
        await notifier.send(make_delivery(sample_event("completed")))
    assert "Invalid webhook" in str(caught.value)


async def test_rocket_chat_json_success_is_success(mattermost, make_delivery) -> None:
    """Rocket.Chat's 200 `{"success": true}` is a delivered notification too."""
    fake, start = mattermost
    notifier = await start()
    fake.script.append(ScriptedAnswer(200, '{"success":true}', {"Content-Type": "application/json"}))
    await notifier.send(make_delivery(sample_event("completed")))


async def test_a_burst_of_200_gets_at_most_one_429(mattermost, make_delivery) -> None:
    """200 outcomes at once are paced under Mattermost's limiter: every one delivered, at most one 429."""
    fake, start = mattermost
    notifier = await start()
    deliveries = [make_delivery(sample_event("errored"), id=f"msg_{i:04}") for i in range(200)]
    await deliver_burst(notifier, deliveries, fake.clock)
    assert 200 == len(fake.accepted)
    assert fake.throttled <= 1


async def test_secrets_are_masked_in_describe_errors_and_logs(mattermost, make_delivery) -> None:
    """The hook id never appears in describe(), in an error echoing the URL, or in logs."""
    fake, start = mattermost
    notifier = await start()
    fake.script.append(ScriptedAnswer(404, f"no hook at {notifier.settings['webhook_url'].reveal()}"))
    with capture_logs() as logs, pytest.raises(PermanentDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("completed")))
    assert HOOK not in json.dumps(notifier.describe())
    assert HOOK not in repr(logs)
    assert HOOK not in str(caught.value)


def test_mentions_and_markdown_in_event_text_are_neutralised() -> None:
    """A label `@channel` wakes nobody and `**x**` shows as typed."""
    assert "@\u200bchannel \\*\\*x\\*\\*" == md("@channel **x**", 100)


def test_a_huge_message_stays_within_the_post_limit() -> None:
    """Long facts, sections and reasons still give a post within 16,383 characters."""
    message = Message(
        kind="t",
        subject="s",
        status="failed",
        severity=Severity.ERROR,
        title="T" * 500,
        summary="é" * 5000,
        line="L",
        facts=tuple((f"fact {i}", "ß" * 3000) for i in range(40)),
        sections=tuple(Section(f"section {i}", tuple("ö" * 900 for _ in range(50)), more=10) for i in range(8)),
        errors="1 rows rejected",
        reasons=tuple((i, "ä" * 900) for i in range(10)),
        links=(Link("Open", "https://example.com/a (b)"),),
    )
    payload = build_payload(message, {})
    assert [] == post_problems(payload)
    assert "[Open](https://example.com/a%20%28b%29)" in payload["attachments"][0]["text"]


def test_big_batch_is_a_valid_post() -> None:
    """The 500-job batch summary is one valid attachment with its counts as fields."""
    payload = build_payload(message_from_event(big_batch_event()), {})
    assert [] == post_problems(payload)
    assert any(field["title"] == "Jobs" for field in payload["attachments"][0]["fields"])


CHECKS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("https", "https://chat.example.com/hooks/abc", {}, []),
    ("loopback http", "http://127.0.0.1:8065/hooks/abc", {}, []),
    ("plain http", "http://chat.example.com/hooks/abc", {}, ["webhook_url"]),
    ("plain http allowed", "http://chat.example.com/hooks/abc", {"allow_insecure": True}, []),
    ("private ip", "https://10.1.2.3/hooks/abc", {}, ["webhook_url"]),
    ("private ip allowed", "https://10.1.2.3/hooks/abc", {"allow_private": True}, []),
]


@pytest.mark.parametrize(("name", "url", "extra", "keys"), CHECKS, ids=[row[0] for row in CHECKS])
def test_check(name: str, url: str, extra: dict[str, Any], keys: list[str]) -> None:
    """https unless loopback or allow_insecure; a private IP only with allow_private."""
    assert keys == [key for key, _ in MattermostNotifier.check({"webhook_url": Secret(url), **extra})]


FAKE_REFUSES: list[tuple[str, Any]] = [
    ("nothing", {}),
    ("attachments not a list", {"attachments": {"text": "x"}}),
    (
        "field short not a boolean",
        {"attachments": [{"text": "x", "fields": [{"title": "a", "value": "b", "short": "yes"}]}]},
    ),
    ("bad colour", {"attachments": [{"text": "x", "color": "red"}]}),
    ("over 16,383 characters", {"text": "x" * 16_384}),
    ("attachments over the limit", {"attachments": [{"text": "x" * 16_000, "title": "y" * 400}]}),
]


@pytest.mark.parametrize(("name", "body"), FAKE_REFUSES, ids=[row[0] for row in FAKE_REFUSES])
def test_the_fake_refuses_what_mattermost_refuses(name: str, body: Any) -> None:
    """The fake's rules catch each way a webhook post is refused."""
    assert post_problems(body)
    assert [] == post_problems(
        {"attachments": [{"text": "x", "color": "#ff0000", "fields": [{"title": "a", "value": 1, "short": True}]}]}
    )
