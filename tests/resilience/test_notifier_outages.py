"""Webhook, Slack and SMTP down at once, then back: every notification arrives once, nothing is dead."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from tests.helpers import SmtpSink, WebhookReceiver, config_text, free_port, make_config, write_jobs
from tests.notify.conftest import Answer
from tests.notify.test_slack import FakeSlack
from watcher.daemon import Daemon
from watcher.models import DeliveryState
from watcher.notify.outbox import Backoff
from watcher.testing.fake_sendgrid import FakeSendGrid

from .conftest import TROUBLE_EVENTS, counted_log_events, serving, stored

pytestmark = pytest.mark.resilience

BACKOFF = Backoff(initial=0.1, maximum=0.4)
POLLING = "initial_delay: 0s\n  min_interval: 50ms\n  max_interval: 200ms\n  deadline: 1500ms\n  not_found_grace: 500ms"
RETRY_AFTER = 1  # seconds, as Slack sends it
# When each peer recovers, in seconds after the daemon started; every outcome is known by ~1.6 s.
WEBHOOK_BACK, SLACK_BACK, SMTP_BACK = 2.0, 2.5, 3.0
EXPECTED = {f"nt-{i:02d}": ("completed", "errored", "failed", "timed_out", "not_found")[i % 5] for i in range(15)}


@dataclass
class RecordingReceiver(WebhookReceiver):
    """A WebhookReceiver that also notes every attempt: (time, webhook-id, job id, status)."""

    attempts: list[tuple[float, str, str, int]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.Response:
        job_id = json.loads(await request.read())["data"].get("job_id", "")
        response = await super()._handle(request)
        self.attempts.append((time.monotonic(), request.headers["webhook-id"], job_id, response.status))
        return response


class SlackOutage(FakeSlack):
    """A FakeSlack (Block Kit checked on every post) that answers 429 with Retry-After until `back_at`."""

    def __init__(self) -> None:
        super().__init__()
        self.back_at = float("inf")
        self.attempts: list[tuple[float, str, int]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if time.monotonic() < self.back_at:
            self.answers.insert(0, Answer(429, "rate_limited", {"Retry-After": str(RETRY_AFTER)}))
        response = await super().handle(request)
        text = json.dumps(self.payloads[-1])
        job_id = next((job_id for job_id in EXPECTED if job_id in text), "")
        self.attempts.append((time.monotonic(), job_id, response.status))
        return response


def script(fake: FakeSendGrid) -> None:
    """Script EXPECTED: never-ending jobs time out, unscripted ones are not found."""
    for job_id, outcome in EXPECTED.items():
        if outcome == "timed_out":
            fake.script_job(job_id, outcome="pending")
        elif outcome != "not_found":
            fake.script_job(job_id, outcome=outcome, pending_for=0.3)


def notifiers_text(slack_url: str, smtp_port: int) -> str:
    """Slack and e-mail notifiers, added under the webhook's `notifiers:` section."""
    return f"""\
  chat:
    type: slack
    webhook_url: {slack_url}/services/T0/B0/x
  mail:
    type: email
    host: 127.0.0.1
    port: {smtp_port}
    starttls: false
    timeout: 2s
    from: watcher@example.com
    to: [ops@example.com]
"""


async def recover(hook: RecordingReceiver, smtp: Controller, started: float) -> None:
    """Bring the webhook back, then start listening for SMTP (Slack recovers by itself at `back_at`)."""
    await asyncio.sleep(started + WEBHOOK_BACK - time.monotonic())
    hook.fail_with = None
    await asyncio.sleep(started + SMTP_BACK - time.monotonic())
    await asyncio.to_thread(smtp.start)


async def test_every_notification_arrives_once_after_the_outages(tmp_path: Path) -> None:
    """Webhook 500s, Slack 429s with Retry-After and a refused SMTP port all recover, and each job reaches each notifier exactly once."""
    slack = SlackOutage()
    sink = SmtpSink(port=free_port())
    smtp = Controller(sink, hostname=sink.host, port=sink.port)
    hook = RecordingReceiver(fail_with=500, fail_times=10**9)
    async with FakeSendGrid() as fake, hook, serving(slack.handle) as slack_url:
        script(fake)
        text = config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url,
                           jobs_file=write_jobs(tmp_path / "jobs.yaml", list(EXPECTED)), polling=POLLING)
        config = make_config(tmp_path, text + notifiers_text(slack_url, sink.port))
        started = time.monotonic()
        slack.back_at = started + SLACK_BACK
        recovery = asyncio.create_task(recover(hook, smtp, started))
        try:
            with counted_log_events() as events:
                exit_code = await asyncio.wait_for(
                    Daemon(config, delivery_backoff=BACKOFF).run(until_idle=True, install_signals=False), 30)
            await recovery
        finally:
            recovery.cancel()
            await asyncio.to_thread(smtp.stop, no_assert=True)
    _, deliveries = await stored(config.state.url)

    attempts = defaultdict(list)
    for delivery in deliveries:
        attempts[delivery.notifier].append(delivery.attempts)
    print(f"\nnotifier outages: {len(EXPECTED)} jobs; attempts per delivery {dict(attempts)}; "
          f"webhook refused {hook.rejected}, slack 429s {sum(s == 429 for _, _, s in slack.attempts)}, "
          f"e-mails {len(sink.envelopes)}")

    assert 0 == exit_code
    assert {name: 0 for name in TROUBLE_EVENTS} == {name: events[name] for name in TROUBLE_EVENTS}
    assert {DeliveryState.DELIVERED} == {d.state for d in deliveries}
    assert 3 * len(EXPECTED) == len(deliveries)
    # Webhook: one receipt per job, and one webhook-id per job across all its attempts.
    assert EXPECTED == hook.statuses()
    assert len(EXPECTED) == len(hook.received)
    ids_by_job = defaultdict(set)
    for _, webhook_id, job_id, _ in hook.attempts:
        ids_by_job[job_id].add(webhook_id)
    assert {job_id: 1 for job_id in EXPECTED} == {job_id: len(ids) for job_id, ids in ids_by_job.items()}
    assert set(EXPECTED) == {job_id for _, _, job_id, status in hook.attempts if status == 500}
    # Slack: valid Block Kit every time, one success per job, and no retry sooner than Retry-After.
    assert [] == slack.problems
    assert {job_id: 1 for job_id in EXPECTED} == count_by_job(slack.attempts, 200)
    assert set(EXPECTED) == set(count_by_job(slack.attempts, 429))
    assert [] == retries_before_retry_after(slack.attempts)
    # E-mail: refused connections were retried, then one message per job.
    assert all(d.attempts > 1 for d in deliveries if d.notifier == "mail")
    subjects = sorted(str(m["Subject"]) for m in sink.messages())
    assert sorted(f"[import-watcher] contact import {job} {status}" for job, status in EXPECTED.items()) == subjects
    assert len(EXPECTED) == len({str(m["Message-ID"]) for m in sink.messages()})


def count_by_job(attempts: list[tuple[float, str, int]], status: int) -> dict[str, int]:
    """How many Slack posts of each job were answered with `status`."""
    counts: dict[str, int] = defaultdict(int)
    for _, job_id, answered in attempts:
        if answered == status:
            counts[job_id] += 1
    return dict(counts)


def retries_before_retry_after(attempts: list[tuple[float, str, int]]) -> list[tuple[str, float]]:
    """(job, gap) for every Slack post sent sooner than Retry-After after a 429 for the same job."""
    early = []
    for job_id in EXPECTED:
        mine = [(at, status) for at, job, status in attempts if job == job_id]
        for (earlier, status), (later, _) in itertools.pairwise(mine):
            if status == 429 and later - earlier < RETRY_AFTER - 0.01:
                early.append((job_id, round(later - earlier, 3)))
    return early


def most_attempts(backoff: Backoff, seconds: float) -> int:
    """The most sends the backoff allows within `seconds` of failures (every wait at its shortest), plus the one that succeeds."""
    waited, attempts = 0.0, 1
    while waited + backoff.delay(attempts, 0.0) <= seconds:
        waited += backoff.delay(attempts, 0.0)
        attempts += 1
    return attempts + 1


async def test_retry_after_zero_does_not_make_a_busy_loop(tmp_path: Path) -> None:
    """A receiver failing with `Retry-After: 0` is retried on the backoff schedule, not as fast as it can answer."""
    outage, posts = 1.5, []

    async def receiver(request: web.Request) -> web.Response:
        posts.append((time.monotonic(), request.headers["webhook-id"]))
        if time.monotonic() < back_at:
            return web.Response(status=503, headers={"Retry-After": "0"})
        return web.Response(status=204)

    back_at = time.monotonic() + 60.0
    async with FakeSendGrid() as fake, serving(receiver) as url:
        fake.script_job("ra-0", outcome="completed")
        text = config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=f"{url}/hook",
                           jobs_file=write_jobs(tmp_path / "jobs.yaml", ["ra-0"]))
        daemon = Daemon(make_config(tmp_path, text), delivery_backoff=BACKOFF)
        back_at = time.monotonic() + outage
        assert 0 == await asyncio.wait_for(daemon.run(until_idle=True, install_signals=False), 20)
    print(f"\nretry-after 0: {len(posts)} posts over {posts[-1][0] - posts[0][0]:.2f}s")
    assert 1 == len({webhook_id for _, webhook_id in posts})
    assert 2 <= len(posts) <= most_attempts(BACKOFF, outage)
