"""The Teams notifier against a fake Workflows webhook that validates cards like Teams does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.chat import BUDGETS
from watcher.notify.message import Link, Message, Section, Severity, message_from_event
from watcher.notify.pacing import forget_pacers
from watcher.notify.samples import sample_event
from watcher.notify.teams import TeamsNotifier, adaptive_card, build_body
from watcher.schema import Secret
from watcher.testing.chatfakes_b import FakeTeams, ScriptedAnswer, VirtualClock, deliver_burst, running
from watcher.testing.chatfakes_b.events import big_batch_event, every_event
from watcher.testing.chatfakes_b.teams import MAX_BODY_BYTES, body_problems, card_problems

SIG = "s3cr3t-signature-value"
PATH = "/workflows/0a1b2c/triggers/manual/paths/invoke"


@pytest.fixture(autouse=True)
def _fresh_pacers() -> None:
    forget_pacers()


@pytest.fixture
async def teams(session: aiohttp.ClientSession) -> AsyncIterator[tuple[FakeTeams, TeamsNotifier]]:
    """A fake Workflows webhook and a started notifier posting to it, on one virtual clock."""
    fake = FakeTeams(clock=VirtualClock())
    async with running(fake.app()) as base:
        url = f"{base}{PATH}?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}"
        notifier = TeamsNotifier("team-teams", {"url": Secret(url)}, clock=fake.clock)
        await notifier.start(session)
        yield fake, notifier


def huge_event() -> dict[str, Any]:
    event = sample_event("errored")
    data = event["data"]
    data["labels"] = {f"label{i}": "välue-" * 40 for i in range(400)}
    data["errors"] = {"rows": 10_000, "top_reasons": [{"reason": "bad " * 3000, "count": 5000} for _ in range(10)]}
    data["results"]["errors_url"] = "https://example.com/e.csv?x=" + "a" * 5000
    return event


@pytest.mark.parametrize(("name", "event"), every_event(), ids=[name for name, _ in every_event()])
async def test_every_event_is_accepted(teams, make_delivery, name: str, event: dict[str, Any]) -> None:
    """Each outcome, the 500-job batch summary, stuck warnings, the digest and alerts are cards Teams takes."""
    fake, notifier = teams
    await notifier.send(make_delivery(event))
    assert [] == fake.rejected
    card = fake.accepted[0]["attachments"][0]["content"]
    assert "1.4" == card["version"]
    assert message_from_event(event).title in card["body"][0]["items"][0]["text"]


async def test_202_with_an_empty_body_is_success(teams, make_delivery) -> None:
    """The trigger's 202 Accepted with nothing in the body is a delivered notification."""
    fake, notifier = teams
    fake.script.append(ScriptedAnswer(202))
    await notifier.send(make_delivery(sample_event("failed")))
    assert 1 == len(fake.queries)


async def test_429_is_retryable_with_its_retry_after_and_holds_later_sends(teams, make_delivery) -> None:
    """A 429 is never final: it carries Retry-After, and the next send waits that long."""
    fake, notifier = teams
    fake.script.append(ScriptedAnswer(429, '{"error":{"code":"x","message":"slow down"}}', {"Retry-After": "7"}))
    started = fake.clock.now()
    with pytest.raises(RetryableDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("failed")))
    await notifier.send(make_delivery(sample_event("failed")))
    assert 7.0 == caught.value.retry_after
    assert 7.0 <= fake.clock.now() - started
    assert 1 == len(fake.accepted)


async def test_5xx_is_retryable(teams, make_delivery) -> None:
    """A 502 from the flow's front door is worth another try."""
    fake, notifier = teams
    fake.script.append(ScriptedAnswer(502, "Bad Gateway"))
    with pytest.raises(RetryableDeliveryError):
        await notifier.send(make_delivery(sample_event("completed")))


async def test_400_is_final_and_says_why(teams, make_delivery) -> None:
    """A 400 is permanent and its message names the problem the flow reported."""
    fake, notifier = teams
    body = json.dumps({"error": {"code": "InvalidRequestContent", "message": "card has no body"}})
    fake.script.append(ScriptedAnswer(400, body))
    with pytest.raises(PermanentDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("completed")))
    assert "InvalidRequestContent: card has no body" in str(caught.value)


async def test_secrets_are_masked_in_describe_errors_and_logs(teams, make_delivery) -> None:
    """The URL's `sig` never appears in describe(), in an error that echoes the URL, or in logs."""
    fake, notifier = teams
    echoed = f"bad request to {notifier.settings['url'].reveal()}"
    fake.script.append(ScriptedAnswer(400, echoed))
    with capture_logs() as logs, pytest.raises(PermanentDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("completed")))
    assert SIG not in json.dumps(notifier.describe())
    assert SIG not in str(caught.value)
    assert SIG not in repr(logs)
    assert "http://127.0.0.1" in notifier.describe()["url"]


async def test_a_burst_of_200_gets_at_most_one_429(teams, make_delivery) -> None:
    """200 outcomes at once are paced to the webhook's rate: every one delivered, at most one 429."""
    fake, notifier = teams
    deliveries = [make_delivery(sample_event("errored"), id=f"msg_{i:04}") for i in range(200)]
    await deliver_burst(notifier, deliveries, fake.clock)
    assert 200 == len(fake.accepted)
    assert fake.throttled <= 1


def test_a_huge_message_shrinks_to_the_size_limit() -> None:
    """Thousands of labels and huge reasons still give a valid card under 28 KB."""
    body = build_body(message_from_event(huge_event()))
    assert len(body) <= MAX_BODY_BYTES
    assert [] == body_problems(body)


def test_huge_facts_and_sections_shrink_to_the_size_limit() -> None:
    """Forty long multi-byte facts and six long sections still give a card under 28 KB."""
    message = Message(
        kind="t",
        subject="s",
        status="failed",
        severity=Severity.ERROR,
        title="Ü" * 500,
        summary="é" * 5000,
        line="L",
        facts=tuple((f"fact {i}", "ß" * 3000) for i in range(40)),
        sections=tuple(Section(f"section {i}", tuple("ö" * 900 for _ in range(50)), more=10) for i in range(8)),
        errors="1 rows rejected",
        reasons=tuple((i, "ä" * 900) for i in range(10)),
    )
    body = build_body(message)
    assert len(body) <= MAX_BODY_BYTES
    assert [] == body_problems(body)


def test_sections_shrink_before_facts() -> None:
    """When the sections make a card too large they are cut first; the facts stay."""
    long_lines = tuple("x" * 1500 for _ in range(10))
    message = Message(
        kind="t",
        subject="s",
        status="failed",
        severity=Severity.ERROR,
        title="T",
        summary="S",
        line="L",
        facts=tuple((f"fact {i}", "value") for i in range(30)),
        sections=tuple(Section(f"section {i}", long_lines) for i in range(6)),
    )
    card = json.loads(build_body(message))["attachments"][0]["content"]
    facts = next(item for item in card["body"] if item["type"] == "FactSet")["facts"]
    assert 30 == len(facts)
    assert len(json.dumps(adaptive_card(message, BUDGETS[0])).encode()) > MAX_BODY_BYTES


def test_cards_use_only_what_teams_renders() -> None:
    """Severity colours, the table and links stay within Adaptive Cards 1.4."""
    message = Message(
        kind="t",
        subject="s",
        status="failed",
        severity=Severity.CRITICAL,
        title="T",
        summary="S",
        line="L",
        sections=(Section("Jobs", ("a", "b"), ("Job", "Outcome"), (("a", "failed"), ("b", "ok")), more=3),),
        links=(Link("Open", "https://example.com/x"), Link("Too long", "https://e.com/" + "y" * 3000)),
    )
    card = adaptive_card(message, BUDGETS[0])
    assert [] == card_problems(card)
    assert [{"type": "Action.OpenUrl", "title": "Open", "url": "https://example.com/x"}] == card["actions"]
    assert "attention" == card["body"][0]["style"]


CHECKS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("logic.azure.com", {"url": "https://prod-01.westeurope.logic.azure.com/workflows/x?sig=a"}, []),
    ("powerplatform", {"url": "https://default1.ab.environment.api.powerplatform.com/powerautomate/x?sig=a"}, []),
    ("loopback fake", {"url": "http://127.0.0.1:8080/x"}, []),
    ("other host", {"url": "https://example.com/hook"}, ["url"]),
    ("plain http", {"url": "http://prod-01.westeurope.logic.azure.com/x"}, ["url"]),
    ("lookalike", {"url": "https://evil-logic.azure.com.example.net/x"}, ["url"]),
    ("private address", {"url": "https://10.0.0.5/hook", "allow_private": True}, ["url"]),
]


@pytest.mark.parametrize(("name", "settings", "keys"), CHECKS, ids=[row[0] for row in CHECKS])
def test_check_accepts_workflow_hosts_only(name: str, settings: dict[str, Any], keys: list[str]) -> None:
    """Only Workflows hosts (or a loopback fake) over https pass `check`."""
    problems = TeamsNotifier.check({**settings, "url": Secret(settings["url"])})
    assert keys == [key for key, _ in problems]


async def test_connection_refused_is_retryable_without_the_url(session, make_delivery) -> None:
    """Nothing listening is a retryable error whose text holds no part of the URL."""
    from tests.helpers import free_port

    notifier = TeamsNotifier("t", {"url": Secret(f"http://127.0.0.1:{free_port()}/x?sig={SIG}")}, clock=VirtualClock())
    await notifier.start(session)
    with pytest.raises(RetryableDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("completed")))
    assert SIG not in str(caught.value)


def test_big_batch_renders_within_limits() -> None:
    """The 500-job batch summary fits on the first budget or shrinks, never over the limit."""
    assert len(build_body(message_from_event(big_batch_event()))) <= MAX_BODY_BYTES


def _card_body(**card: Any) -> bytes:
    content = {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "x"}], **card}
    return json.dumps({"type": "message", "attachments": [{"contentType": CARD_TYPE, "content": content}]}).encode()


CARD_TYPE = "application/vnd.microsoft.card.adaptive"
FAKE_REFUSES: list[tuple[str, bytes]] = [
    ("version 1.5", _card_body(version="1.5")),
    ("Table element", _card_body(body=[{"type": "Table", "columns": []}])),
    ("TextBlock without text", _card_body(body=[{"type": "TextBlock"}])),
    ("not a message", json.dumps({"type": "AdaptiveCard", "body": []}).encode()),
    ("MessageCard", json.dumps({"type": "message", "attachments": [{"contentType": "x", "content": {}}]}).encode()),
    ("too large", _card_body(body=[{"type": "TextBlock", "text": "x" * 30_000}])),
    ("relative link", _card_body(actions=[{"type": "Action.OpenUrl", "title": "x", "url": "/x"}])),
]


@pytest.mark.parametrize(("name", "raw"), FAKE_REFUSES, ids=[row[0] for row in FAKE_REFUSES])
def test_the_fake_refuses_what_teams_refuses(name: str, raw: bytes) -> None:
    """The fake's rules catch each documented way a Workflows post fails."""
    assert body_problems(raw)
    assert [] == body_problems(_card_body())


async def test_a_title_template_replaces_the_heading(session, make_delivery) -> None:
    """A `title` template is rendered into the card's heading, as for Slack."""
    fake = FakeTeams(clock=VirtualClock())
    async with running(fake.app()) as base:
        settings = {"url": Secret(f"{base}{PATH}?sig={SIG}")}
        notifier = TeamsNotifier("t", settings, templates={"title": "Import {{ data.job_id }}"}, clock=fake.clock)
        await notifier.start(session)
        await notifier.send(make_delivery(sample_event("failed")))
    heading = fake.accepted[0]["attachments"][0]["content"]["body"][0]["items"][0]["text"]
    assert f"Import {sample_event('failed')['data']['job_id']}" == heading
