"""The PagerDuty notifier against a fake Events API v2 that enforces the documented fields and rate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.message import message_from_event
from watcher.notify.pacing import forget_pacers
from watcher.notify.pagerduty import PagerDutyNotifier, dedup_key, severity_map
from watcher.notify.samples import sample_alert, sample_event
from watcher.schema import Secret
from watcher.testing.chatfakes import JumpClock, Served, serve
from watcher.testing.chatfakes.events import chat_events, delivery_of
from watcher.testing.chatfakes.pagerduty import FakePagerDuty, problems_of

ROUTING_KEY = "R0123456789abcdef0123456789ABCDE"


@dataclass
class PagerDuty:
    """A running fake Events API and a way to make notifiers for it."""

    fake: FakePagerDuty
    served: Served
    clock: JumpClock
    session: aiohttp.ClientSession

    async def notifier(self, **settings: Any) -> PagerDutyNotifier:
        chosen = {"routing_key": Secret(ROUTING_KEY), "events_url": f"{self.served.url}/v2/enqueue", **settings}
        notifier = PagerDutyNotifier("on-call", chosen, clock=self.clock)
        await notifier.start(self.session)
        return notifier


@pytest.fixture
async def pagerduty() -> AsyncIterator[PagerDuty]:
    forget_pacers()
    clock = JumpClock()
    fake = FakePagerDuty(clock=clock)
    served = await serve(fake.app())
    async with aiohttp.ClientSession() as session:
        yield PagerDuty(fake, served, clock, session)
    await served.close()


async def deliver(notifier: PagerDutyNotifier, clock: JumpClock, event: dict[str, Any], id: str) -> int:
    """Send until delivered, waiting out every retryable answer the way the outbox would; the attempts."""
    for attempt in range(1, 20):
        try:
            await notifier.send(delivery_of(event, id=id))
            return attempt
        except RetryableDeliveryError as exc:
            await clock.sleep(exc.retry_after or 1.0)
    raise AssertionError("never delivered")


@pytest.mark.parametrize(("name", "event"), chat_events(), ids=[name for name, _ in chat_events()])
async def test_every_event_kind_triggers_an_accepted_event(
    pagerduty: PagerDuty, name: str, event: dict[str, Any]
) -> None:
    """Each outcome, a 500-job batch summary and an alert are accepted by the fake as a trigger."""
    notifier = await pagerduty.notifier()
    await notifier.send(delivery_of(event))
    assert [] == pagerduty.fake.refused
    assert ["trigger"] == [e["event_action"] for e in pagerduty.fake.events]


async def test_the_trigger_carries_counts_reasons_and_the_status_page(pagerduty: PagerDuty) -> None:
    """A batch summary's custom_details hold its counts and error reasons, and its links the status page."""
    notifier = await pagerduty.notifier()
    await notifier.send(delivery_of(dict(chat_events())["batch of 500"]))
    sent = pagerduty.fake.events[0]
    details = sent["payload"]["custom_details"]
    assert "500" == details["Jobs"]
    assert details["error_reasons"][0]["reason"] == "invalid email"
    assert "Not completed" in details
    assert [{"href": "https://watcher.example.com/batches/nightly-big", "text": "Open the batch"}] == sent["links"]
    assert "import-watcher:batch:nightly-big" == sent["dedup_key"]
    assert "critical" == sent["payload"]["severity"]


@pytest.mark.parametrize(
    ("outcome", "severity"),
    [
        ("failed", "critical"),
        ("timed_out", "error"),
        ("errored", "warning"),
        ("not_found", "warning"),
        ("completed", "info"),
    ],
)
async def test_severity_follows_the_outcome(pagerduty: PagerDuty, outcome: str, severity: str) -> None:
    """Defaults: failed critical, timed_out error, errored and not_found warning, completed info."""
    notifier = await pagerduty.notifier()
    await notifier.send(delivery_of(sample_event(outcome)))
    assert severity == pagerduty.fake.events[0]["payload"]["severity"]


async def test_the_severity_mapping_can_be_changed(pagerduty: PagerDuty) -> None:
    """`severity: {errored: error}` changes that outcome only."""
    notifier = await pagerduty.notifier(severity=severity_map({"errored": "error"}))
    await notifier.send(delivery_of(sample_event("errored")))
    await notifier.send(delivery_of(sample_event("failed")))
    assert ["error", "critical"] == [e["payload"]["severity"] for e in pagerduty.fake.events]


def test_a_severity_mapping_names_outcomes_and_pagerduty_severities() -> None:
    """An unknown outcome or a severity PagerDuty does not know is a config error."""
    with pytest.raises(ValueError, match="unknown outcome"):
        severity_map({"exploded": "critical"})
    with pytest.raises(ValueError, match="must be one of"):
        severity_map({"failed": "fatal"})


async def test_a_retry_never_opens_a_second_incident(pagerduty: PagerDuty) -> None:
    """After a 503 and a lost answer, the same delivery sent again hits the one alert of its job."""
    notifier = await pagerduty.notifier()
    event = sample_event("failed")
    pagerduty.fake.fail_next = 1
    assert 2 == await deliver(notifier, pagerduty.clock, event, "msg_retry")
    await notifier.send(delivery_of(event, id="msg_retry"))  # the answer was lost: sent once more
    assert 1 == len(pagerduty.fake.alerts)
    ((key, alert),) = pagerduty.fake.alerts.items()
    assert f"import-watcher:job:{event['data']['job_id']}" == key
    assert 2 == alert.triggers
    assert {key} == {e["dedup_key"] for e in pagerduty.fake.events}


def test_dedup_keys_name_what_the_event_is_about() -> None:
    """Jobs, batches and alerts get their own stable keys within PagerDuty's 255 characters."""
    failed, stuck = sample_event("failed"), sample_event("stuck")
    assert dedup_key(message_from_event(failed)) == dedup_key(message_from_event(stuck))
    dead = dedup_key(message_from_event(sample_alert("delivery_dead")))
    assert "import-watcher:alert:delivery_dead:team-slack" == dead
    batch = dedup_key(message_from_event(sample_event("stuck batch")))
    assert batch == dedup_key(message_from_event(sample_event("batch_finished")))
    assert all(len(dedup_key(message_from_event(e))) <= 255 for _, e in chat_events())


async def test_a_completed_job_resolves_its_alert(pagerduty: PagerDuty) -> None:
    """With `resolve: true`, the job's completion resolves the alert its failure opened."""
    notifier = await pagerduty.notifier(resolve=True)
    await notifier.send(delivery_of(sample_event("timed_out")))
    await notifier.send(delivery_of(sample_event("completed"), id="msg_done"))
    assert ["trigger", "resolve"] == [e["event_action"] for e in pagerduty.fake.events]
    assert [True] == [alert.resolved for alert in pagerduty.fake.alerts.values()]


async def test_without_resolve_a_completion_is_an_info_trigger(pagerduty: PagerDuty) -> None:
    """With `resolve: false` (the default), a routed completion is a trigger of severity info."""
    notifier = await pagerduty.notifier()
    await notifier.send(delivery_of(sample_event("completed")))
    assert [("trigger", "info")] == [(e["event_action"], e["payload"]["severity"]) for e in pagerduty.fake.events]


async def test_key_accepted_resolves_key_refused_or_is_skipped(pagerduty: PagerDuty) -> None:
    """`key_accepted` resolves the `key_refused` alert with resolve on, and sends nothing without it."""
    quiet = await pagerduty.notifier()
    await quiet.send(delivery_of(sample_alert("key_accepted")))
    assert 0 == pagerduty.fake.requests
    notifier = await pagerduty.notifier(resolve=True)
    await notifier.send(delivery_of(sample_alert("key_refused")))
    await notifier.send(delivery_of(sample_alert("key_accepted"), id="msg_ok"))
    assert ["trigger", "resolve"] == [e["event_action"] for e in pagerduty.fake.events]
    assert [True] == [alert.resolved for alert in pagerduty.fake.alerts.values()]


async def test_a_burst_of_200_gets_at_most_one_429(pagerduty: PagerDuty) -> None:
    """200 failures at once all arrive, paced to 120 a minute per key, with at most one 429."""
    notifier = await pagerduty.notifier()
    started = pagerduty.clock.now()
    sends = [deliver(notifier, pagerduty.clock, sample_event("failed"), f"msg_{i:04}") for i in range(200)]
    await asyncio.gather(*sends)
    assert 200 == len(pagerduty.fake.events)
    assert pagerduty.fake.throttled <= 1
    assert pagerduty.clock.now() - started < 105.0


async def test_a_429_and_a_5xx_are_retried(pagerduty: PagerDuty) -> None:
    """A throttled event and an outage raise retryable errors; the pacer holds after the 429."""
    pagerduty.fake.limit = 1
    notifier = await pagerduty.notifier()
    async with aiohttp.ClientSession() as other:
        body = {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "x"}
        await other.post(f"{pagerduty.served.url}/v2/enqueue", json=body)
    with pytest.raises(RetryableDeliveryError, match="429"):
        await notifier.send(delivery_of(sample_event("failed")))
    assert pagerduty.clock.now() < notifier.pacer().hold_until
    pagerduty.fake.limit, pagerduty.fake.fail_next = 120, 1
    pagerduty.clock.advance(60.0)
    with pytest.raises(RetryableDeliveryError, match="503"):
        await notifier.send(delivery_of(sample_event("failed")))


async def test_an_invalid_event_is_final_and_the_key_is_masked(pagerduty: PagerDuty) -> None:
    """A 400 (a key of the wrong length) is permanent, says why, and never shows the key."""
    wrong = "short-key-that-is-secret"
    notifier = await pagerduty.notifier(routing_key=Secret(wrong))
    with pytest.raises(PermanentDeliveryError, match="routing_key") as caught:
        await notifier.send(delivery_of(sample_event("failed")))
    assert wrong not in str(caught.value)
    assert "********" == notifier.describe()["routing_key"]
    assert wrong not in json.dumps(notifier.describe())


def test_the_fake_refuses_what_pagerduty_refuses() -> None:
    """Missing payload fields, a bad severity, a long dedup_key and a resolve without key are refused."""
    good = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "s", "source": "x", "severity": "critical"},
    }
    assert [] == problems_of(good)
    assert problems_of({**good, "payload": {"summary": "s", "source": "x", "severity": "fatal"}})
    assert problems_of({**good, "payload": {"summary": "s" * 1025, "source": "x", "severity": "info"}})
    assert problems_of({**good, "payload": {"summary": "s", "severity": "info"}})
    assert problems_of({**good, "dedup_key": "k" * 256})
    assert problems_of({"routing_key": ROUTING_KEY, "event_action": "resolve"})
    assert problems_of({**good, "event_action": "explode"})
    assert problems_of({**good, "routing_key": "x" * 31})


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"routing_key": Secret(ROUTING_KEY)}, None),
        ({"routing_key": Secret("abc")}, "routing_key"),
        ({"routing_key": Secret(ROUTING_KEY), "events_url": "https://events.eu.pagerduty.com/v2/enqueue"}, None),
        ({"routing_key": Secret(ROUTING_KEY), "events_url": "http://127.0.0.1:9/v2/enqueue"}, None),
        ({"routing_key": Secret(ROUTING_KEY), "events_url": "https://evil.example.com/v2/enqueue"}, "events_url"),
        ({"routing_key": Secret(ROUTING_KEY), "events_url": "http://events.pagerduty.com/v2/enqueue"}, "events_url"),
    ],
)
def test_check(settings: dict[str, Any], field: str | None) -> None:
    """check() wants a 32-character key and PagerDuty's Events API (any host when loopback), never echoing the key."""
    found = PagerDutyNotifier.check(settings)
    assert ([] if field is None else [field]) == [name for name, _ in found]
    assert all("abc" not in message for _, message in found)
