"""Default wording of notifications, and sandboxed Jinja2 overrides.

Everything here is a pure function of the event dict (the DESIGN.md webhook
body), so console, Slack and e-mail say the same thing in the same words and
the wording is tested without a network. User templates run in a sandbox with
StrictUndefined: a typo is caught by `import-watcher check`, and a failure at
send time falls back to the default text instead of losing the notification.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import jinja2
import structlog
from jinja2.sandbox import ImmutableSandboxedEnvironment

from watcher.events import ALERT_EVENT, alert_event, outcome_event
from watcher.models import JobState, Outcome, Snapshot

TEMPLATE_KEYS = ("title", "text", "html")
ALERT = "alert"

_log = structlog.get_logger("watcher.notify")


@dataclass(frozen=True, slots=True)
class Look:
    """How one outcome reads: a plain symbol (console), an emoji (chat, mail) and words."""

    symbol: str
    emoji: str
    wording: str


LOOKS: Mapping[str, Look] = {
    Outcome.COMPLETED.value: Look("✔", "✅", "completed"),
    Outcome.ERRORED.value: Look("⚠", "⚠️", "completed with errors"),
    Outcome.FAILED.value: Look("✖", "❌", "failed"),
    Outcome.TIMED_OUT.value: Look("⏱", "⏰", "timed out"),
    Outcome.NOT_FOUND.value: Look("?", "🔍", "not found"),
    ALERT: Look("!", "🚨", "needs attention"),
}

# Order in which SendGrid's counters are shown; other *_count keys follow.
_COUNT_KEYS = tuple(f"{n}_count" for n in ("requested", "created", "updated", "deleted", "errored"))


# --- facts drawn from the event ---------------------------------------------


def data_of(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The event's `data` mapping, or an empty one."""
    data = event.get("data")
    return data if isinstance(data, Mapping) else {}


def is_alert(event: Mapping[str, Any]) -> bool:
    return event.get("type") == ALERT_EVENT


def outcome_of(event: Mapping[str, Any]) -> str:
    """`completed` ... `not_found`, or `alert` for a watcher.alert."""
    if is_alert(event):
        return ALERT
    status = data_of(event).get("status")
    if isinstance(status, str) and status:
        return status
    kind = str(event.get("type", ""))
    return kind.rpartition(".")[2] or "unknown"


def look(event: Mapping[str, Any]) -> Look:
    outcome = outcome_of(event)
    return LOOKS.get(outcome) or Look("•", "ℹ️", outcome)


def job_id(event: Mapping[str, Any]) -> str:
    return str(data_of(event).get("job_id") or "?")


def alert_kind(event: Mapping[str, Any]) -> str:
    return str(data_of(event).get("alert") or "unknown")


def title(event: Mapping[str, Any]) -> str:
    """One line naming the job and how it ended."""
    shown = look(event)
    if is_alert(event):
        return f"{shown.emoji} import-watcher alert: {alert_kind(event)}"
    return f"{shown.emoji} Contact import {job_id(event)} {shown.wording}"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration_seconds(event: Mapping[str, Any]) -> float | None:
    """finished_at - started_at, when SendGrid gave both."""
    data = data_of(event)
    start, end = parse_time(data.get("started_at")), parse_time(data.get("finished_at"))
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def format_duration(seconds: float) -> str:
    """`1h 2m 3s` style; sub-second durations read as `0s`."""
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if secs or not parts:
        parts.append(f"{secs}s")
    return " ".join(parts)


def counts(event: Mapping[str, Any]) -> dict[str, int | float]:
    """SendGrid's counters by short name (`requested`, `created`, ...), in a stable order."""
    results = data_of(event).get("results")
    if not isinstance(results, Mapping):
        return {}
    keys = [k for k in _COUNT_KEYS if k in results]
    keys += sorted(k for k in results if str(k).endswith("_count") and k not in _COUNT_KEYS)
    shown: dict[str, int | float] = {}
    for key in keys:
        value = results[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown[str(key).removesuffix("_count")] = value
    return shown


def labels(event: Mapping[str, Any]) -> dict[str, str]:
    raw = data_of(event).get("labels")
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def errors_url(event: Mapping[str, Any]) -> str | None:
    results = data_of(event).get("results")
    url = results.get("errors_url") if isinstance(results, Mapping) else None
    return url if isinstance(url, str) and url else None


def errors_lines(event: Mapping[str, Any]) -> list[str]:
    """The errors summary: rows and top reasons, or why the file could not be read."""
    errors = data_of(event).get("errors")
    if not isinstance(errors, Mapping):
        return []
    if "unavailable" in errors:
        return [f"errors file unavailable: {errors['unavailable']}"]
    lines = [f"{errors.get('rows', 0)} rows rejected"]
    for item in errors.get("top_reasons") or []:
        if isinstance(item, Mapping):
            lines.append(f"{item.get('count', 0)} × {item.get('reason', '')}")
    return lines


def summary_fields(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The facts worth showing as (label, value) pairs; alerts show their details."""
    data = data_of(event)
    if is_alert(event):
        fields = [("Alert", alert_kind(event)), ("Message", str(data.get("message", "")))]
        fields += [(str(k), str(v)) for k, v in data.items() if k not in {"alert", "message"}]
        return fields
    fields = [("Job", job_id(event))]
    if data.get("job_type"):
        fields.append(("Type", str(data["job_type"])))
    fields.append(("Outcome", look(event).wording))
    if shown := counts(event):
        fields.append(("Counts", ", ".join(f"{k} {_number(v)}" for k, v in shown.items())))
    if (seconds := duration_seconds(event)) is not None:
        fields.append(("Duration", format_duration(seconds)))
    if shown_labels := labels(event):
        fields.append(("Labels", ", ".join(f"{k}={v}" for k, v in shown_labels.items())))
    watch = data.get("watch")
    if isinstance(watch, Mapping) and watch.get("polls") is not None:
        fields.append(("Polls", str(watch["polls"])))
    return fields


def summary_lines(event: Mapping[str, Any]) -> list[str]:
    lines = [f"{label}: {value}" for label, value in summary_fields(event)]
    if errs := errors_lines(event):
        lines.append("Errors: " + errs[0])
        lines += [f"  {line}" for line in errs[1:]]
    if url := errors_url(event):
        lines.append(f"Errors file (short-lived link): {url}")
    return lines


def default_text(event: Mapping[str, Any]) -> str:
    return "\n".join([title(event), "", *summary_lines(event)]) + "\n"


def default_html(event: Mapping[str, Any]) -> str:
    """A small self-contained HTML body; every value escaped."""
    esc = html.escape
    rows = "".join(
        f"<tr><th align='left'>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in summary_fields(event)
    )
    parts = [f"<h2>{esc(title(event))}</h2>", f"<table>{rows}</table>"]
    if errs := errors_lines(event):
        items = "".join(f"<li>{esc(line)}</li>" for line in errs[1:])
        parts.append(f"<p><b>Errors:</b> {esc(errs[0])}</p>" + (f"<ul>{items}</ul>" if items else ""))
    if url := errors_url(event):
        parts.append(f'<p><a href="{esc(url)}">Download the errors file</a> (short-lived link)</p>')
    kind, at = esc(str(event.get("type", ""))), esc(str(event.get("timestamp", "")))
    parts.append(f"<p><small>{kind} at {at}</small></p>")
    return "<html><body>" + "".join(parts) + "</body></html>\n"


def console_line(event: Mapping[str, Any]) -> str:
    """One line per event, e.g. `✔ completed  job=abc upsert requested=10 polls=3`."""
    shown = look(event)
    data = data_of(event)
    if is_alert(event):
        return _one_line(f"{shown.symbol} {ALERT_EVENT} {alert_kind(event)}: {data.get('message', '')}")
    parts = [f"{shown.symbol} {outcome_of(event):<10} job={job_id(event)}"]
    if data.get("job_type"):
        parts.append(str(data["job_type"]))
    parts += [f"{k}={_number(v)}" for k, v in counts(event).items()]
    if (seconds := duration_seconds(event)) is not None:
        parts.append(f"took={format_duration(seconds).replace(' ', '')}")
    watch = data.get("watch")
    if isinstance(watch, Mapping) and watch.get("polls") is not None:
        parts.append(f"polls={watch['polls']}")
    if shown_labels := labels(event):
        parts.append("labels=" + ",".join(f"{k}={v}" for k, v in shown_labels.items()))
    if errs := errors_lines(event):
        # "errors: 10 rows rejected; 8 × invalid email; 1 × duplicate contact"
        parts.append(f"errors: {'; '.join(errs[:4])}")
    return _one_line(" ".join(parts))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _one_line(text: str) -> str:
    # Labels and messages come from users and servers: keep "one line per event" true.
    return "".join(ch if ch.isprintable() else " " for ch in text)


# --- templates ---------------------------------------------------------------


def template_context(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event's keys plus ready-made helpers, all plain data (nothing callable leaks)."""
    seconds = duration_seconds(event)
    shown = look(event)
    return {
        **{str(k): v for k, v in event.items()},
        "outcome": outcome_of(event),
        "emoji": shown.emoji,
        "symbol": shown.symbol,
        "wording": shown.wording,
        "title": title(event),
        "duration": format_duration(seconds) if seconds is not None else None,
        "counts": counts(event),
        "summary_lines": summary_lines(event),
        "errors_lines": errors_lines(event),
        "default_text": default_text(event),
    }


@lru_cache(maxsize=4)
def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    # Immutable: the context holds the delivery's own event dicts, which a template
    # calling `data.labels.clear()` must not be able to change.
    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=autoescape)


@lru_cache(maxsize=256)
def _compile(key: str, source: str) -> jinja2.Template:
    return _environment(key == "html").from_string(source)


def render_template(key: str, source: str, event: Mapping[str, Any]) -> str:
    """Render one user template; raises whatever Jinja2 raises."""
    rendered = _compile(key, source).render(template_context(event))
    return " ".join(rendered.split()) if key == "title" else rendered


def render_override(templates: Mapping[str, str], key: str, event: Mapping[str, Any], *, notifier: str) -> str | None:
    """The user's template for `key`, or None (no template, or it failed: logged, default used)."""
    source = templates.get(key)
    if not source:
        return None
    try:
        return render_template(key, source, event)
    except Exception as exc:  # a broken template must never lose the notification
        _log.warning(
            "notify.template_failed",
            notifier=notifier,
            template=key,
            error=f"{type(exc).__name__}: {exc}",
        )
        return None


def rendered(
    templates: Mapping[str, str],
    key: str,
    event: Mapping[str, Any],
    default: Callable[[Mapping[str, Any]], str],
    *,
    notifier: str,
) -> str:
    """The override for `key` when it renders, else `default(event)`."""
    text = render_override(templates, key, event, notifier=notifier)
    return default(event) if text is None else text


def validate_templates(templates: Mapping[str, str]) -> list[tuple[str, str]]:
    """Problems as (template key, message): unknown keys, syntax errors, a sample that fails to render.

    Each template is rendered against a sample of every outcome and every alert kind, so a
    template that only breaks on `completed` (no `errors` there) is caught by `check`.
    """
    problems: list[tuple[str, str]] = []
    samples = sample_events()
    for key, source in templates.items():
        if key not in TEMPLATE_KEYS:
            problems.append((str(key), f"unknown template key (expected one of {', '.join(TEMPLATE_KEYS)})"))
            continue
        if not isinstance(source, str):
            problems.append((key, "expected a template string"))
            continue
        try:
            _compile(key, source)
        except jinja2.TemplateSyntaxError as exc:
            problems.append((key, f"template syntax error on line {exc.lineno}: {exc.message}"))
            continue
        if (problem := _first_failing_render(key, source, samples)) is not None:
            problems.append((key, problem))
    return problems


def _first_failing_render(key: str, source: str, samples: list[tuple[str, dict[str, Any]]]) -> str | None:
    for name, event in samples:
        try:
            render_template(key, source, event)
        except jinja2.exceptions.SecurityError as exc:
            return f"access denied by the sandbox: {exc}"
        except Exception as exc:  # report, whatever a template manages to raise
            hint = " (alerts use templates too: guard with {% if outcome == 'alert' %})" if "alert" in name else ""
            return f"template fails on a sample {name} event: {type(exc).__name__}: {exc}{hint}"
    return None


# --- sample events (notify-test, template validation) -----------------------

_SAMPLE_AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC).timestamp()
_SAMPLE_CSV = "email,first_name,error\nnot-an-email,Ann,invalid email\n,Bob,missing field\n"
_SAMPLE_ERRORED = {Outcome.ERRORED: 10, Outcome.FAILED: 1000}


#: Every alert kind the watcher sends, with a sample message and details as the sender builds them.
ALERT_SAMPLES: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "key_refused": ("SendGrid refused the API key (HTTP 401): authorization required", {}),
    "key_accepted": ("SendGrid accepts the API key again", {}),
    "delivery_dead": (
        "notification msg_0b5f1c9e to team-slack is dead after 12 attempts: HTTP 500",
        {
            "notifier": "team-slack",
            "job_id": "0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11",
            "delivery_id": "msg_0b5f1c9e",
            "event_type": "contact_import.failed",
        },
    ),
}


def sample_events() -> list[tuple[str, dict[str, Any]]]:
    """A fresh sample of every outcome and every alert kind, each named (`completed`, `alert key_refused`)."""
    samples = [(outcome.value, sample_event(outcome.value)) for outcome in Outcome]
    samples += [(f"alert {kind}", sample_alert(kind)) for kind in ALERT_SAMPLES]
    return samples


def sample_alert(kind: str = "key_refused") -> dict[str, Any]:
    """A `watcher.alert` event of one of the ALERT_SAMPLES kinds."""
    message, details = ALERT_SAMPLES[kind]
    return alert_event(kind, message, at=_SAMPLE_AT, **details)


def sample_event(outcome: str = "errored") -> dict[str, Any]:
    """A realistic, freshly built event for `outcome` (any Outcome value, or `alert`)."""
    if outcome in {ALERT, ALERT_EVENT}:
        return sample_alert("key_refused")
    result = Outcome(outcome)  # ValueError names an unknown outcome
    job = JobState(
        id="0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11",
        labels={"team": "growth", "list": "newsletter"},
        notify=None,
        added_at=_SAMPLE_AT - 900,
        next_poll_at=_SAMPLE_AT,
    )
    errored = _SAMPLE_ERRORED.get(result, 0)
    ok = 1000 - errored
    results: dict[str, Any] = {
        "requested_count": 1000,
        "created_count": max(0, ok - 10),
        "updated_count": min(10, ok),
        "errored_count": errored,
    }
    errors = None
    if errored:
        results["errors_url"] = "https://example.com/errors/0b5f1c9e.csv?token=sample"
        reasons = [("invalid email", errored * 4 // 5), ("missing field", errored // 5)]
        errors = {"rows": errored, "top_reasons": [{"reason": r, "count": n} for r, n in reasons]}
    finished = result not in {Outcome.TIMED_OUT, Outcome.NOT_FOUND}
    snapshot = (
        None
        if result is Outcome.NOT_FOUND
        else Snapshot(
            status=outcome if finished else "pending",
            job_type="upsert",
            results=results if finished else {},
            started_at="2026-11-27T09:52:30Z" if finished else None,
            finished_at="2026-11-27T09:58:45Z" if finished else None,
        )
    )
    event = outcome_event(job, outcome=result, snapshot=snapshot, polls=7, detected_at=_SAMPLE_AT, errors=errors)
    if errored:
        event["errors_sample_csv"] = _SAMPLE_CSV
    return event
