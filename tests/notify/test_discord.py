"""The Discord notifier against a fake Discord that enforces the documented embed and rate limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.discord import DiscordNotifier, clip, discord_payload, units, with_wait
from watcher.notify.message import Link, Message, Section, Severity
from watcher.notify.pacing import forget_pacers
from watcher.schema import Secret
from watcher.testing.chatfakes import JumpClock, Served, serve
from watcher.testing.chatfakes.discord import FakeDiscord, refusal_of
from watcher.testing.chatfakes.events import chat_events, delivery_of


@dataclass
class Discord:
    """A running fake Discord with one webhook, and a notifier posting to it."""

    fake: FakeDiscord
    served: Served
    clock: JumpClock
    hook_id: str
    url: str
    notifier: DiscordNotifier


@pytest.fixture
async def discord() -> AsyncIterator[Discord]:
    forget_pacers()
    clock = JumpClock()
    fake = FakeDiscord(clock=clock)
    served = await serve(fake.app())
    hook_id, token = fake.add_webhook()
    url = f"{served.url}/api/webhooks/{hook_id}/{token}"
    notifier = DiscordNotifier("team-discord", {"webhook_url": Secret(url)}, clock=clock)
    async with aiohttp.ClientSession() as session:
        await notifier.start(session)
        yield Discord(fake, served, clock, hook_id, url, notifier)
        await notifier.close()
    await served.close()


async def deliver(notifier: DiscordNotifier, clock: JumpClock, event: dict[str, Any], id: str) -> int:
    """Send until delivered, waiting out every retryable answer the way the outbox would; the attempts."""
    for attempt in range(1, 20):
        try:
            await notifier.send(delivery_of(event, id=id))
            return attempt
        except RetryableDeliveryError as exc:
            await clock.sleep(exc.retry_after or 1.0)
    raise AssertionError("never delivered")


def huge_message() -> Message:
    """A message far beyond every Discord limit: long title, 60 long facts, huge sections and reasons."""
    long = "x" * 5000
    return Message(
        kind="contact_import.errored",
        subject="job",
        status="errored",
        severity=Severity.WARNING,
        title="🔥" * 400,
        summary="*_" * 3000,
        line="",
        facts=tuple((f"fact {i} " + "n" * 300, long) for i in range(60)),
        errors="9,999,999 rows rejected",
        reasons=tuple((i, "reason " + long) for i in range(50)),
        sections=tuple(Section(f"section {i}", tuple(long for _ in range(100)), more=5000) for i in range(8)),
        links=(Link("errors", "https://example.com/e.csv?token=abc)def", "short-lived link"),),
        footer="f" * 3000,
    )


@pytest.mark.parametrize(("name", "event"), chat_events(), ids=[name for name, _ in chat_events()])
async def test_every_event_kind_is_posted_as_an_embed(discord: Discord, name: str, event: dict[str, Any]) -> None:
    """Each outcome, a 500-job batch summary and an alert are accepted by the fake as one embed."""
    await discord.notifier.send(delivery_of(event))
    assert [] == discord.fake.refused
    assert 1 == len(discord.fake.messages)
    embed = discord.fake.messages[0]["embeds"][0]
    assert embed["title"] and embed["fields"]


async def test_the_batch_summary_links_its_status_page(discord: Discord) -> None:
    """The batch summary's `url` (the status page) is a link in the embed."""
    await discord.notifier.send(delivery_of(dict(chat_events())["batch of 500"]))
    links = [f["value"] for f in discord.fake.messages[0]["embeds"][0]["fields"] if f["name"] == "Links"]
    assert ["[Open the batch](https://watcher.example.com/batches/nightly-big)"] == links


def test_a_huge_message_is_clipped_within_every_limit() -> None:
    """Whatever the message, the payload passes every limit the fake checks, 6,000 in all included."""
    payload = discord_payload(huge_message(), username="u" * 200)
    assert refusal_of(payload) is None
    embed = payload["embeds"][0]
    total = units(embed["title"]) + units(embed["description"]) + units(embed["footer"]["text"])
    total += sum(units(f["name"]) + units(f["value"]) for f in embed["fields"])
    assert total <= 6000
    assert {"parse": []} == payload["allowed_mentions"]


async def test_a_huge_message_is_accepted_by_the_fake(discord: Discord) -> None:
    """An event with enormous labels and reasons still arrives (clipped), never refused."""
    event = dict(chat_events())["errored"]
    data = event["data"]
    data["labels"] = {f"label{i}": "v" * 900 for i in range(40)}
    data["errors"]["top_reasons"] = [{"reason": "r" * 3000, "count": i} for i in range(30)]
    await discord.notifier.send(delivery_of(event))
    assert [] == discord.fake.refused


def test_clipping_never_leaves_a_lone_escape() -> None:
    """A cut right after an escaping backslash drops it, so the ellipsis is not escaped away."""
    assert "ab…" == clip("ab\\*cdef", 4)
    assert units(clip("🔥" * 10, 5)) <= 5


def test_the_fake_refuses_what_discord_refuses() -> None:
    """Every embed limit, the 6,000 total, an empty message and a long username are refused."""
    assert 50006 == (refusal_of({"embeds": []}) or {})["code"]
    assert refusal_of({"content": "hi"}) is None
    too_long_title = {"embeds": [{"title": "t" * 257}]}
    assert "title" in json.dumps(refusal_of(too_long_title))
    fields = [{"name": "n", "value": "v" * 1025}]
    assert "value" in json.dumps(refusal_of({"embeds": [{"fields": fields}]}))
    many = [{"description": "d" * 4000} for _ in range(2)]
    assert "MAX_EMBED_SIZE_EXCEEDED" in json.dumps(refusal_of({"embeds": many}))
    assert refusal_of({"embeds": [{"title": "t"}] * 11}) is not None
    assert refusal_of({"content": "hi", "username": "u" * 81}) is not None
    assert refusal_of({"embeds": [{"fields": [{"name": "", "value": "v"}]}]}) is not None


async def test_a_burst_of_200_gets_at_most_one_429(discord: Discord) -> None:
    """200 outcomes sent at once are all posted, paced to the webhook's bucket, with at most one 429."""
    event = dict(chat_events())["failed"]
    started = discord.clock.now()
    sends = [deliver(discord.notifier, discord.clock, event, f"msg_{i:04}") for i in range(200)]
    await asyncio.gather(*sends)
    assert 200 == len(discord.fake.messages)
    assert discord.fake.rate_limited <= 1
    # As fast as the bucket allows: 5 per 2 s, so 200 take about 80 s of (virtual) time.
    assert discord.clock.now() - started < 85.0


async def test_a_429_is_honoured_with_its_fractional_retry_after(discord: Discord) -> None:
    """A 429 (the bucket used up by another sender) raises with Discord's `retry_after` and holds the pacer."""
    discord.fake.limit = 1
    async with aiohttp.ClientSession() as other:
        await other.post(discord.url, json={"content": "another replica"})
    discord.clock.advance(0.471)  # the body then says 1.529 s; Retry-After rounds up to 2
    with pytest.raises(RetryableDeliveryError) as caught:
        await discord.notifier.send(delivery_of(dict(chat_events())["failed"]))
    assert 1 == discord.fake.rate_limited
    assert caught.value.retry_after == pytest.approx(1.529, abs=0.002)
    assert discord.clock.now() + 1.529 == pytest.approx(discord.notifier.pacer().hold_until, abs=0.002)
    # The next send waits out the hold in the pacer instead of meeting a second 429.
    assert 1 == await deliver(discord.notifier, discord.clock, dict(chat_events())["failed"], "msg_again")
    assert 1 == discord.fake.rate_limited


async def test_a_deleted_webhook_is_final_and_not_hammered(discord: Discord) -> None:
    """A 404 is a permanent error, and the next sends to that webhook do not reach Discord for a while."""
    discord.fake.delete_webhook(discord.hook_id)
    event = dict(chat_events())["failed"]
    with pytest.raises(PermanentDeliveryError, match="deleted"):
        await discord.notifier.send(delivery_of(event))
    for i in range(5):
        with pytest.raises(PermanentDeliveryError):
            await discord.notifier.send(delivery_of(event, id=f"msg_{i}"))
    assert 1 == discord.fake.requests


async def test_a_wrong_token_is_final_and_masked(discord: Discord) -> None:
    """A 401 is permanent, and neither the error nor describe() shows the webhook token."""
    token = discord.url.rsplit("/", 1)[1]
    wrong = discord.url.replace(token, "wrong-token-0123456789")
    notifier = DiscordNotifier("d", {"webhook_url": Secret(wrong)}, clock=discord.clock)
    await notifier.start(discord.notifier.session)
    with pytest.raises(PermanentDeliveryError) as caught:
        await notifier.send(delivery_of(dict(chat_events())["failed"]))
    assert "wrong-token" not in str(caught.value)
    assert token not in json.dumps(discord.notifier.describe())
    assert "********" == discord.notifier.describe()["webhook_url"]


async def test_success_is_a_real_message(discord: Discord) -> None:
    """The post asks `wait=true`, so Discord answers with the message it created."""
    assert with_wait(discord.url + "?thread_id=7").endswith("?thread_id=7&wait=true")
    async with aiohttp.ClientSession() as client:
        answer = await client.post(with_wait(discord.url), json={"content": "hi"})
        assert 200 == answer.status
        assert (await answer.json())["id"]


async def test_a_refused_body_is_final_with_discords_reason() -> None:
    """A 400 is permanent and says which field Discord refused."""
    forget_pacers()
    url = "https://discord.com/api/webhooks/123/tok"
    notifier = DiscordNotifier("d", {"webhook_url": Secret(url)})
    body = {
        "code": 50035,
        "message": "Invalid Form Body",
        "errors": {
            "embeds": {
                "0": {
                    "title": {
                        "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 256 or fewer in length."}]
                    }
                }
            }
        },
    }
    async with aiohttp.ClientSession() as session:
        await notifier.start(session)
        with aioresponses() as mocked:
            mocked.post(with_wait(url), status=400, payload=body)
            with pytest.raises(PermanentDeliveryError, match=r"embeds\.0\.title: Must be 256"):
                await notifier.send(delivery_of(dict(chat_events())["failed"]))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"webhook_url": Secret("https://discord.com/api/webhooks/1/abc")}, None),
        ({"webhook_url": Secret("https://discordapp.com/api/v10/webhooks/1/abc")}, None),
        ({"webhook_url": Secret("http://127.0.0.1:9/api/webhooks/1/abc")}, None),
        ({"webhook_url": Secret("https://evil.example.com/api/webhooks/1/abc")}, "expected a Discord webhook URL"),
        ({"webhook_url": Secret("https://relay.internal/api/webhooks/1/abc"), "allow_private": True}, None),
        ({"webhook_url": Secret("http://discord.com/api/webhooks/1/abc")}, "must use https"),
        ({"webhook_url": Secret("https://discord.com/channels/1/2")}, "expected a webhook path"),
        ({"webhook_url": Secret("https://discord.com/api/webhooks/1/abc"), "username": "u" * 81}, "1 to 80"),
    ],
)
def test_check(settings: dict[str, Any], problem: str | None) -> None:
    """check() wants https to a Discord host (any host when loopback or allow_private) and a webhook path."""
    found = DiscordNotifier.check(settings)
    if problem is None:
        assert [] == found
    else:
        assert 1 == len(found)
        assert problem in found[0][1]
        assert "abc" not in found[0][1]


def test_event_text_cannot_inject_markdown_links() -> None:
    """A label like `[click](https://evil)` is shown as typed, not turned into a link."""
    payload = discord_payload(replace(huge_message(), facts=(("Labels", "[click](https://evil)"),)))
    values = [f["value"] for f in payload["embeds"][0]["fields"]]
    assert "\\[click\\](https://evil)" in values
