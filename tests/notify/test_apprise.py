"""The Apprise notifier against a local receiver of Apprise's generic `json://` URLs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from watcher.config import load_config
from watcher.errors import ConfigError, PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.apprise import INSTALL_HINT, AppriseNotifier, apprise_urls, shown
from watcher.notify.message import message_from_event
from watcher.notify.registry import load_notifier_types
from watcher.notify.samples import sample_alert, sample_event
from watcher.schema import Secret, Validator
from watcher.testing.chatfakes_b.events import big_batch_event
from watcher.yamlloc import Problems

from .conftest import Answer, FakeHttp

pytest.importorskip("apprise")

TOKEN = "tok3nQx9secretPathPart"
PASSWORD = "pa55wordQx9secret"
Start = Callable[..., Any]


def hook(fake: FakeHttp, *, user: bool = False, extra: str = "") -> str:
    """A json:// URL to the fake, with the token in the path (and a user and password if asked)."""
    netloc = fake.url.removeprefix("http://")
    auth = f"watcher:{PASSWORD}@" if user else ""
    return f"json://{auth}{netloc}/hooks/{TOKEN}{extra}"


@pytest.fixture
async def notifiers(session) -> Any:
    """A factory of started AppriseNotifiers; all are closed after the test."""
    started: list[AppriseNotifier] = []

    async def start(*urls: str, **settings: Any) -> AppriseNotifier:
        notifier = AppriseNotifier("team-apprise", {"urls": tuple(Secret(u) for u in urls), **settings})
        await notifier.start(session)
        started.append(notifier)
        return notifier

    yield start
    for notifier in started:
        await notifier.close()


def posted(fake: FakeHttp) -> list[dict[str, Any]]:
    """The JSON bodies Apprise posted to the fake."""
    return [json.loads(request.body) for request in fake.requests]


@pytest.mark.parametrize(
    ("event", "kind"),
    [(sample_event("failed"), "failure"), (big_batch_event(), "failure"), (sample_alert("key_refused"), "failure")],
    ids=["outcome", "batch of 500", "alert"],
)
async def test_messages_reach_a_json_receiver(http_server, notifiers, make_delivery, event, kind) -> None:
    """An outcome, a 500-job batch summary and an alert arrive with the message's title, summary and type."""
    fake = await http_server()
    notifier = await notifiers(hook(fake))
    await notifier.send(make_delivery(event))
    message = message_from_event(event)
    [body] = posted(fake)
    assert (message.heading, kind) == (body["title"], body["type"])
    assert body["message"].startswith(message.summary)
    assert message.facts[0][1] in body["message"]
    assert f"/hooks/{TOKEN}" == fake.requests[0].path


async def test_a_completed_outcome_is_a_success(http_server, notifiers, make_delivery) -> None:
    """A completed import is Apprise's `success` type; its body lists the counts as plain text."""
    fake = await http_server()
    notifier = await notifiers(hook(fake))
    await notifier.send(make_delivery(sample_event("completed")))
    [body] = posted(fake)
    assert "success" == body["type"]
    assert "Counts: " in body["message"]


async def test_templates_replace_title_and_body(http_server, notifiers, make_delivery) -> None:
    """A `title` and a `text` template replace the rendered title and the whole body."""
    fake = await http_server()
    notifier = await notifiers(hook(fake))
    notifier.templates = {"title": "Job {{ data.job_id }}", "text": "status {{ data.status }}"}
    event = sample_event("failed")
    await notifier.send(make_delivery(event))
    [body] = posted(fake)
    assert (f"Job {event['data']['job_id']}", f"status {event['data']['status']}") == (body["title"], body["message"])


async def test_a_500_is_retryable(http_server, notifiers, make_delivery) -> None:
    """A receiver answering 500 makes Apprise report failure: a RetryableDeliveryError naming the URL's scheme."""
    fake = await http_server(default=Answer(500, "boom"))
    notifier = await notifiers(hook(fake))
    with pytest.raises(RetryableDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("failed")))
    assert "1 of 1 URLs failed (json://127.0.0.1/…" in str(caught.value)
    assert 1 == len(fake.requests)


async def test_a_retry_skips_the_urls_already_sent(http_server, notifiers, make_delivery) -> None:
    """When one URL of two fails, the retry of that delivery sends only to it: the other gets no duplicate."""
    good, bad = await http_server(), await http_server(default=Answer(503, "down"))
    notifier = await notifiers(hook(good), hook(bad))
    delivery = make_delivery(sample_event("failed"))
    with pytest.raises(RetryableDeliveryError):
        await notifier.send(delivery)
    bad.default = Answer(200, "ok")
    await notifier.send(delivery)
    assert (1, 2) == (len(good.requests), len(bad.requests))


async def test_no_answer_in_time_is_retryable(http_server, notifiers, make_delivery) -> None:
    """A receiver slower than `timeout` gives a RetryableDeliveryError at the timeout, not at Apprise's own."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    fake = await http_server(handler=slow)
    notifier = await notifiers(hook(fake, extra="?rto=2"), timeout=0.2)
    began = time.monotonic()
    with pytest.raises(RetryableDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("failed")))
    assert time.monotonic() - began < 0.9
    assert "apprise: no result within 0.2s from json://127.0.0.1/…" == str(caught.value)


async def test_no_token_in_logs_errors_or_describe(http_server, notifiers, make_delivery, json_logs) -> None:
    """The URL's path token and password appear in no log line (Apprise's own included), error or describe()."""
    fake = await http_server(default=Answer(500, f"no such hook {TOKEN}"))
    notifier = await notifiers(hook(fake, user=True))
    with pytest.raises(RetryableDeliveryError) as caught:
        await notifier.send(make_delivery(sample_event("failed")))
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    # aiohttp.access is the fake service's own log of what it received, not the watcher's.
    logs = json.dumps([line for line in lines if line.get("logger") != "aiohttp.access"])
    assert "notify.apprise_failed" in logs
    assert "Failed to send JSON" in logs  # Apprise's warning passes, scrubbed
    assert "POST /***/*** HTTP/1.1" in logs  # urllib3's request line passes, masked
    assert "JSON Payload" not in logs  # Apprise's debug lines (request URLs, payloads) are dropped
    for secret in (TOKEN, PASSWORD):
        assert secret not in logs
        assert secret not in str(caught.value)
        assert secret not in json.dumps(notifier.describe())
    assert ["json://127.0.0.1/…"] == notifier.describe()["urls"]


def test_hosted_service_urls_are_shown_by_scheme_only() -> None:
    """A URL whose host is a token (a Telegram bot token, a Discord webhook id) shows only its scheme."""
    assert ("tgram://…", "discord://…", "ntfys://ntfy.example.com/…") == (
        shown("tgram://123456789:AAHsecret/12345"),
        shown("discord://1234567/abcdef"),
        shown("ntfys://user:pw@ntfy.example.com/topic"),
    )


@pytest.mark.parametrize(
    ("url", "settings", "expected"),
    [
        ("json://127.0.0.1:9/hook", {}, []),
        ("json://hooks.example.com/x", {}, ["sends in plain text: use jsons:// or set allow_insecure: true"]),
        ("json://hooks.example.com/x", {"allow_insecure": True}, []),
        ("jsons://10.1.2.3/x", {}, ["a private address (set allow_private: true to send there)"]),
        ("jsons://10.1.2.3/x", {"allow_private": True}, []),
        ("discord://1234567/abcdefTOKEN", {}, []),
        ("nosuchservice://abc", {}, ["Apprise does not understand this URL (an unknown scheme, or parts missing)"]),
    ],
)
def test_check_reports_each_url(url: str, settings: dict[str, Any], expected: list[str]) -> None:
    """check() reports URLs Apprise cannot use, plain text to a remote host and private IP literals, per entry."""
    problems = AppriseNotifier.check({"urls": (Secret(url),), **settings})
    assert [("urls", f"entry 1 ({shown(url)}): {text}") for text in expected] == problems


def test_urls_file_holds_one_url_per_line(tmp_path: Path) -> None:
    """`urls_file` is read as one URL per line; blank lines and # comments are skipped."""
    secret_file = tmp_path / "urls"
    secret_file.write_text("# team\njson://127.0.0.1:9/a\n\ndiscord://1234567/abcdef\n")
    problems = Problems("c.yaml")
    parsed = Validator(problems, tmp_path).fields(
        {"type": "apprise", "urls_file": str(secret_file)}, ("notifiers", "a"), AppriseNotifier.fields,
        extra_ok=frozenset({"type"}),
    )  # fmt: skip
    assert [] == problems.sorted()
    assert ("json://127.0.0.1:9/a", "discord://1234567/abcdef") == tuple(u.reveal() for u in parsed["urls"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], "expected a non-empty list of Apprise URLs (or a urls_file with one per line)"),
        (["json://a/b", "tgram:/AAHsecret"], "entry 2 is not an Apprise URL (expected scheme://...)"),
        (["json://a/b c"], "entry 1 holds white space: give one URL per entry"),
    ],
)
def test_bad_url_lists_are_refused_without_echo(value: Any, expected: str) -> None:
    """A malformed entry is reported by its number, never by its text (it holds a credential)."""
    with pytest.raises(ValueError, match=r".*") as caught:
        apprise_urls(value)
    assert expected == str(caught.value)


def test_without_apprise_check_gives_the_install_hint() -> None:
    """With apprise not importable, the module still imports and check() names the extra to install."""
    script = (
        "import sys; sys.modules['apprise'] = None\n"
        "from watcher.notify.apprise import AppriseNotifier\n"
        "print(AppriseNotifier.check({'urls': ('json://127.0.0.1/x',)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert f"[('type', {INSTALL_HINT!r})]" == done.stdout.strip()


async def test_without_apprise_send_is_permanent(monkeypatch, session, make_delivery) -> None:
    """A notifier started without apprise importable refuses sends permanently, with the install hint."""
    monkeypatch.setitem(sys.modules, "apprise", None)
    notifier = AppriseNotifier("team-apprise", {"urls": (Secret("json://127.0.0.1:9/x"),)})
    await notifier.start(session)
    try:
        with pytest.raises(PermanentDeliveryError, match="pip install 'import-watcher\\[apprise\\]'"):
            await notifier.send(make_delivery(sample_event("failed")))
    finally:
        await notifier.close()


@pytest.fixture
def apprise_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The `apprise` type registered through an entry point (as pyproject.toml's extra will), fresh registry."""
    info = tmp_path / "plugins" / "apprise_entry-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: apprise_entry\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[import_watcher.notifiers]\napprise = watcher.notify.apprise:AppriseNotifier\n"
    )
    monkeypatch.syspath_prepend(str(info.parent))
    load_notifier_types.cache_clear()
    yield
    load_notifier_types.cache_clear()


def test_config_check_locates_the_install_hint(apprise_registered, tmp_path: Path, monkeypatch) -> None:
    """Without apprise, loading a config with an apprise notifier fails with one located install hint."""
    monkeypatch.setitem(sys.modules, "apprise", None)
    (tmp_path / "urls").write_text(f"json://127.0.0.1:9/hooks/{TOKEN}\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "sendgrid:\n  api_key: SG.test-key-123\nnotifiers:\n"
        f"  team:\n    type: apprise\n    urls_file: {tmp_path / 'urls'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert [f"{config}:5: notifiers.team.type: {INSTALL_HINT}"] == caught.value.problems
