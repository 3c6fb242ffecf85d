"""E-mail: SMTP through aiosmtplib, or SendGrid's Mail Send API.

Mail goes to the team's own addresses, so it is the one rendered target that shows a
message's private links (an export's presigned download URLs).

The Message-ID comes from the Delivery id, so a retried e-mail carries the
same id and mail clients (and people) can tell a retry from a new event.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, parseaddr
from typing import Any, ClassVar

import aiohttp
import aiosmtplib
import structlog

from watcher.batches import BATCH_FINISHED, STUCK
from watcher.digests import DIGEST_EVENT
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.models import Delivery
from watcher.net import base_url_problem, is_loopback_host, mask_url
from watcher.notify import render
from watcher.notify.base import BaseNotifier
from watcher.notify.exports import BACKUP_PREFIX, EXPORT_PREFIX
from watcher.notify.message import message_from_event
from watcher.notify.webhook import (
    USER_AGENT,
    network_error,
    raise_for_answer,
    read_some,
    reveal,
)
from watcher.schema import (
    Field,
    boolean,
    choice,
    duration,
    integer,
    optional_string,
    secret,
    string,
    string_list,
    url,
)

_MAX_HEADER_LINE = 998
_MAX_SUBJECT = 900  # leaves room for "Subject: " within one 998-character line

_log = structlog.get_logger("watcher.notify")

DEFAULT_API_BASE = "https://api.sendgrid.com"


def email_subject(event: Mapping[str, Any]) -> str:
    """The DESIGN.md subject line for outcomes; the same pattern for every other event kind."""
    message = message_from_event(event)
    if render.is_alert(event):
        return f"[import-watcher] alert: {message.subject}"
    if message.kind == BATCH_FINISHED:
        return f"[import-watcher] batch {message.subject} {message.status}"
    if message.kind == STUCK:
        return f"[import-watcher] {message.title}"
    if message.kind == DIGEST_EVENT:
        return f"[import-watcher] digest {message.subject}"
    if message.kind.startswith(EXPORT_PREFIX):
        return f"[import-watcher] contact export {message.subject} {message.status}"
    if message.kind.startswith(BACKUP_PREFIX):
        return f"[import-watcher] backup {message.subject} {message.status}"
    return f"[import-watcher] contact import {render.job_id(event)} {render.outcome_of(event)}"


def _private_text(event: Mapping[str, Any]) -> str:
    # Mail goes to the team's own addresses: it may carry an export's download links.
    return render.default_text(event, private=True)


def _private_html(event: Mapping[str, Any]) -> str:
    return render.default_html(event, private=True)


def message_id(delivery_id: str, sender: str) -> str:
    """`<delivery-id@sender-domain>`: stable across retries of one delivery."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "import-watcher.invalid"
    return f"<{delivery_id}@{domain}>"


def attachment(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(file name, CSV text) of the errors sample, when the event carries one."""
    sample = event.get("errors_sample_csv")
    if not isinstance(sample, str) or not sample:
        return None
    return f"errors-{render.job_id(event)}.csv", sample


def build_email(
    event: Mapping[str, Any],
    *,
    delivery_id: str,
    sender: str,
    recipients: Sequence[str],
    subject: str,
    text: str,
    html: str,
) -> EmailMessage:
    """multipart/alternative (text + HTML), inside multipart/mixed when the CSV is attached."""
    message = EmailMessage()
    # Header values must stay on one line: a template could produce a newline.
    message["Subject"] = " ".join(subject.split())[:_MAX_SUBJECT]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(delivery_id, sender)
    message["X-Import-Watcher-Delivery"] = delivery_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    if file := attachment(event):
        name, csv_text = file
        message.add_attachment(csv_text.encode(), maintype="text", subtype="csv", filename=name)
    return message


def flatten(message: EmailMessage) -> bytes:
    """The message as sent over SMTP.

    Header lines may run to RFC 5322's 998 characters: at the default 78, CPython folds
    a 70-77 character subject right after `Subject:`, and the receiver sees a leading space.
    """
    out = io.BytesIO()
    BytesGenerator(out, policy=SMTP.clone(max_line_length=_MAX_HEADER_LINE)).flatten(message)
    return out.getvalue()


def sendgrid_payload(
    event: Mapping[str, Any],
    *,
    delivery_id: str,
    sender: str,
    recipients: Sequence[str],
    subject: str,
    text: str,
    html: str,
) -> dict[str, Any]:
    """The Mail Send v3 JSON for the same message."""
    name, address = parseaddr(sender)
    payload: dict[str, Any] = {
        "personalizations": [{"to": [{"email": parseaddr(r)[1] or r} for r in recipients]}],
        "from": {"email": address or sender, **({"name": name} if name else {})},
        "subject": " ".join(subject.split()),
        "content": [{"type": "text/plain", "value": text}, {"type": "text/html", "value": html}],
        "headers": {"X-Import-Watcher-Delivery": delivery_id},
    }
    if file := attachment(event):
        filename, csv_text = file
        payload["attachments"] = [
            {
                "content": base64.b64encode(csv_text.encode()).decode(),
                "type": "text/csv",
                "filename": filename,
                "disposition": "attachment",
            }
        ]
    return payload


def smtp_error(exc: Exception) -> RetryableDeliveryError | PermanentDeliveryError:
    """4xx replies and network trouble are retried; 5xx replies and refusals are final."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        shown = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if all(code >= 500 for code in codes):
            return PermanentDeliveryError(f"smtp: every recipient refused: {shown}")
        return RetryableDeliveryError(f"smtp: every recipient refused: {shown}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        message = f"smtp: {exc.code} {exc.message}"
        return PermanentDeliveryError(message) if exc.code >= 500 else RetryableDeliveryError(message)
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return RetryableDeliveryError(f"smtp: {type(exc).__name__}: {exc}")
    # Anything else (no STARTTLS, no AUTH on the server) is a setup problem retries cannot fix.
    return PermanentDeliveryError(f"smtp: {type(exc).__name__}: {exc}")


class EmailNotifier(BaseNotifier):
    """Sends a text + HTML e-mail through SMTP or SendGrid's Mail Send API."""

    type_name: ClassVar[str] = "email"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("host", optional_string, doc="SMTP server; required for transport smtp"),
        Field("port", integer(1, 65535), default=587),
        Field("starttls", boolean, default=True, doc="upgrade with STARTTLS (required when true)"),
        Field("tls", boolean, default=False, doc="implicit TLS, usually port 465"),
        Field("username", optional_string),
        Field("password", secret, secret=True),
        Field("from", string, required=True),
        Field("to", string_list, required=True),
        Field("timeout", duration(0.001), default=30.0),
        Field("transport", choice("smtp", "sendgrid"), default="smtp"),
        Field("api_key", secret, secret=True, doc="transport sendgrid; defaults to sendgrid.api_key"),
        Field(
            "api_base_url",
            url("http", "https"),
            doc=(
                "transport sendgrid: the API base, mail goes to <api_base_url>/v3/mail/send; defaults to "
                f"sendgrid.base_url (EU accounts: https://api.eu.sendgrid.com), else {DEFAULT_API_BASE}"
            ),
        ),
        Field("allow_insecure", boolean, default=False, doc="allow http to a non-loopback api_base_url"),
    )

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A host for SMTP; no password in clear text to another machine; https for the API."""
        problems: list[tuple[str, str]] = []
        if settings.get("transport") == "sendgrid":
            base = settings.get("api_base_url")
            if isinstance(base, str):
                problem = base_url_problem(base, bool(settings.get("allow_insecure")))
                if problem is not None:
                    problems.append(("api_base_url", problem))
            return problems
        host = settings.get("host")
        if not host:
            problems.append(("host", "required for transport smtp"))
        encrypted = settings.get("tls") or settings.get("starttls") is not False
        if settings.get("password") and not encrypted and not is_loopback_host(host):
            unencrypted = "the password would cross the network unencrypted: enable starttls or tls"
            problems.append(("starttls", unencrypted))
        return problems

    async def send(self, delivery: Delivery) -> None:
        """Send one e-mail to every recipient; raise a retryable or permanent error on failure."""
        event = delivery.event
        parts = {
            "subject": render.rendered(self.templates, "title", event, email_subject, notifier=self.name),
            "text": render.rendered(self.templates, "text", event, _private_text, notifier=self.name),
            "html": render.rendered(self.templates, "html", event, _private_html, notifier=self.name),
        }
        sender = str(self.settings["from"])
        recipients = [str(r) for r in self.settings["to"]]
        log = _log.bind(
            notifier=self.name,
            delivery=delivery.id,
            transport=self.settings.get("transport") or "smtp",
        )
        try:
            if self.settings.get("transport") == "sendgrid":
                payload = sendgrid_payload(
                    event, delivery_id=delivery.id, sender=sender, recipients=recipients, **parts
                )
                await self._send_sendgrid(payload)
            else:
                message = build_email(event, delivery_id=delivery.id, sender=sender, recipients=recipients, **parts)
                await self._send_smtp(message, sender, recipients, log)
        except PermanentDeliveryError as exc:
            log.warning("notify.email_rejected", error=str(exc))
            raise
        except RetryableDeliveryError as exc:
            log.info("notify.email_failed", error=str(exc), retry_after=exc.retry_after)
            raise
        log.debug("notify.email_delivered", recipients=len(recipients))

    async def _send_smtp(self, message: EmailMessage, sender: str, recipients: list[str], log: Any) -> None:
        tls = bool(self.settings.get("tls"))
        starttls = self.settings.get("starttls")
        try:
            refused, _ = await aiosmtplib.send(
                flatten(message),
                sender=parseaddr(sender)[1] or sender,
                recipients=[parseaddr(r)[1] or r for r in recipients],
                hostname=str(self.settings.get("host") or "localhost"),
                port=int(self.settings.get("port") or (465 if tls else 587)),
                username=self.settings.get("username") or None,
                password=reveal(self.settings.get("password")),
                use_tls=tls,
                # With implicit TLS the channel is already encrypted; STARTTLS would be refused.
                start_tls=False if tls else (True if starttls is None else bool(starttls)),
                timeout=float(self.settings.get("timeout") or 30.0),
            )
        except Exception as exc:  # every aiosmtplib failure is mapped to retryable/permanent
            raise smtp_error(exc) from None
        if refused:
            # Others got it; a retry would send them a duplicate, so report instead of retrying.
            log.warning(
                "notify.email_recipients_refused",
                refused={r: f"{resp.code} {resp.message}" for r, resp in refused.items()},
            )

    async def _send_sendgrid(self, payload: Mapping[str, Any]) -> None:
        key = reveal(self.settings.get("api_key"))
        if not key:
            raise PermanentDeliveryError("email: transport sendgrid needs api_key")
        base = str(self.settings.get("api_base_url") or DEFAULT_API_BASE).rstrip("/")
        if problem := base_url_problem(base, bool(self.settings.get("allow_insecure"))):
            raise PermanentDeliveryError(f"email: api_base_url {mask_url(base)} {problem}")
        timeout = aiohttp.ClientTimeout(total=float(self.settings.get("timeout") or 30.0))
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        try:
            async with self.session.post(
                f"{base}/v3/mail/send",
                data=json.dumps(payload, allow_nan=False).encode(),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                text = "" if status < 300 else await read_some(response)
                answer_headers = dict(response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise network_error("sendgrid mail send", exc) from None
        if status >= 300:
            raise_for_answer("sendgrid mail send", status, text, answer_headers)
