"""Default wording of notifications, and sandboxed Jinja2 overrides.

Every event becomes one target-neutral Message (watcher.notify.message), so console, Slack,
e-mail and every other notifier say the same thing in the same words, and the wording is
tested without a network. User templates run in a sandbox with StrictUndefined: a typo is
caught by `import-watcher check`, and a failure at send time falls back to the default text
instead of losing the notification.

Templates written per job (`{{ data.job_id }}`) predate batch summaries, digests, exports and
backups; a template that uses neither `message` nor `batch` is checked against per-job events
and alerts only, and where it does not fit one of those the default wording is used instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import jinja2
import structlog
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from watcher.batches import BATCH_FINISHED, STUCK
from watcher.digests import DIGEST_EVENT
from watcher.notify import text as _text
from watcher.notify.exports import BACKUP_PREFIX, EXPORT_PREFIX
from watcher.notify.facts import (
    ALERT,
    LOOKS,
    Look,
    alert_kind,
    counts,
    data_of,
    duration_seconds,
    errors_url,
    format_duration,
    is_alert,
    job_id,
    labels,
    look,
    outcome_of,
)
from watcher.notify.message import message_from_event
from watcher.notify.samples import ALERT_SAMPLES, SUMMARY_SAMPLES, sample_alert, sample_event, sample_events

__all__ = [
    "ALERT",
    "ALERT_SAMPLES",
    "LOOKS",
    "TEMPLATE_KEYS",
    "Look",
    "alert_kind",
    "console_line",
    "counts",
    "data_of",
    "default_html",
    "default_text",
    "duration_seconds",
    "errors_lines",
    "errors_url",
    "format_duration",
    "is_alert",
    "job_id",
    "labels",
    "look",
    "outcome_of",
    "render_override",
    "render_template",
    "rendered",
    "sample_alert",
    "sample_event",
    "sample_events",
    "summary_fields",
    "summary_lines",
    "template_context",
    "title",
    "validate_templates",
]

TEMPLATE_KEYS = ("title", "text", "html")
#: Context names only a template written for every event kind uses.
_SUMMARY_AWARE = frozenset({"message", "batch"})

_HINTS = {
    "alert": " (alerts use templates too: guard with {% if outcome == 'alert' %})",
    "batch_finished": " (batch summaries have no data.job_id: guard with {% if batch is defined %})",
    "digest": " (digests have no data.job_id: guard with {% if message.kind == 'watcher.digest' %})",
    "stuck": " (stuck warnings of a batch list data.jobs: guard with {% if data.jobs is defined %})",
    "export": " (exports have data.export_id, not data.job_id: guard with {% if data.job_id is defined %})",
    "backup": " (backups have data.backup, not data.job_id: guard with {% if data.job_id is defined %})",
}

_log = structlog.get_logger("watcher.notify")


# --- default wording, from the event's Message -----------------------------------


def title(event: Mapping[str, Any]) -> str:
    """One line naming the job (or batch, digest, alert) and how it ended."""
    return message_from_event(event).heading


def summary_fields(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The facts worth showing as (label, value) pairs; alerts show their details."""
    return list(message_from_event(event).facts)


def errors_lines(event: Mapping[str, Any]) -> list[str]:
    """The errors headline, then one `N × reason` line per reason."""
    return message_from_event(event).error_lines()


def summary_lines(event: Mapping[str, Any]) -> list[str]:
    return _text.summary_lines(message_from_event(event))


def default_text(event: Mapping[str, Any], *, private: bool = False) -> str:
    """The plain-text body; `private` (e-mail) adds the links only the team may see."""
    return _text.plain_text(message_from_event(event), private=private)


def default_html(event: Mapping[str, Any], *, private: bool = False) -> str:
    """A small self-contained HTML body (tables for batches and digests); every value escaped."""
    return _text.html_body(message_from_event(event), private=private)


def console_line(event: Mapping[str, Any]) -> str:
    """One line per event, e.g. `✔ completed  job=abc upsert requested=10 polls=3`."""
    return _text.console_line(message_from_event(event))


def is_summary(event: Mapping[str, Any]) -> bool:
    """A batch summary, a digest, a grouped stuck warning, an export or a backup: no `data.job_id` to template on."""
    kind = str(event.get("type", ""))
    if kind.startswith((EXPORT_PREFIX, BACKUP_PREFIX)):
        return True
    return kind in {BATCH_FINISHED, DIGEST_EVENT} or (kind == STUCK and isinstance(data_of(event).get("jobs"), list))


# --- templates ---------------------------------------------------------------


def template_context(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event's keys plus ready-made helpers, all plain data (nothing callable leaks).

    `message` is the event's Message as plain data (title, severity, facts, sections, ...);
    `batch` is the batch summary's `data` for a `contact_import.batch_finished` event, else absent.
    """
    message = message_from_event(event)
    seconds = duration_seconds(event)
    shown = look(event)
    context = {
        **{str(k): v for k, v in event.items()},
        "outcome": outcome_of(event),
        "emoji": shown.emoji,
        "symbol": shown.symbol,
        "wording": shown.wording,
        "title": message.heading,
        "duration": format_duration(seconds) if seconds is not None else None,
        "counts": counts(event),
        "summary_lines": _text.summary_lines(message),
        "errors_lines": message.error_lines(),
        "default_text": _text.plain_text(message),
        "message": message.to_dict(),
    }
    if event.get("type") == BATCH_FINISHED:
        context["batch"] = data_of(event)
    return context


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
        error = f"{type(exc).__name__}: {exc}"
        if is_summary(event) and not summary_aware(key, source):
            # A per-job template meeting a batch summary or digest: the default is meant here.
            _log.debug("notify.template_not_for_summaries", notifier=notifier, template=key, error=error)
        else:
            _log.warning("notify.template_failed", notifier=notifier, template=key, error=error)
        return None


@lru_cache(maxsize=256)
def summary_aware(key: str, source: str) -> bool:
    """True when the template uses `message` or `batch`, i.e. was written for every event kind."""
    try:
        names = meta.find_undeclared_variables(_environment(key == "html").parse(source))
    except jinja2.TemplateSyntaxError:
        return False
    return bool(names & _SUMMARY_AWARE)


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

    Each template is rendered against a sample of every outcome, every alert kind and a stuck
    warning, so a template that only breaks on `completed` (no `errors` there) is caught by
    `check`; one that uses `message` or `batch` also against a batch summary, a grouped stuck
    warning, a digest, every export outcome and both backup outcomes.
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
    aware = summary_aware(key, source)
    for name, event in samples:
        if name in SUMMARY_SAMPLES and not aware:
            continue  # a per-job template: summaries and digests fall back to the default wording
        try:
            render_template(key, source, event)
        except jinja2.exceptions.SecurityError as exc:
            return f"access denied by the sandbox: {exc}"
        except Exception as exc:  # report, whatever a template manages to raise
            hint = _HINTS.get(name.split(" ")[0], "")
            return f"template fails on a sample {name} event: {type(exc).__name__}: {exc}{hint}"
    return None


