"""The e-mail notifier against a real aiosmtpd server and a local Mail Send endpoint."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SMTP_PASSWORD, SMTP_USER
from tests.helpers import free_port
from watcher.config import load_config
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.notify.email import EmailNotifier
from watcher.notify.registry import build_notifiers
from watcher.notify.render import sample_event
from watcher.schema import Secret

from .conftest import Answer

JOB = "0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11"


def smtp_notifier(port: int, templates: dict[str, str] | None = None, **settings: Any) -> EmailNotifier:
    base = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "from": "Watcher <watcher@example.com>",
        "to": ("ops@example.com",),
        "timeout": 5.0,
    }
    return EmailNotifier("ops-email", {**base, **settings}, templates=templates)


@pytest.mark.parametrize(
    ("outcome", "subject"),
    [
        ("completed", f"[import-watcher] contact import {JOB} completed"),
        ("errored", f"[import-watcher] contact import {JOB} errored"),
        ("failed", f"[import-watcher] contact import {JOB} failed"),
        ("timed_out", f"[import-watcher] contact import {JOB} timed_out"),
        ("not_found", f"[import-watcher] contact import {JOB} not_found"),
        ("alert", "[import-watcher] alert: key_refused"),
    ],
)
async def test_subject_is_exact(smtp_server, start_notifier, make_delivery, outcome, subject):
    """The received Subject is exactly the DESIGN.md one, whatever its length."""
    sink = smtp_server()
    notifier = await start_notifier(smtp_notifier(sink.port))

    await notifier.send(make_delivery(sample_event(outcome)))

    (message,) = sink.messages()
    assert subject == message["Subject"]


@pytest.mark.parametrize(
    ("outcome", "subject"),
    [
        ("completed", f"[import-watcher] contact import {JOB} completed"),
        ("timed_out", f"[import-watcher] contact import {JOB} timed_out"),
        ("alert", "[import-watcher] alert: key_refused"),
    ],
)
async def test_subject_and_alternative_parts(smtp_server, start_notifier, make_delivery, outcome, subject) -> None:
    """The subject is exact; the body is multipart/alternative with text and escaped HTML."""
    sink = smtp_server()
    notifier = await start_notifier(smtp_notifier(sink.port))
    event = sample_event(outcome)
    if outcome != "alert":
        event["data"]["labels"] = {"team": "<b>growth</b>"}

    await notifier.send(make_delivery(event, id="msg_abc123"))

    (message,) = sink.messages()
    assert subject == message["Subject"]
    assert "multipart/alternative" == message.get_content_type()
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert ["text/plain", "text/html"] == parts
    html = message.get_body(("html",)).get_content()
    if outcome != "alert":
        assert "&lt;b&gt;growth&lt;/b&gt;" in html and "<b>growth</b>" not in html
    assert "<msg_abc123@example.com>" == message["Message-ID"]


async def test_errored_event_attaches_the_csv_sample(smtp_server, start_notifier, make_delivery) -> None:
    """errors_sample_csv becomes errors-<job_id>.csv inside multipart/mixed."""
    sink = smtp_server()
    notifier = await start_notifier(smtp_notifier(sink.port))
    event = sample_event("errored")

    await notifier.send(make_delivery(event))

    (message,) = sink.messages()
    assert "multipart/mixed" == message.get_content_type()
    (attachment,) = list(message.iter_attachments())
    assert f"errors-{JOB}.csv" == attachment.get_filename()
    assert event["errors_sample_csv"] == attachment.get_content()
    assert "text/plain" == message.get_body(("plain",)).get_content_type()


async def test_several_recipients_each_receive_it(smtp_server, start_notifier, make_delivery) -> None:
    """Every address in `to` is an envelope recipient of the one message."""
    sink = smtp_server()
    to = ("a@example.com", "b@example.com", "c@example.com")
    notifier = await start_notifier(smtp_notifier(sink.port, to=to))

    await notifier.send(make_delivery(sample_event("completed")))

    (envelope,) = sink.envelopes
    assert list(to) == envelope.rcpt_tos
    assert "watcher@example.com" == envelope.mail_from


async def test_a_retry_carries_the_same_message_id(smtp_server, start_notifier, make_delivery) -> None:
    """Two sends of one delivery share a Message-ID, so a retry is recognisable."""
    sink = smtp_server()
    notifier = await start_notifier(smtp_notifier(sink.port))
    delivery = make_delivery(sample_event("failed"), id="msg_retry")

    await notifier.send(delivery)
    await notifier.send(delivery)

    assert 1 == len({m["Message-ID"] for m in sink.messages()})


# Plain-text AUTH is fine on loopback in a test; aiosmtpd warns about it anyway.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize(
    ("password", "error"),
    [(SMTP_PASSWORD, None), ("wrong-password", PermanentDeliveryError)],
)
async def test_auth(smtp_server, start_notifier, make_delivery, password, error) -> None:
    """username/password log in; a refused login (535) is permanent."""
    sink = smtp_server(auth=True)
    notifier = await start_notifier(smtp_notifier(sink.port, username=SMTP_USER, password=Secret(password)))
    delivery = make_delivery(sample_event("completed"))

    if error is None:
        await notifier.send(delivery)
        assert 1 == len(sink.envelopes)
    else:
        with pytest.raises(error, match="535"):
            await notifier.send(delivery)
        assert [] == sink.envelopes


async def test_server_not_listening_is_retryable(start_notifier, make_delivery) -> None:
    """Connection refused is retried later."""
    notifier = await start_notifier(smtp_notifier(free_port(), timeout=2.0))

    with pytest.raises(RetryableDeliveryError):
        await notifier.send(make_delivery(sample_event("completed")))


@pytest.mark.parametrize(
    ("refusal", "error"),
    [
        ("550 5.1.1 recipient rejected", PermanentDeliveryError),
        ("452 4.2.2 mailbox full, try later", RetryableDeliveryError),
    ],
)
async def test_refused_recipient(smtp_server, start_notifier, make_delivery, refusal, error) -> None:
    """A 5xx refusal of the recipient is permanent; a 4xx one is retried."""
    sink = smtp_server(refuse={"ops@example.com"}, refusal=refusal)
    notifier = await start_notifier(smtp_notifier(sink.port))

    with pytest.raises(error, match=refusal[:3]):
        await notifier.send(make_delivery(sample_event("completed")))


async def test_starttls_required_but_unsupported_is_permanent(smtp_server, start_notifier, make_delivery) -> None:
    """starttls: true against a server without STARTTLS never sends in clear text."""
    sink = smtp_server()
    notifier = await start_notifier(smtp_notifier(sink.port, starttls=True))

    with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
        await notifier.send(make_delivery(sample_event("completed")))
    assert [] == sink.envelopes


async def test_templates_override_subject_and_text(smtp_server, start_notifier, make_delivery) -> None:
    """title and text templates replace the subject and plain part; HTML keeps its default."""
    sink = smtp_server()
    templates = {"title": "Import {{ data.job_id }}: {{ wording }}", "text": "{{ default_text }}"}
    notifier = await start_notifier(smtp_notifier(sink.port, templates=templates))

    await notifier.send(make_delivery(sample_event("errored")))

    (message,) = sink.messages()
    assert f"Import {JOB}: completed with errors" == message["Subject"]
    assert "8 × invalid email" in message.get_body(("plain",)).get_content()


async def test_sendgrid_transport_posts_mail_send_json(http_server, start_notifier, make_delivery) -> None:
    """transport sendgrid POSTs the Mail Send JSON with a Bearer key, the CSV base64-encoded."""
    server = await http_server(default=Answer(202, ""))
    settings = {
        "transport": "sendgrid",
        "api_key": Secret("SG.test-key"),
        "api_base_url": server.url,
        "from": "watcher@example.com",
        "to": ("a@example.com", "b@example.com"),
    }
    notifier = await start_notifier(EmailNotifier("sg", settings))
    event = sample_event("errored")

    await notifier.send(make_delivery(event))

    (request,) = server.requests
    body = json.loads(request.body)
    assert ("POST", "/v3/mail/send") == (request.method, request.path)
    assert "Bearer SG.test-key" == request.headers["Authorization"]
    assert [{"to": [{"email": "a@example.com"}, {"email": "b@example.com"}]}] == body["personalizations"]
    assert {"email": "watcher@example.com"} == body["from"]
    assert f"[import-watcher] contact import {JOB} errored" == body["subject"]
    assert ["text/plain", "text/html"] == [c["type"] for c in body["content"]]
    (attachment,) = body["attachments"]
    assert f"errors-{JOB}.csv" == attachment["filename"]
    assert event["errors_sample_csv"] == base64.b64decode(attachment["content"]).decode()


async def test_sendgrid_transport_follows_sendgrid_base_url(
    http_server, start_notifier, make_delivery, tmp_path: Path
) -> None:
    """Without its own api_base_url, e-mail goes to sendgrid.base_url (an EU account's host) with its key."""
    eu = await http_server(default=Answer(202, ""))
    path = tmp_path / "watcher.yaml"
    path.write_text(
        "sendgrid:\n"
        "  api_key: ${KEY}\n"
        f"  base_url: {eu.url}\n"
        "notifiers:\n"
        "  mail:\n"
        "    type: email\n"
        "    transport: sendgrid\n"
        "    from: watcher@example.com\n"
        "    to: [ops@example.com]\n"
    )
    config = load_config(path, env={"KEY": "SG.eu-account-key"})
    notifier = await start_notifier(build_notifiers(config)["mail"])

    await notifier.send(make_delivery(sample_event("completed")))

    (request,) = eu.requests
    assert ("POST", "/v3/mail/send") == (request.method, request.path)
    assert "Bearer SG.eu-account-key" == request.headers["Authorization"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(429, "", {"Retry-After": "2"}), RetryableDeliveryError),
        (Answer(500, "oops"), RetryableDeliveryError),
        (Answer(400, '{"errors":[{"message":"bad from"}]}'), PermanentDeliveryError),
        (Answer(401, '{"errors":[{"message":"unauthorized"}]}'), PermanentDeliveryError),
    ],
)
async def test_sendgrid_transport_errors(http_server, start_notifier, make_delivery, answer, error) -> None:
    """429/5xx are retried; other 4xx are permanent and quote the answer."""
    server = await http_server(script=[answer])
    settings = {
        "transport": "sendgrid",
        "api_key": Secret("SG.test-key"),
        "api_base_url": server.url,
        "from": "watcher@example.com",
        "to": ("a@example.com",),
    }
    notifier = await start_notifier(EmailNotifier("sg", settings))

    with pytest.raises(error, match=str(answer.status)):
        await notifier.send(make_delivery(sample_event("completed")))


@pytest.mark.parametrize(
    ("settings", "problems"),
    [
        ({"host": "smtp.example.com", "starttls": True}, []),
        ({"starttls": True}, ["host"]),
        ({"host": "smtp.example.com", "starttls": False, "password": Secret("pw12")}, ["starttls"]),
        (
            {
                "host": "smtp.example.com",
                "starttls": False,
                "tls": True,
                "password": Secret("pw12"),
            },
            [],
        ),
        ({"host": "127.0.0.1", "starttls": False, "password": Secret("pw12")}, []),
        ({"transport": "sendgrid", "api_base_url": "http://api.example.com"}, ["api_base_url"]),
        ({"transport": "sendgrid", "api_base_url": "https://api.sendgrid.com"}, []),
        ({"transport": "sendgrid", "api_base_url": "https://api.sendgrid.com/v3"}, ["api_base_url"]),
        ({"transport": "sendgrid", "api_base_url": "http://api.example.com", "allow_insecure": True}, []),
    ],
)
def test_check(settings: dict[str, Any], problems: list[str]) -> None:
    """SMTP needs a host and never sends a password unencrypted off loopback."""
    assert problems == [key for key, _ in EmailNotifier.check(settings)]


def test_describe_masks_password_and_api_key() -> None:
    """Secrets are masked in describe()."""
    notifier = smtp_notifier(25, password=Secret("hunter2-pw"), api_key=Secret("SG.key-1"))

    shown = notifier.describe()

    assert ("********", "********") == (shown["password"], shown["api_key"])
    assert "hunter2-pw" not in str(shown)


@pytest.mark.parametrize(
    ("kind", "subject", "table"),
    [
        ("batch_finished", "[import-watcher] batch nightly-2026-11-27 failed", "<th align='left'>Errored</th>"),
        ("stuck", f"[import-watcher] Contact import {JOB} still pending after 2h", None),
        (
            "stuck batch",
            "[import-watcher] 12 contact imports of batch nightly-2026-11-27 still pending",
            "<th align='left'>Pending for</th>",
        ),
        ("digest", "[import-watcher] digest morning", "<th align='left'>Took</th>"),
    ],
)
async def test_summary_kinds_are_mailed_with_tables(smtp_server, start_notifier, make_delivery, kind, subject, table):
    """Batch summaries, stuck warnings and digests arrive with their subject, and tables in the HTML part."""
    sink = smtp_server()
    notifier = await start_notifier(smtp_notifier(sink.port))

    await notifier.send(make_delivery(sample_event(kind)))

    (message,) = sink.messages()
    assert subject == message["Subject"]
    html = message.get_body(("html",)).get_content()
    if table is not None:
        assert table in html
    assert "multipart/alternative" == message.get_content_type()
