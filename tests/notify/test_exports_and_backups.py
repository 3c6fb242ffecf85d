"""Export and backup events through every notifier, each against its fake: accepted, and the
export's presigned download URLs shown only where the target is private to the team."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.helpers import SECRET, WebhookReceiver
from watcher.errors import RetryableDeliveryError
from watcher.models import Delivery
from watcher.notify import render
from watcher.notify.apprise import AppriseNotifier, notify_type_name
from watcher.notify.base import BaseNotifier
from watcher.notify.console import ConsoleNotifier
from watcher.notify.discord import DiscordNotifier
from watcher.notify.email import EmailNotifier
from watcher.notify.google_chat import GoogleChatNotifier, thread_key
from watcher.notify.mattermost import MattermostNotifier
from watcher.notify.message import Severity, message_from_event
from watcher.notify.pacing import forget_pacers
from watcher.notify.pagerduty import PagerDutyNotifier, dedup_key
from watcher.notify.samples import BACKUP_SAMPLES, EXPORT_SAMPLES, SAMPLE_EXPORT, sample_event
from watcher.notify.slack import SlackNotifier
from watcher.notify.teams import TeamsNotifier
from watcher.notify.webhook import WebhookNotifier
from watcher.schema import Secret
from watcher.testing.chatfakes import JumpClock, serve
from watcher.testing.chatfakes.discord import FakeDiscord
from watcher.testing.chatfakes.pagerduty import FakePagerDuty
from watcher.testing.chatfakes_b import FakeGoogleChat, FakeMattermost, FakeTeams, VirtualClock, running

from .test_slack import FakeSlack

NAMES = (*EXPORT_SAMPLES, *BACKUP_SAMPLES)
EXPIRY = "2026-11-30 10:00 UTC"
#: What only a holder of the presigned link knows: never in a chat message.
SIGNATURE = "X-Amz-Signature"


def events() -> list[dict[str, Any]]:
    return [sample_event(name) for name in NAMES]


def delivery(event: dict[str, Any], index: int) -> Delivery:
    return Delivery(id=f"msg_export{index:04}", notifier="n", event=event, created_at=0.0, next_attempt_at=0.0,
                    deadline_at=1e12)


async def deliver_all(notifier: BaseNotifier, clock: Any | None = None) -> None:
    """Send every export and backup sample, waiting out retryable answers the way the outbox would."""
    for index, event in enumerate(events()):
        for _ in range(20):
            try:
                await notifier.send(delivery(event, index))
                break
            except RetryableDeliveryError as exc:
                assert clock is not None, exc
                await clock.sleep(exc.retry_after or 1.0)
        else:
            raise AssertionError(f"never delivered: {event['type']}")


def assert_chat_bodies(bodies: Sequence[Any], *, ready_drawn: bool = True) -> None:
    """One body per event, each naming its export or backup; the ready one counts files and expiry, no URL."""
    shown = [json.dumps(body, ensure_ascii=False) for body in bodies]
    assert len(NAMES) == len(shown)
    assert [] == [text for text in shown if SIGNATURE in text or "part-1.csv.gz" in text]
    assert all(SAMPLE_EXPORT in text for text in shown[: len(EXPORT_SAMPLES)])
    assert all("nightly" in text for text in shown[len(EXPORT_SAMPLES) :])
    assert not ready_drawn or ("2 ready" in shown[0] and EXPIRY in shown[0])


@pytest.fixture(autouse=True)
def _fresh_pacers() -> None:
    forget_pacers()


@pytest.mark.parametrize(
    ("name", "status", "severity", "subject", "title"),
    [
        ("export ready", "ready", Severity.INFO, SAMPLE_EXPORT, f"Contact export {SAMPLE_EXPORT} ready"),
        ("export failure", "failure", Severity.ERROR, SAMPLE_EXPORT, f"Contact export {SAMPLE_EXPORT} failed"),
        ("export timed_out", "timed_out", Severity.WARNING, SAMPLE_EXPORT, f"Contact export {SAMPLE_EXPORT} timed out"),
        ("export not_found", "not_found", Severity.WARNING, SAMPLE_EXPORT, f"Contact export {SAMPLE_EXPORT} not found"),
        ("backup succeeded", "succeeded", Severity.INFO, "nightly", "Backup nightly succeeded"),
        ("backup failed", "failed", Severity.ERROR, "nightly", "Backup nightly failed"),
    ],
)
def test_each_event_has_its_message(name: str, status: str, severity: Severity, subject: str, title: str) -> None:
    """Each export and backup outcome gets its status, severity (success is the green INFO), subject and title."""
    message = message_from_event(sample_event(name))
    assert (status, severity, subject, title) == (message.status, message.severity, message.subject, message.title)


def test_a_ready_export_keeps_its_links_private() -> None:
    """The two download URLs are private links: in the private plain text, not in the shared one or the facts."""
    event = sample_event("export ready")
    message = message_from_event(event)
    assert () == message.links
    assert event["data"]["urls"] == [link.url for link in message.private_links]
    assert ("Files", f"2 ready, links expire {EXPIRY}") in message.facts
    assert SIGNATURE not in render.default_text(event) + render.console_line(event) + json.dumps(message.to_dict())
    assert all(url in render.default_text(event, private=True) for url in event["data"]["urls"])


def test_a_backup_shows_size_contacts_and_checksum() -> None:
    """A succeeded backup says contacts, files and size in its summary and keeps path and SHA-256 as facts."""
    message = message_from_event(sample_event("backup succeeded"))
    facts = dict(message.facts)
    assert message.summary.startswith("48,213 contacts in 2 files (3.5 MB) kept at /var/lib/import-watcher/")
    assert ("3.5 MB", 64) == (facts["Size"], len(facts["SHA-256"]))
    failed = message_from_event(sample_event("backup failed"))
    assert f"export {SAMPLE_EXPORT} failed at SendGrid" == dict(failed.facts)["Reason"]


def test_a_per_job_template_still_passes_check_and_falls_back() -> None:
    """A `{{ data.job_id }}` template is not refused by `check` for exports and backups; they use the default text."""
    per_job = "{% if outcome == 'alert' %}alert{% else %}job {{ data.job_id }} {{ data.status }}{% endif %}"
    assert [] == render.validate_templates({"text": per_job})
    event = sample_event("export ready")
    with capture_logs() as logs:
        text = render.rendered({"text": "job {{ data.job_id }}"}, "text", event, render.default_text, notifier="n")
    assert render.default_text(event) == text
    assert ["notify.template_not_for_summaries"] == [line["event"] for line in logs]  # debug, not a warning
    aware = "{{ message.title }}{% if message.kind.startswith('contact_export.') %} {{ data.job_id }}{% endif %}"
    problems = render.validate_templates({"text": aware})
    assert 1 == len(problems) and "export ready" in problems[0][1] and "data.export_id" in problems[0][1]


async def test_webhook_sends_the_event_itself_signed(session: aiohttp.ClientSession) -> None:
    """The webhook body is exactly the event (URLs included: the receiver is the team's own), signature verified."""
    async with WebhookReceiver() as hook:
        notifier = WebhookNotifier("audit", {"url": hook.url, "secret": Secret(SECRET)})
        await notifier.start(session)
        await deliver_all(notifier)
    assert events() == [received.body for received in hook.received]
    assert [f"msg_export{i:04}" for i in range(len(NAMES))] == [received.webhook_id for received in hook.received]


async def test_email_links_the_files_with_their_expiry(smtp_server, session: aiohttp.ClientSession) -> None:
    """E-mail (the team's own inboxes) links every file in text and HTML, with the expiry; subjects name each event."""
    sink = smtp_server()
    settings = {"host": "127.0.0.1", "port": sink.port, "starttls": False, "from": "watcher@example.com",
                "to": ("ops@example.com",), "timeout": 5.0}
    notifier = EmailNotifier("ops-email", settings)
    await notifier.start(session)
    await deliver_all(notifier)
    messages = sink.messages()
    assert [
        f"[import-watcher] contact export {SAMPLE_EXPORT} ready",
        f"[import-watcher] contact export {SAMPLE_EXPORT} failure",
        f"[import-watcher] contact export {SAMPLE_EXPORT} timed_out",
        f"[import-watcher] contact export {SAMPLE_EXPORT} not_found",
        "[import-watcher] backup nightly succeeded",
        "[import-watcher] backup nightly failed",
    ] == [message["Subject"] for message in messages]
    text, html = (messages[0].get_body((kind,)).get_content() for kind in ("plain", "html"))
    for url in sample_event("export ready")["data"]["urls"]:
        assert f"(expires {EXPIRY}): {url}" in text
        assert f'href="{url.replace("&", "&amp;")}"' in html


async def test_console_prints_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    """The console shows one line per event, with the file count and expiry but no URL."""
    await deliver_all(ConsoleNotifier("out", {}))
    lines = capsys.readouterr().out.splitlines()
    assert len(NAMES) == len(lines)
    assert lines[0].startswith(f"✔ ready      export={SAMPLE_EXPORT} contacts=48213 files=2 expires=2026-11-30")
    assert SIGNATURE not in "".join(lines)


async def test_slack(http_server, session: aiohttp.ClientSession) -> None:
    """Slack takes each as valid Block Kit; no download URL reaches the channel."""
    slack = FakeSlack()
    server = await http_server(handler=slack.handle)
    notifier = SlackNotifier("team-slack", {"webhook_url": Secret(server.url + "/services/T0/B0/tok3n")})
    await notifier.start(session)
    await deliver_all(notifier)
    assert [] == slack.problems
    assert_chat_bodies(slack.payloads)


async def test_teams(session: aiohttp.ClientSession) -> None:
    """Teams takes each as a valid Adaptive Card."""
    fake = FakeTeams(clock=VirtualClock())
    async with running(fake.app()) as base:
        notifier = TeamsNotifier("t", {"url": Secret(f"{base}/workflows/x/invoke?sig=s3cr3t")}, clock=fake.clock)
        await notifier.start(session)
        await deliver_all(notifier, fake.clock)
    assert [] == fake.rejected
    assert_chat_bodies(fake.accepted)


async def test_discord(session: aiohttp.ClientSession) -> None:
    """Discord takes each embed within its limits."""
    clock = JumpClock()
    fake = FakeDiscord(clock=clock)
    served = await serve(fake.app())
    hook_id, token = fake.add_webhook()
    try:
        notifier = DiscordNotifier("d", {"webhook_url": Secret(f"{served.url}/api/webhooks/{hook_id}/{token}")},
                                   clock=clock)
        await notifier.start(session)
        await deliver_all(notifier, clock)
    finally:
        await served.close()
    assert [] == fake.refused
    assert_chat_bodies(fake.messages)


async def test_google_chat_threads_by_export(session: aiohttp.ClientSession) -> None:
    """Google Chat takes each card; with `thread: job` an export's events share the export's thread."""
    fake = FakeGoogleChat(clock=VirtualClock())
    async with running(fake.app()) as base:
        url = f"{base}/v1/spaces/AAAA/messages?key=k3y&token=t0ken"
        notifier = GoogleChatNotifier("g", {"webhook_url": Secret(url), "thread": "job"}, clock=fake.clock)
        await notifier.start(session)
        await deliver_all(notifier, fake.clock)
    assert [] == fake.rejected
    assert_chat_bodies(fake.accepted)
    assert SAMPLE_EXPORT == thread_key(sample_event("export failure"), "job")
    assert 1 == len(set(fake.thread_names[: len(EXPORT_SAMPLES)]))


async def test_mattermost(session: aiohttp.ClientSession) -> None:
    """Mattermost takes each attachment post."""
    fake = FakeMattermost(clock=VirtualClock())
    async with running(fake.app()) as base:
        notifier = MattermostNotifier("m", {"webhook_url": Secret(f"{base}/hooks/h00k")}, clock=fake.clock)
        await notifier.start(session)
        await deliver_all(notifier, fake.clock)
    assert [] == fake.rejected
    assert_chat_bodies(fake.accepted)


async def test_pagerduty_pages_per_export_and_a_good_backup_resolves(session: aiohttp.ClientSession) -> None:
    """Each bad outcome triggers on its export's or backup's key; a succeeded backup resolves the failed one."""
    clock = JumpClock()
    fake = FakePagerDuty(clock=clock)
    served = await serve(fake.app())
    try:
        settings = {"routing_key": Secret("0123456789abcdef0123456789abcdef"),
                    "events_url": f"{served.url}/v2/enqueue", "resolve": True}
        notifier = PagerDutyNotifier("p", settings, clock=clock)
        await notifier.start(session)
        await deliver_all(notifier, clock)
        await notifier.send(delivery(sample_event("backup succeeded"), 99))  # the next night's backup
    finally:
        await served.close()
    assert [] == fake.refused
    assert [("resolve", f"import-watcher:export:{SAMPLE_EXPORT}")] + [
        ("trigger", f"import-watcher:export:{SAMPLE_EXPORT}")] * 3 + [
        ("resolve", "import-watcher:backup:nightly"), ("trigger", "import-watcher:backup:nightly"),
        ("resolve", "import-watcher:backup:nightly")] == [(e["event_action"], e["dedup_key"]) for e in fake.events]
    assert fake.alerts["import-watcher:backup:nightly"].resolved
    assert ["error", "warning", "warning", "error"] == [
        e["payload"]["severity"] for e in fake.events if e["event_action"] == "trigger"]
    assert_chat_bodies(fake.events[:-1], ready_drawn=False)  # a resolve carries only its key
    assert dedup_key(message_from_event(sample_event("export ready"))).endswith(SAMPLE_EXPORT)


async def test_apprise(http_server, session: aiohttp.ClientSession) -> None:
    """Apprise posts each (a ready export and a good backup as `success`), with no download URL."""
    pytest.importorskip("apprise")
    fake = await http_server()
    notifier = AppriseNotifier("a", {"urls": (Secret(f"json://{fake.url.removeprefix('http://')}/hooks/tok3n"),)})
    await notifier.start(session)
    try:
        await deliver_all(notifier)
    finally:
        await notifier.close()
    bodies = [json.loads(request.body) for request in fake.requests]
    assert ["success", "failure", "warning", "warning", "success", "failure"] == [body["type"] for body in bodies]
    assert_chat_bodies(bodies)
    assert "SUCCESS" == notify_type_name(message_from_event(sample_event("export ready")))
