"""The Google Chat notifier against a fake incoming webhook that validates cardsV2 like Google does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.google_chat import REPLY_OPTION, GoogleChatNotifier, build_body, thread_key, threaded_url
from watcher.notify.message import Message, Section, Severity, message_from_event
from watcher.notify.pacing import forget_pacers
from watcher.notify.samples import SAMPLE_BATCH, SAMPLE_JOB, sample_event
from watcher.schema import Secret
from watcher.testing.chatfakes_b import FakeGoogleChat, ScriptedAnswer, VirtualClock, deliver_burst, running
from watcher.testing.chatfakes_b.events import big_batch_event, every_event
from watcher.testing.chatfakes_b.google_chat import MAX_BODY_BYTES, message_problems

KEY = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"
TOKEN = "tok-secret-value-123"
Start = Callable[..., Any]


@pytest.fixture(autouse=True)
def _fresh_pacers() -> None:
    forget_pacers()


@pytest.fixture
async def chat(session: aiohttp.ClientSession) -> AsyncIterator[tuple[FakeGoogleChat, Start]]:
    """A fake Google Chat and a factory of started notifiers posting to space AAAA on one virtual clock."""
    fake = FakeGoogleChat(clock=VirtualClock())
    async with running(fake.app()) as base:

        async def start(space: str = "AAAA", **settings: Any) -> GoogleChatNotifier:
            url = f"{base}/v1/spaces/{space}/messages?key={KEY}&token={TOKEN}"
            notifier = GoogleChatNotifier("team-chat", {"webhook_url": Secret(url), **settings}, clock=fake.clock)
            await notifier.start(session)
            return notifier

        yield fake, start


@pytest.mark.parametrize(("name", "event"), every_event(), ids=[name for name, _ in every_event()])
async def test_every_event_is_accepted(chat, make_delivery, name: str, event: dict[str, Any]) -> None:
    """Each outcome, the 500-job batch summary, stuck warnings, the digest and alerts are cards Google takes."""
    fake, start = chat
    notifier = await start()
    await notifier.send(make_delivery(event))
    assert [] == fake.rejected
    body = fake.accepted[0]
    assert message_from_event(event).heading in body["text"]
    assert message_from_event(event).heading == body["cardsV2"][0]["card"]["header"]["title"]


async def test_batch_events_and_batched_jobs_share_the_batch_thread(chat, make_delivery) -> None:
    """With thread: batch a batch summary and a stuck warning of its jobs land in one thread named by the batch."""
    fake, start = chat
    notifier = await start()
    await notifier.send(make_delivery(sample_event("batch_finished")))
    await notifier.send(make_delivery(sample_event("stuck batch")))
    await notifier.send(make_delivery(sample_event("completed")))  # no batch: a thread of its own
    assert [SAMPLE_BATCH, SAMPLE_BATCH] == [b["thread"]["threadKey"] for b in fake.accepted[:2]]
    assert "thread" not in fake.accepted[2]
    assert fake.thread_names[0] == fake.thread_names[1] != fake.thread_names[2]
    assert [REPLY_OPTION, REPLY_OPTION] == [q.get("messageReplyOption") for q in fake.queries[:2]]
    assert "messageReplyOption" not in fake.queries[2]


async def test_the_webhook_credentials_stay_in_the_query(chat, make_delivery) -> None:
    """Adding messageReplyOption keeps the webhook's key and token as they were."""
    fake, start = chat
    notifier = await start()
    await notifier.send(make_delivery(sample_event("batch_finished")))
    assert {"key": KEY, "token": TOKEN, "messageReplyOption": REPLY_OPTION} == fake.queries[0]


def test_thread_keys_per_mode() -> None:
    """batch: the batch name; job: the job id (else the batch); none: no thread."""
    job_event, batch_event = sample_event("completed"), sample_event("batch_finished")
    stuck_in_batch = {**sample_event("stuck"), "data": {**sample_event("stuck")["data"], "batch": "b1"}}
    assert (None, SAMPLE_BATCH, "b1") == tuple(thread_key(e, "batch") for e in (job_event, batch_event, stuck_in_batch))
    assert (SAMPLE_JOB, SAMPLE_BATCH, SAMPLE_JOB) == tuple(
        thread_key(e, "job") for e in (job_event, batch_event, stuck_in_batch)
    )
    assert (None, None) == (thread_key(batch_event, "none"), thread_key(stuck_in_batch, "none"))


async def test_thread_job_threads_by_job_id(chat, make_delivery) -> None:
    """With thread: job two messages about one job share its thread."""
    fake, start = chat
    notifier = await start(thread="job")
    await notifier.send(make_delivery(sample_event("stuck")))
    await notifier.send(make_delivery(sample_event("failed")))
    assert [SAMPLE_JOB, SAMPLE_JOB] == [b["thread"]["threadKey"] for b in fake.accepted]
    assert fake.thread_names[0] == fake.thread_names[1]


async def test_thread_none_never_threads(chat, make_delivery) -> None:
    """With thread: none there is no thread key and no reply option."""
    fake, start = chat
    notifier = await start(thread="none")
    await notifier.send(make_delivery(sample_event("batch_finished")))
    assert "thread" not in fake.accepted[0]
    assert "messageReplyOption" not in fake.queries[0]


async def test_429_backs_off_longer_each_time_and_resets_on_success(chat, make_delivery) -> None:
    """A 429 without a hint waits 2 s, then 4 s; a success resets the backoff."""
    fake, start = chat
    notifier = await start()
    quota = '{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}'
    fake.script += [ScriptedAnswer(429, quota), ScriptedAnswer(429, quota)]
    delivery = make_delivery(sample_event("failed"))
    waits = []
    for _ in range(2):
        with pytest.raises(RetryableDeliveryError) as caught:
            await notifier.send(delivery)
        waits.append(caught.value.retry_after)
    await notifier.send(delivery)
    fake.script.append(ScriptedAnswer(429, quota))
    with pytest.raises(RetryableDeliveryError) as again:
        await notifier.send(delivery)
    assert [2.0, 4.0] == waits
    assert 2.0 == again.value.retry_after


async def test_400_is_final_with_googles_message(chat, make_delivery) -> None:
    """A 400 is permanent and carries Google's error message."""
    fake, start = chat
    notifier = await start()
    error = {"error": {"code": 400, "message": "Invalid JSON payload", "status": "INVALID_ARGUMENT"}}
    fake.script.append(ScriptedAnswer(400, json.dumps(error)))
    with pytest.raises(PermanentDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("completed")))
    assert "INVALID_ARGUMENT: Invalid JSON payload" in str(caught.value)


async def test_5xx_is_retryable(chat, make_delivery) -> None:
    """A 503 is worth another try."""
    fake, start = chat
    notifier = await start()
    fake.script.append(ScriptedAnswer(503, "unavailable"))
    with pytest.raises(RetryableDeliveryError):
        await notifier.send(make_delivery(sample_event("completed")))


async def test_a_burst_of_200_gets_at_most_one_429(chat, make_delivery) -> None:
    """200 outcomes to one space are paced under 60 a minute: every one delivered, at most one 429."""
    fake, start = chat
    notifier = await start()
    deliveries = [make_delivery(sample_event("errored"), id=f"msg_{i:04}") for i in range(200)]
    await deliver_burst(notifier, deliveries, fake.clock)
    assert 200 == len(fake.accepted)
    assert fake.throttled <= 1


async def test_two_notifiers_on_one_space_share_its_pace(chat, make_delivery) -> None:
    """Two webhooks into one space share its 60 a minute: together still no 429 beyond the first."""
    fake, start = chat
    first, second = await start(), await start()
    second.settings["webhook_url"] = Secret(second.settings["webhook_url"].reveal().replace(TOKEN, "other-token"))
    deliveries = [make_delivery(sample_event("errored"), id=f"msg_{i:04}") for i in range(70)]
    await asyncio.gather(
        deliver_burst(first, deliveries[:35], fake.clock), deliver_burst(second, deliveries[35:], fake.clock)
    )
    assert 70 == len(fake.accepted)
    assert fake.throttled <= 1


async def test_secrets_are_masked_in_describe_errors_and_logs(chat, make_delivery) -> None:
    """The key and token never appear in describe(), in an error echoing the URL, or in logs."""
    fake, start = chat
    notifier = await start()
    fake.script.append(ScriptedAnswer(400, f"bad: {notifier.settings['webhook_url'].reveal()}"))
    with capture_logs() as logs, pytest.raises(PermanentDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("batch_finished")))
    for secret in (KEY, TOKEN):
        assert secret not in json.dumps(notifier.describe())
        assert secret not in str(caught.value)
        assert secret not in repr(logs)


def test_a_huge_message_stays_under_32000_bytes() -> None:
    """Long multi-byte facts, sections and reasons still give a valid message under the limit."""
    message = Message(
        kind="t",
        subject="s",
        status="failed",
        severity=Severity.ERROR,
        title="<b>" * 300,
        summary="é" * 5000,
        line="L",
        facts=tuple((f"fact {i}", "ß<&>" * 800) for i in range(90)),
        sections=tuple(Section(f"section {i}", tuple("ö" * 900 for _ in range(50)), more=10) for i in range(8)),
        errors="1 rows rejected",
        reasons=tuple((i, "ä" * 900) for i in range(10)),
    )
    body = build_body(message, thread="b" * 4000)
    assert len(body) < MAX_BODY_BYTES
    assert [] == message_problems(body)
    widgets = sum(len(s["widgets"]) for s in json.loads(body)["cardsV2"][0]["card"]["sections"])
    assert widgets <= 100


def test_event_text_is_escaped_in_cards() -> None:
    """An event's `<` and `&` reach the card as text, never as Google's card HTML."""
    message = Message(
        kind="t", subject="s", status="failed", severity=Severity.ERROR, title="T", summary="<b>x</b> & y", line="L"
    )
    card: Mapping[str, Any] = json.loads(build_body(message))["cardsV2"][0]["card"]
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in card["sections"][0]["widgets"][0]["textParagraph"]["text"]


def test_threaded_url_replaces_an_existing_reply_option() -> None:
    """A URL that already names a reply option gets exactly one, ours."""
    url = threaded_url("https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t&messageReplyOption=X")
    assert "https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t&messageReplyOption=" + REPLY_OPTION == url


CHECKS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("google", "https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t", {}, []),
    ("loopback fake", "http://127.0.0.1:9/v1/spaces/A/messages", {}, []),
    ("other host", "https://chat.example.com/v1/spaces/A/messages", {}, ["webhook_url"]),
    ("plain http", "http://chat.googleapis.com/v1/spaces/A/messages", {}, ["webhook_url"]),
]


@pytest.mark.parametrize(("name", "url", "extra", "keys"), CHECKS, ids=[row[0] for row in CHECKS])
def test_check_accepts_google_chat_only(name: str, url: str, extra: dict[str, Any], keys: list[str]) -> None:
    """Only chat.googleapis.com (or a loopback fake) over https pass `check`."""
    assert keys == [key for key, _ in GoogleChatNotifier.check({"webhook_url": Secret(url), **extra})]


def test_big_batch_fits() -> None:
    """The 500-job batch summary is a valid message under the limit."""
    body = build_body(message_from_event(big_batch_event()), thread="nightly-big")
    assert [] == message_problems(body)


def _message(**body: Any) -> bytes:
    card = {"header": {"title": "t"}, "sections": [{"widgets": [{"textParagraph": {"text": "x"}}]}]}
    return json.dumps({"text": "x", "cardsV2": [{"cardId": "c", "card": card}], **body}).encode()


FAKE_REFUSES: list[tuple[str, bytes]] = [
    ("empty", json.dumps({"text": ""}).encode()),
    ("cardsV2 not a list", _message(cardsV2={"card": {}})),
    ("card without sections", _message(cardsV2=[{"cardId": "c", "card": {"header": {"title": "t"}}}])),
    ("unknown widget", _message(cardsV2=[{"cardId": "c", "card": {"sections": [{"widgets": [{"html": "x"}]}]}}])),
    ("32,000 bytes", _message(text="x" * 32_000)),
    ("thread key too long", _message(thread={"threadKey": "k" * 4001})),
]


@pytest.mark.parametrize(("name", "raw"), FAKE_REFUSES, ids=[row[0] for row in FAKE_REFUSES])
def test_the_fake_refuses_what_google_refuses(name: str, raw: bytes) -> None:
    """The fake's rules catch each documented way a Google Chat message is refused."""
    assert message_problems(raw)
    assert [] == message_problems(_message())
