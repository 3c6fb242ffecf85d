"""PagerDuty Events API v2: `trigger` an alert for what the routes send, `resolve` it on success.

One incident per job, export, batch or backup: the `dedup_key` is derived from what the event is
about (`import-watcher:job:<id>`, `import-watcher:export:<id>`, `import-watcher:batch:<name>`,
`import-watcher:backup:<name>`, `import-watcher:alert:<kind>:<subject>`), so a retried delivery, a
stuck warning and the job's final outcome all land on one alert. With `resolve: true`, good news
(a completed job or batch, a ready export, a succeeded backup) sends `event_action: resolve` for
its key, so the next good backup resolves a failed one (and `key_accepted` resolves `key_refused`);
PagerDuty drops a resolve whose key has no open alert, so nothing needs to remember which keys
were triggered, across restarts or replicas. `severity` sets the level per import outcome;
alerts, exports and backups page at their message's severity.

Answers (developer.pagerduty.com, "Send an Alert Event"): 202 `{"status": "success",
"message": "Event processed", "dedup_key"}`; 400 invalid event (final); 429 and 5xx retried.
Rate: 120 events a minute per integration key (PagerDuty's answer on its community forum),
so the pacer sends at most 2 a second per key.

Which events page is the routes' choice; the usual configuration:

    notifiers:
      on-call: {type: pagerduty, routing_key_file: /run/secrets/pagerduty, resolve: true}
    routes:
      - notify: [team-slack]
      - when: {status: [failed, timed_out, completed]}   # completed only resolves
        notify: [on-call]

Dead-delivery alerts (`watcher.alert`) reach every other notifier without a route.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

import structlog

from watcher.batches import BATCH_FINISHED
from watcher.errors import PermanentDeliveryError, RetryableDeliveryError
from watcher.events import ALERT_EVENT
from watcher.models import Delivery, Outcome
from watcher.net import configured_url_problem, is_loopback_host, mask_urls_in_text
from watcher.notify.chat import ChatNotifier, Outgoing, encode, json_answer, transport_fields
from watcher.notify.exports import BACKUP_PREFIX, EXPORT_PREFIX
from watcher.notify.message import GOOD_STATUSES, Message, message_from_event
from watcher.notify.pacing import Pacer, destination_key, pacer_for
from watcher.notify.webhook import reveal
from watcher.schema import Field, Secret, boolean, optional_string, string, url

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
HOSTS = ("events.pagerduty.com", "events.eu.pagerduty.com")
SEVERITIES = ("critical", "error", "warning", "info")
DEFAULT_SEVERITY: Mapping[str, str] = {
    Outcome.FAILED.value: "critical",
    Outcome.TIMED_OUT.value: "error",
    Outcome.ERRORED.value: "warning",
    Outcome.NOT_FOUND.value: "warning",
    Outcome.COMPLETED.value: "info",
    "pending": "warning",
}
MAX_SUMMARY, MAX_DEDUP_KEY, MAX_SOURCE, KEY_LENGTH = 1024, 255, 255, 32
#: Events per second and burst per integration key (120 a minute).
RATE, BURST = 2.0, 1
_KEY = re.compile(r"[A-Za-z0-9]{32}")
_MAX_LISTED = 20
_ALERT_SUBJECTS = ("account", "notifier", "job_id")
_RESOLVES = {"key_accepted": "key_refused"}  # an alert kind that ends another one

_log = structlog.get_logger("watcher.notify")


def severity_map(value: Any) -> dict[str, str]:
    """`{outcome: severity}` over the defaults; outcomes and PagerDuty severities checked."""
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of outcome to severity")
    chosen = dict(DEFAULT_SEVERITY)
    for key, level in value.items():
        name, shown = string(key), string(level)
        if name not in DEFAULT_SEVERITY:
            raise ValueError(f"unknown outcome {name!r} (expected one of {', '.join(DEFAULT_SEVERITY)})")
        if shown not in SEVERITIES:
            raise ValueError(f"severity of {name} must be one of {', '.join(SEVERITIES)}, got {shown!r}")
        chosen[name] = shown
    return chosen


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dedup_key(message: Message) -> str:
    """What the event is about, so every retry and every later event of it hits one alert."""
    if message.kind == ALERT_EVENT:
        facts = dict(message.facts)
        subject = next((facts[k] for k in _ALERT_SUBJECTS if facts.get(k)), "")
        kind = _RESOLVES.get(message.subject, message.subject)
        key = f"import-watcher:alert:{kind}" + (f":{subject}" if subject else "")
    elif message.kind == BATCH_FINISHED or "Stuck jobs" in dict(message.facts):
        key = f"import-watcher:batch:{message.subject}"
    elif message.kind.startswith("contact_import."):
        key = f"import-watcher:job:{message.subject}"
    elif message.kind.startswith(EXPORT_PREFIX):
        key = f"import-watcher:export:{message.subject}"
    elif message.kind.startswith(BACKUP_PREFIX):
        key = f"import-watcher:backup:{message.subject}"
    else:
        key = f"import-watcher:{message.kind}:{message.subject}:{message.footer}"
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return key[: MAX_DEDUP_KEY - 17] + "~" + hashlib.sha256(key.encode()).hexdigest()[:16]


def event_action(message: Message, *, resolve: bool) -> str | None:
    """`trigger`, `resolve`, or None for good news with nothing to resolve."""
    if message.kind == ALERT_EVENT and message.subject in _RESOLVES:
        return "resolve" if resolve else None
    if resolve and message.status in GOOD_STATUSES and message.kind != ALERT_EVENT:
        return "resolve"
    return "trigger"


def custom_details(message: Message) -> dict[str, Any]:
    """Facts, counts, error reasons and listed items, as PagerDuty shows them in a table."""
    details: dict[str, Any] = {"event_type": message.kind, "status": message.status}
    details.update((label, value) for label, value in message.facts)
    if message.errors is not None:
        details["errors"] = message.errors
        details["error_reasons"] = [{"count": n, "reason": reason} for n, reason in message.reasons]
    for section in message.sections:
        listed = [_clip(line, 300) for line in section.lines[:_MAX_LISTED]]
        more = section.more + len(section.lines) - len(listed)
        details[section.heading] = listed + ([f"and {more:,} more"] if more > 0 else [])
    return details


def pagerduty_event(
    message: Message, *, routing_key: str, action: str, severity: Mapping[str, str], source: str
) -> dict[str, Any]:
    """The Events API v2 body: resolve carries only the key; trigger the whole payload."""
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key(message)}
    if action != "trigger":
        return body
    # `severity` is per import outcome; alerts, exports and backups page at their message's severity.
    level = severity.get(message.status) if message.kind.startswith("contact_import.") else message.severity.value
    body["payload"] = {
        "summary": _clip(f"{message.title}: {message.summary}", MAX_SUMMARY),
        "source": _clip(source, MAX_SOURCE),
        "severity": level if level in SEVERITIES else "warning",
        "component": _clip(message.subject, MAX_SOURCE),
        "group": "import-watcher",
        "class": message.kind,
        "custom_details": custom_details(message),
    }
    links = [{"href": item.url, "text": item.label} for item in message.links if item.url.startswith("http")]
    if links:
        body["links"] = links
    body["client"] = "import-watcher"
    if links:
        body["client_url"] = links[0]["href"]
    return body


def events_url_problem(target: str, *, allow_insecure: bool, allow_private: bool) -> str | None:
    """Why an Events API URL may not be used (None: it may)."""
    problem = configured_url_problem(target, allow_insecure=allow_insecure)
    if problem is not None:
        return problem
    host = (urlsplit(target).hostname or "").rstrip(".").lower()
    if not is_loopback_host(host) and not allow_private and host not in HOSTS:
        return f"expected PagerDuty's Events API ({EVENTS_URL}, or events.eu.pagerduty.com)"
    return None


class PagerDutyNotifier(ChatNotifier):
    """Triggers (and optionally resolves) PagerDuty alerts through the Events API v2."""

    type_name: ClassVar[str] = "pagerduty"
    service = answerer = "pagerduty"
    fields: ClassVar[tuple[Field, ...]] = (
        Field("routing_key", lambda v: Secret(string(v)), required=True, secret=True, doc="integration key"),
        Field("events_url", url("http", "https"), default=EVENTS_URL),
        Field("severity", severity_map, default=dict(DEFAULT_SEVERITY),
              doc="import outcome -> critical|error|warning|info"),
        Field("resolve", boolean, default=False, doc="resolve the alert when the job or batch completes"),
        Field("source", optional_string, default="import-watcher", doc="payload.source"),
        *transport_fields(private="allow a host other than PagerDuty's (a relay)"),
    )

    @classmethod
    def check(cls, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """A 32-character integration key and PagerDuty's Events API URL (any host when loopback)."""
        problems: list[tuple[str, str]] = []
        key = reveal(settings.get("routing_key"))
        if key is not None and not _KEY.fullmatch(key):
            problems.append(("routing_key", "expected the 32-character key of an Events API v2 integration"))
        target = settings.get("events_url") or EVENTS_URL
        problem = events_url_problem(
            str(target),
            allow_insecure=bool(settings.get("allow_insecure")),
            allow_private=bool(settings.get("allow_private")),
        )
        if problem is not None:
            problems.append(("events_url", problem))
        return problems

    def pacer(self) -> Pacer:
        """The pacer of this integration key, shared with every notifier using it."""
        target = str(self.settings.get("events_url") or EVENTS_URL)
        key = destination_key("pagerduty", target, reveal(self.settings.get("routing_key")) or "")
        return pacer_for(key, RATE, BURST, clock=self.clock)

    def render(self, delivery: Delivery) -> Outgoing | None:
        """The event to send, or None (logged) for good news with nothing to resolve."""
        routing_key = self.required_url("routing_key")
        message = message_from_event(delivery.event)
        action = event_action(message, resolve=bool(self.settings.get("resolve")))
        if action is None:
            _log.bind(notifier=self.name, delivery=delivery.id).debug(
                "notify.pagerduty_skipped", reason="good news with resolve: false", kind=message.subject)
            return None
        body = pagerduty_event(
            message,
            routing_key=routing_key,
            action=action,
            severity=self.settings.get("severity") or DEFAULT_SEVERITY,
            source=str(self.settings.get("source") or "import-watcher"),
        )
        data = encode(body, "pagerduty: the event holds a number JSON cannot carry")
        target = str(self.settings.get("events_url") or EVENTS_URL)
        return Outgoing(target, data, {"action": action, "dedup_key": body["dedup_key"]})

    def refuse(self, pacer: Pacer, status: int, text: str, headers: Mapping[str, str], wait: float | None) -> NoReturn:
        said = _pagerduty_says(text)
        shown = f"pagerduty answered HTTP {status}" + (f": {said}" if said else "")
        if status in (408, 429) or status >= 500:
            raise RetryableDeliveryError(shown, wait)
        if 300 <= status < 400:
            raise PermanentDeliveryError(f"pagerduty redirected (HTTP {status}); check events_url")
        raise PermanentDeliveryError(shown)


def _pagerduty_says(text: str) -> str:
    """PagerDuty's `message` and `errors` of an answer, masked (the body never echoes the key)."""
    answer = json_answer(text)
    if isinstance(answer, str):
        return answer
    errors = answer.get("errors")
    listed = "; ".join(str(e) for e in errors[:3]) if isinstance(errors, list) else ""
    said = str(answer.get("message") or answer.get("status") or "")
    return mask_urls_in_text(_clip(f"{said} ({listed})" if listed else said, 300))
