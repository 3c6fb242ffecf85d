"""A fake PagerDuty Events API v2 (`POST /v2/enqueue`), from PagerDuty's documentation.

- 202 `{"status": "success", "message": "Event processed", "dedup_key"}` for a valid event;
  a trigger without `dedup_key` gets a generated one;
- 400 `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`
  for: a body that is not a JSON object, a `routing_key` that is not 32 characters,
  an `event_action` other than trigger/acknowledge/resolve, a `dedup_key` longer than 255
  (or missing on acknowledge/resolve), and on trigger a `payload` without `summary`
  (1 to 1024 characters), `source` or a `severity` of critical/error/warning/info;
- 429 `{"status": "throttle event", "message": "Requests for this service are arriving too
  quickly.  Please retry later."}` past `limit` events per `window` seconds per routing key
  (PagerDuty answers its community: 120 a minute per integration key).

`alerts` keeps one entry per dedup_key (PagerDuty's alert): how often it was triggered and
whether it is resolved, so a test can see that retries never open a second one.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from watcher.clock import Clock, SystemClock

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_DEDUP_KEY, MAX_SUMMARY, KEY_LENGTH = 255, 1024, 32


@dataclass
class Alert:
    """What PagerDuty keeps per dedup_key."""

    triggers: int = 0
    resolved: bool = False
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakePagerDuty:
    """Accepted events, alerts by dedup_key, refusals and throttles, in one place."""

    clock: Clock = field(default_factory=SystemClock)
    limit: int = 120
    window: float = 60.0
    events: list[dict[str, Any]] = field(default_factory=list)
    alerts: dict[str, Alert] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)
    throttled: int = 0
    requests: int = 0
    fail_next: int = 0  # answer this many requests with 503 (an outage)
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/enqueue", self.enqueue)
        return app

    async def enqueue(self, request: web.Request) -> web.Response:
        """Send an event."""
        self.requests += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"status": "unavailable", "message": "Service Unavailable"}, status=503)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._invalid(["Malformed JSON"])
        errors = problems_of(body)
        if errors:
            return self._invalid(errors)
        if not self._take(body["routing_key"]):
            self.throttled += 1
            throttle = "Requests for this service are arriving too quickly.  Please retry later."
            return web.json_response({"status": "throttle event", "message": throttle}, status=429)
        key = body.get("dedup_key") or secrets.token_hex(16)
        self.events.append(body)
        alert = self.alerts.get(key)
        if body["event_action"] == "trigger":
            if alert is None or alert.resolved:
                alert = self.alerts[key] = Alert()
            alert.triggers += 1
            alert.payload = body["payload"]
        elif body["event_action"] == "resolve" and alert is not None:
            alert.resolved = True
        return web.json_response({"status": "success", "message": "Event processed", "dedup_key": key}, status=202)

    def _take(self, routing_key: str) -> bool:
        now = self.clock.now()
        start, used = self._windows.get(routing_key, (now, 0))
        if now >= start + self.window:
            start, used = now, 0
        if used >= self.limit:
            return False
        self._windows[routing_key] = (start, used + 1)
        return True

    def _invalid(self, errors: list[str]) -> web.Response:
        answer = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        self.refused.append(answer)
        return web.json_response(answer, status=400)


def problems_of(body: Any) -> list[str]:
    """What PagerDuty would refuse in an event; empty when it would accept it."""
    if not isinstance(body, dict):
        return ["Event object must be a JSON object"]
    errors: list[str] = []
    key = body.get("routing_key")
    if not isinstance(key, str) or len(key) != KEY_LENGTH:
        errors.append("'routing_key' must be a 32 character integration key")
    action = body.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
    dedup = body.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > MAX_DEDUP_KEY):
        errors.append(f"'dedup_key' must be a string of at most {MAX_DEDUP_KEY} characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        errors += _payload_problems(body.get("payload"))
    links = body.get("links")
    if links is not None and not (isinstance(links, list) and all(isinstance(x, dict) and "href" in x for x in links)):
        errors.append("'links' must be a list of objects with 'href'")
    return errors


def _payload_problems(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors: list[str] = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not 1 <= len(summary) <= MAX_SUMMARY:
        errors.append(f"'payload.summary' must be 1 to {MAX_SUMMARY} characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        errors.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' must be one of critical, error, warning, info")
    return errors
