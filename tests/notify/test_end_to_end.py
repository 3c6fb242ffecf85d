"""Every demo outcome routed to webhook, Slack and e-mail through the daemon, each receiver verifying it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from structlog.testing import capture_logs

from tests.helpers import SECRET, SmtpSink, WebhookReceiver, config_text, make_config, write_jobs
from watcher.daemon import Daemon
from watcher.models import DeliveryState
from watcher.notify.outbox import Backoff
from watcher.store import open_store
from watcher.testing.fake_sendgrid import FakeSendGrid

from .conftest import Answer, StartHttp
from .test_slack import FakeSlack

FAST = Backoff(initial=0.05, maximum=0.2)
EXPECTED = {"e2e-ok": "completed", "e2e-err": "errored", "e2e-fail": "failed",
            "e2e-stuck": "timed_out", "e2e-ghost": "not_found"}


def script(fake: FakeSendGrid) -> None:
    fake.script_job("e2e-ok", outcome="completed", pending_for=0.1)
    fake.script_job("e2e-err", outcome="errored", pending_for=0.2, errored=2,
                    error_rows=[("a@x", "invalid email"), ("b@x", "invalid email")])
    fake.script_job("e2e-fail", outcome="failed", pending_for=0.1)
    fake.script_job("e2e-stuck", outcome="pending")


async def test_every_outcome_reaches_webhook_slack_and_email(
    tmp_path: Path, http_server: StartHttp, smtp_server: Callable[..., SmtpSink]
) -> None:
    """Routes send everything to Slack and the webhook, failures also by e-mail; all three verify."""
    slack = FakeSlack([Answer(429, "rate_limited", {"Retry-After": "0"})])
    slack_http = await http_server(handler=slack.handle)
    smtp = smtp_server()
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        script(fake)
        text = config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url,
                           jobs_file=write_jobs(tmp_path / "jobs.yaml", list(EXPECTED)))
        text += f"""\
  chat:
    type: slack
    webhook_url: {slack_http.url}/services/T0/B0/x
  mail:
    type: email
    host: 127.0.0.1
    port: {smtp.port}
    starttls: false
    from: watcher@example.com
    to: [ops@example.com, oncall@example.com]
routes:
  - notify: [hook, chat]
  - when: {{status: [errored, failed, timed_out, not_found]}}
    notify: [mail]
"""
        config = make_config(tmp_path, text)
        assert 0 == await asyncio.wait_for(Daemon(config, delivery_backoff=FAST).run(until_idle=True, install_signals=False), 30)
    assert EXPECTED == hook.statuses()
    assert [] == slack.problems
    slack_jobs = [p for p in slack.payloads if "text" in p]
    assert 6 == len(slack_jobs)  # five outcomes plus the one answered 429 and retried
    assert len({json.dumps(p["blocks"][0]) for p in slack_jobs}) == 5
    subjects = sorted(str(m["Subject"]) for m in smtp.messages())
    assert sorted(f"[import-watcher] contact import {job} {status}" for job, status in EXPECTED.items()
                  if status != "completed") == subjects
    assert {"ops@example.com", "oncall@example.com"} == set(smtp.envelopes[0].rcpt_tos)
    errored_mail = next(m for m in smtp.messages() if "e2e-err" in str(m["Subject"]))
    assert "errors-e2e-err.csv" in [part.get_filename() for part in errored_mail.iter_attachments()]
    assert {"text/plain", "text/html"} <= {p.get_content_type() for p in errored_mail.walk()}


async def test_dead_delivery_is_visible_and_alerts_the_others(tmp_path: Path, http_server: StartHttp) -> None:
    """A 410 from one receiver makes that delivery dead, shown in status, and alerts the other notifier."""
    gone = await http_server(default=Answer(410, "gone"))
    async with FakeSendGrid() as fake, WebhookReceiver() as hook:
        fake.script_job("dead-1", outcome="completed")
        text = config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url,
                           jobs_file=write_jobs(tmp_path / "jobs.yaml", ["dead-1"]))
        text += f"  gone:\n    type: webhook\n    url: {gone.url}/hook\n    secret: {SECRET}\n"
        config = make_config(tmp_path, text)
        assert 0 == await asyncio.wait_for(Daemon(config, delivery_backoff=FAST).run(until_idle=True, install_signals=False), 20)
    assert 1 == len(gone.requests)
    alerts = [r.body for r in hook.received if r.body["type"] == "watcher.alert"]
    assert ["delivery_dead"] == [a["data"]["alert"] for a in alerts]
    assert "gone" == alerts[0]["data"]["notifier"]
    assert "HTTP 410" in alerts[0]["data"]["message"] or "410" in alerts[0]["data"]["message"]
    store = open_store(config.state.url)
    await store.open()
    try:
        states = {d.notifier: d.state for d in await store.list_deliveries(["dead-1"])}
    finally:
        await store.close()
    assert {"hook": DeliveryState.DELIVERED, "gone": DeliveryState.DEAD} == states


async def test_delivery_deadline_makes_a_delivery_dead(tmp_path: Path, http_server: StartHttp) -> None:
    """A receiver down past its notifier's delivery_deadline ends as dead after bounded retries."""
    down = await http_server(default=Answer(503, "down"))
    async with FakeSendGrid() as fake:
        fake.script_job("late-1", outcome="completed")
        text = config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db",
                           jobs_file=write_jobs(tmp_path / "jobs.yaml", ["late-1"]))
        text += f"notifiers:\n  down:\n    type: webhook\n    url: {down.url}/hook\n    delivery_deadline: 1s\n"
        config = make_config(tmp_path, text)
        daemon = Daemon(config, delivery_backoff=FAST)
        with capture_logs() as logs:
            assert 0 == await asyncio.wait_for(daemon.run(until_idle=True, install_signals=False), 20)
    store = open_store(config.state.url)
    await store.open()
    try:
        [delivery] = await store.list_deliveries(["late-1"])
    finally:
        await store.close()
    assert DeliveryState.DEAD == delivery.state
    assert delivery.attempts == len(down.requests)
    assert 3 <= delivery.attempts <= 40
    assert "deadline" in (delivery.last_error or "")
    # The attempt that ran into the deadline counts as dead, in the metrics and the shutdown summary alike.
    counted = {result: daemon.metrics.registry.get_sample_value(
        "import_watcher_deliveries_total", {"notifier": "down", "result": result}) for result in ("retry", "dead")}
    assert {"retry": delivery.attempts - 1, "dead": 1} == counted
    [summary] = [entry for entry in logs if entry["event"] == "daemon.stopped"]
    assert {"down:retry": delivery.attempts - 1, "down:dead": 1} == summary["deliveries"]
