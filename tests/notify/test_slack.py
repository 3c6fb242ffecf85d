"""The Slack notifier against a fake Slack that validates Block Kit like Slack does."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from aiohttp import web
from slack_sdk.models.blocks import Block

from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.render import sample_event
from watcher.notify.slack import SlackNotifier, build_message
from watcher.schema import Secret

from .conftest import Answer

OUTCOMES = ["completed", "errored", "failed", "timed_out", "not_found", "alert"]
SUMMARIES = ["batch_finished", "stuck", "stuck batch", "digest"]
BOT_TOKEN = "xoxb-test-token-123"


def payload_problems(payload: dict[str, Any]) -> list[str]:
    """Everything Slack would reject: slack_sdk's validators plus the documented limits."""
    problems: list[str] = []
    blocks = payload.get("blocks") or []
    if not payload.get("text"):
        problems.append("no fallback text")
    if len(blocks) > 50:
        problems.append(f"{len(blocks)} blocks")
    for raw in blocks:
        block = Block.parse(raw)
        if block is None:
            problems.append(f"unknown block {raw.get('type')}")
            continue
        try:
            block.validate_json()
            block.to_dict()
        except Exception as exc:
            problems.append(f"{raw['type']}: {exc}")
        problems += _limit_problems(raw)
    return problems


def _limit_problems(raw: dict[str, Any]) -> list[str]:
    problems = []
    if raw["type"] == "header":
        text = raw["text"]
        if text["type"] != "plain_text" or not 0 < len(text["text"]) <= 150:
            problems.append("header text")
    if raw["type"] == "section":
        if "text" in raw and not 0 < len(raw["text"]["text"]) <= 3000:
            problems.append(f"section text of {len(raw['text']['text'])}")
        fields = raw.get("fields") or []
        if len(fields) > 10 or any(not 0 < len(f["text"]) <= 2000 for f in fields):
            problems.append("section fields")
    if raw["type"] == "context" and len(raw["elements"]) > 10:
        problems.append("context elements")
    return problems


class FakeSlack:
    """Answers `invalid_payload` to any message Slack would reject, else follows a script."""

    def __init__(self, answers: list[Answer] | None = None) -> None:
        self.answers = answers or []
        self.payloads: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.problems: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        self.payloads.append(payload)
        self.headers.append(dict(request.headers))
        if problems := payload_problems(payload):
            self.problems += problems
            return web.Response(status=400, text="invalid_payload")
        answer = self.answers.pop(0) if self.answers else Answer(200, "ok")
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))


def webhook_notifier(url: str, **extra: Any) -> SlackNotifier:
    return SlackNotifier("team-slack", {"webhook_url": Secret(url + "/services/T0/B0/tok3n")}, **extra)


def huge_event() -> dict[str, Any]:
    event = sample_event("errored")
    data = event["data"]
    data["job_id"] = "J" * 400
    data["labels"] = {f"label{i}": f"value-<{i}>&" * 3 for i in range(1000)}
    data["errors"] = {
        "rows": 10_000,
        "top_reasons": [{"reason": "&<bad>" * 2000, "count": 5000} for _ in range(5)],
    }
    data["results"]["errors_url"] = "https://example.com/e.csv?x=" + "a" * 5000
    return event


async def test_retries_after_429_then_delivers(http_server, start_notifier, make_delivery) -> None:
    """429 with Retry-After is retryable with that delay; the next send is delivered."""
    slack = FakeSlack([Answer(429, "rate_limited", {"Retry-After": "0.01"})])
    server = await http_server(handler=slack.handle)
    notifier = await start_notifier(webhook_notifier(server.url))
    delivery = make_delivery(sample_event("errored"))

    with pytest.raises(RetryableDeliveryError) as caught:
        await notifier.send(delivery)
    await notifier.send(delivery)

    assert 0.01 == caught.value.retry_after
    assert 2 == len(slack.payloads)
    assert [] == slack.problems


async def test_every_outcome_is_valid_and_has_its_own_header(http_server, start_notifier, make_delivery) -> None:
    """Each outcome and the alert give a payload Slack accepts, with distinct headers."""
    slack = FakeSlack()
    server = await http_server(handler=slack.handle)
    notifier = await start_notifier(webhook_notifier(server.url))

    for outcome in OUTCOMES:
        await notifier.send(make_delivery(sample_event(outcome)))

    assert [] == slack.problems
    headers = [p["blocks"][0]["text"]["text"] for p in slack.payloads]
    assert len(OUTCOMES) == len(set(headers))


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_message_shape(outcome: str) -> None:
    """Header first, context last, a fallback text that starts like the header."""
    message = build_message(sample_event(outcome))

    types = [b["type"] for b in message["blocks"]]
    assert ("header", "context") == (types[0], types[-1])
    assert message["text"].startswith(message["blocks"][0]["text"]["text"][:10])
    assert [] == payload_problems(message)


def test_errored_message_links_the_errors_file_and_lists_reasons() -> None:
    """The errors summary and a link to errors_url are shown, with & escaped in the URL."""
    message = build_message(sample_event("errored"))

    texts = "\n".join(b["text"]["text"] for b in message["blocks"] if "text" in b)
    assert "8 × invalid email" in texts
    assert "<https://example.com/errors/0b5f1c9e.csv?token=sample|Download the errors file>" in texts


def test_unavailable_errors_file_is_explained() -> None:
    """When the errors file could not be read, the message says why."""
    event = sample_event("errored")
    event["data"]["errors"] = {"unavailable": "HTTP 403 from https://example.com/e.csv"}

    texts = json.dumps(build_message(event))

    assert "errors file unavailable: HTTP 403" in texts


async def test_huge_event_stays_within_limits(http_server, start_notifier, make_delivery) -> None:
    """1000 labels, 10 KB reasons and a long job id are clipped, never rejected."""
    slack = FakeSlack()
    server = await http_server(handler=slack.handle)
    notifier = await start_notifier(webhook_notifier(server.url))

    await notifier.send(make_delivery(huge_event()))

    assert [] == slack.problems
    assert [] == payload_problems(slack.payloads[0])


def test_user_text_is_escaped() -> None:
    """`<`, `&` and `>` in labels and reasons reach Slack as entities, so no mention fires."""
    event = sample_event("errored")
    event["data"]["labels"] = {"team": "<!channel> & <@U123>"}
    event["data"]["errors"]["top_reasons"] = [{"reason": "bad <tag>", "count": 1}]

    dumped = json.dumps(build_message(event))

    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in dumped
    assert "bad &lt;tag&gt;" in dumped
    assert "<!channel>" not in dumped and "<@U123>" not in dumped


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(400, "invalid_payload"), PermanentDeliveryError),
        (Answer(404, "channel_not_found"), PermanentDeliveryError),
        (Answer(410, "channel_is_archived"), PermanentDeliveryError),
        (Answer(403, "action_prohibited"), PermanentDeliveryError),
        (Answer(500, "internal_error"), RetryableDeliveryError),
        (Answer(503, ""), RetryableDeliveryError),
    ],
)
async def test_webhook_errors(http_server, start_notifier, make_delivery, answer, error) -> None:
    """Slack's 4xx codes are permanent, 5xx retried; the message never shows the webhook URL."""
    slack = FakeSlack([answer])
    server = await http_server(handler=slack.handle)
    notifier = await start_notifier(webhook_notifier(server.url))

    with pytest.raises(error) as caught:
        await notifier.send(make_delivery(sample_event("failed")))

    assert str(answer.status) in str(caught.value)
    assert "tok3n" not in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(200, json.dumps({"ok": True})), None),
        (
            Answer(200, json.dumps({"ok": False, "error": "channel_not_found"})),
            PermanentDeliveryError,
        ),
        (Answer(200, json.dumps({"ok": False, "error": "invalid_auth"})), PermanentDeliveryError),
        (Answer(200, json.dumps({"ok": False, "error": "ratelimited"})), RetryableDeliveryError),
        (Answer(429, "", {"Retry-After": "3"}), RetryableDeliveryError),
    ],
)
async def test_chat_post_message(http_server, start_notifier, make_delivery, answer, error) -> None:
    """With a bot token the message goes to chat.postMessage; ok:false errors are classified."""
    slack = FakeSlack([answer])
    server = await http_server(handler=slack.handle)
    settings = {"bot_token": Secret(BOT_TOKEN), "channel": "C123", "api_url": server.url + "/api"}
    notifier = await start_notifier(SlackNotifier("bot", settings))
    delivery = make_delivery(sample_event("completed"))

    if error is None:
        await notifier.send(delivery)
    else:
        with pytest.raises(error):
            await notifier.send(delivery)

    assert "C123" == slack.payloads[0]["channel"]
    assert f"Bearer {BOT_TOKEN}" == slack.headers[0]["Authorization"]
    assert [] == slack.problems


async def test_a_big_ok_answer_is_read_whole_and_posted_once(http_server, start_notifier, make_delivery) -> None:
    """Slack's real answer echoes the message: a 9 KiB `{"ok": true, ...}` is one post, delivered."""
    slack = FakeSlack()

    async def echo(request: web.Request) -> web.Response:
        await slack.handle(request)
        message = {**slack.payloads[-1], "padding": "x" * 9 * 1024}
        return web.json_response({"ok": True, "channel": "C123", "ts": "1.2", "message": message})

    server = await http_server(handler=echo)
    settings = {"bot_token": Secret(BOT_TOKEN), "channel": "C123", "api_url": server.url + "/api"}
    notifier = await start_notifier(SlackNotifier("bot", settings))

    await notifier.send(make_delivery(sample_event("errored")))

    assert 1 == len(slack.payloads)
    assert [] == slack.problems


async def test_an_answer_over_a_mebibyte_is_retryable(http_server, start_notifier, make_delivery) -> None:
    """An answer past the 1 MiB cap is not parsed: the post is retried, not taken as delivered."""
    padding = "x" * (1 << 20)
    slack = FakeSlack([Answer(200, json.dumps({"ok": True, "padding": padding}))])
    server = await http_server(handler=slack.handle)
    settings = {"bot_token": Secret(BOT_TOKEN), "channel": "C123", "api_url": server.url + "/api"}
    notifier = await start_notifier(SlackNotifier("bot", settings))

    with pytest.raises(RetryableDeliveryError, match="answer larger than 1048576 bytes"):
        await notifier.send(make_delivery(sample_event("completed")))


async def test_title_template_and_broken_text_template(http_server, start_notifier, make_delivery) -> None:
    """A title template sets the header; a failing text template falls back and logs a warning."""
    slack = FakeSlack()
    server = await http_server(handler=slack.handle)
    templates = {"title": "{{ outcome | upper }}: {{ data.job_id }}", "text": "{{ data.nope.x }}"}
    notifier = await start_notifier(webhook_notifier(server.url, templates=templates))

    with structlog.testing.capture_logs() as logs:
        await notifier.send(make_delivery(sample_event("errored")))

    payload = slack.payloads[0]
    assert "ERRORED: 0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11" == payload["blocks"][0]["text"]["text"]
    assert any(b.get("fields") for b in payload["blocks"])  # the default fields are back
    assert ["notify.template_failed"] == [e["event"] for e in logs if e["log_level"] == "warning"]


@pytest.mark.parametrize(
    ("settings", "problems"),
    [
        ({"webhook_url": Secret("https://hooks.slack.com/services/T/B/x")}, []),
        ({"webhook_url": Secret("http://hooks.slack.com/services/T/B/x")}, ["webhook_url"]),
        ({"webhook_url": Secret("http://127.0.0.1:9/x")}, []),
        ({}, ["webhook_url"]),
        ({"bot_token": Secret(BOT_TOKEN)}, ["channel"]),
        ({"bot_token": Secret(BOT_TOKEN), "channel": "C1", "api_url": "https://slack.com/api"}, []),
        (
            {
                "webhook_url": Secret("https://h.example/x"),
                "bot_token": Secret(BOT_TOKEN),
                "channel": "C1",
            },
            ["webhook_url", "channel"],
        ),
    ],
)
def test_check(settings: dict[str, Any], problems: list[str]) -> None:
    """Exactly one way to post, and https off loopback."""
    assert problems == [key for key, _ in SlackNotifier.check(settings)]


def test_describe_masks_the_webhook_url_and_token() -> None:
    """The webhook URL embeds a token: describe() and repr never show it."""
    notifier = SlackNotifier(
        "s",
        {"webhook_url": Secret("https://hooks.slack.com/services/T/B/tok3n"), "bot_token": None},
    )

    shown = notifier.describe()

    assert "********" == shown["webhook_url"]
    assert "tok3n" not in str(shown) + repr(notifier)


async def test_every_summary_kind_is_accepted_by_slack(http_server, start_notifier, make_delivery) -> None:
    """A batch summary, both stuck warnings and a digest are each one payload Slack accepts."""
    slack = FakeSlack()
    server = await http_server(handler=slack.handle)
    notifier = await start_notifier(webhook_notifier(server.url))

    for kind in SUMMARIES:
        await notifier.send(make_delivery(sample_event(kind)))

    assert [] == slack.problems
    assert len(SUMMARIES) == len({p["blocks"][0]["text"]["text"] for p in slack.payloads})


def test_batch_message_links_the_batch_and_lists_jobs_to_look_at() -> None:
    """The batch message has its counts as fields, the jobs that did not complete, and the batch link."""
    message = build_message(sample_event("batch_finished"))

    dumped = json.dumps(message, ensure_ascii=False)
    assert "34 jobs: 1 failed, 2 errored, 31 completed." == message["blocks"][1]["text"]["text"]
    assert "*Outcomes*\\n1 failed, 2 errored, 31 completed" in dumped
    assert "• nightly-2026-11-27-32 — failed (1,000 contacts rejected)" in dumped
    assert "<https://watcher.example.com/batches/nightly-2026-11-27|Open the batch>" in dumped
    assert message["text"].startswith("❌ Batch nightly-2026-11-27 failed\n34 jobs")
