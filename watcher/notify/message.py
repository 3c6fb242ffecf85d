"""One target-neutral message per event; every notifier only renders it in its own format.

`message_from_event` reads any event the watcher sends (an outcome, a batch summary, a stuck
warning single or grouped, a digest, an alert, an export's outcome, a backup's) and says what
matters about it once: a title, a severity, a one-sentence summary, facts, error reasons,
sections of items (with rows for targets that draw tables) and links. Renderers decide how
much of it fits their limits.

Links that act as credentials (an export's presigned download URLs) are `private_links`:
only targets private to the team (e-mail; the webhook sends the event itself) show them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from watcher.batches import BATCH_FINISHED, STUCK
from watcher.digests import DIGEST_EVENT
from watcher.models import Outcome
from watcher.notify import facts as f


class Severity(StrEnum):
    """How urgently a person should look."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


SEVERITY_BY_STATUS: Mapping[str, Severity] = {
    Outcome.COMPLETED.value: Severity.INFO,
    Outcome.ERRORED.value: Severity.WARNING,
    Outcome.FAILED.value: Severity.ERROR,
    Outcome.TIMED_OUT.value: Severity.ERROR,
    Outcome.NOT_FOUND.value: Severity.WARNING,
    "pending": Severity.WARNING,
}
#: Outcomes that are good news: chat colours say so, Apprise says `success`, PagerDuty may resolve.
GOOD_STATUSES = frozenset({Outcome.COMPLETED.value, Outcome.READY.value, "succeeded"})
SEVERITY_BY_ALERT: Mapping[str, Severity] = {
    "key_refused": Severity.CRITICAL,
    "delivery_dead": Severity.ERROR,
    "key_accepted": Severity.INFO,
}


class Link(NamedTuple):
    """A link worth a click; `note` qualifies it (`short-lived link`)."""

    label: str
    url: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class Section:
    """A headed list of items, most important first.

    `lines` say each item in words; `columns`/`rows` say the same as a table for targets
    that draw one. `more` counts items the event did not list at all ("and N more").
    """

    heading: str
    lines: tuple[str, ...]
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    more: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    """What one event says, for people, independent of any chat or mail format."""

    kind: str  # the event type
    subject: str  # the job id, batch name, digest name or alert kind it is about
    status: str  # outcome, batch status, `pending`, `digest` or `alert`
    severity: Severity
    title: str  # without the icon
    summary: str  # one sentence, also the preview/fallback text
    line: str  # the whole message on one line (consoles, short previews)
    icon: str = "ℹ️"
    symbol: str = "•"
    facts: tuple[tuple[str, str], ...] = ()
    errors: str | None = None  # "10 rows rejected", or why the errors were not read
    reasons: tuple[tuple[int | float, str], ...] = ()  # (count, reason), most common first
    sections: tuple[Section, ...] = ()
    links: tuple[Link, ...] = ()
    # Invariant: a chat renderer never reads these; only renderers for team-private targets (e-mail) do.
    private_links: tuple[Link, ...] = ()
    footer: str = ""  # event type and time

    @property
    def heading(self) -> str:
        """The title with its icon, as chat headers and mail bodies show it."""
        return f"{self.icon} {self.title}"

    def links_for(self, *, private: bool) -> tuple[Link, ...]:
        """The links a target shows: with the private ones only when it is private to the team."""
        return (*self.links, *self.private_links) if private else self.links

    def error_lines(self) -> list[str]:
        """The errors headline then one `N × reason` line per reason."""
        if self.errors is None:
            return []
        return [self.errors, *(f"{f.number(n)} × {reason}" for n, reason in self.reasons)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for templates: nothing callable, nothing that can change the message."""
        return {
            "kind": self.kind,
            "subject": self.subject,
            "status": self.status,
            "severity": self.severity.value,
            "title": self.title,
            "heading": self.heading,
            "summary": self.summary,
            "line": self.line,
            "facts": [list(pair) for pair in self.facts],
            "errors": self.errors,
            "reasons": [{"count": n, "reason": r} for n, r in self.reasons],
            "sections": [
                {"heading": s.heading, "lines": list(s.lines), "columns": list(s.columns),
                 "rows": [list(r) for r in s.rows], "more": s.more}
                for s in self.sections
            ],
            "links": [{"label": link.label, "url": link.url, "note": link.note} for link in self.links],
        }


def message_from_event(event: Mapping[str, Any]) -> Message:
    """The message for any event the watcher sends; unknown types get a plain generic one."""
    from watcher.notify import exports, summaries  # both build on this module's types

    kind = str(event.get("type", ""))
    data = f.data_of(event)
    if f.is_alert(event):
        return alert_message(event)
    if kind == BATCH_FINISHED:
        return summaries.batch_message(event)
    if kind == STUCK:
        grouped = isinstance(data.get("jobs"), list)
        return summaries.stuck_batch_message(event) if grouped else summaries.stuck_message(event)
    if kind == DIGEST_EVENT:
        return summaries.digest_message(event)
    if kind.startswith("contact_import."):
        return outcome_message(event)
    if kind.startswith(exports.EXPORT_PREFIX):
        return exports.export_message(event)
    if kind.startswith(exports.BACKUP_PREFIX):
        return exports.backup_message(event)
    return generic_message(event)


def outcome_message(event: Mapping[str, Any]) -> Message:
    """A job's final outcome: its counts, duration, labels, errors and the errors file."""
    data, status, shown = f.data_of(event), f.outcome_of(event), f.look(event)
    job = f.job_id(event)
    facts = job_facts(event)
    facts.insert(2 if data.get("job_type") else 1, ("Outcome", shown.wording))
    links = (Link("Download the errors file", url, "short-lived link"),) if (url := f.errors_url(event)) else ()
    return Message(
        kind=str(event.get("type", "")),
        subject=job,
        status=status,
        severity=SEVERITY_BY_STATUS.get(status, Severity.WARNING),
        title=f"Contact import {job} {shown.wording}",
        summary=_outcome_summary(status, f.counts(event)),
        line=f"{status:<10} {job_line(event)}",
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        **error_fields(data.get("errors")),
        links=links,
        footer=footer_of(event),
    )


def job_facts(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Job, type, counts, duration, labels and polls: what an outcome and a stuck warning share."""
    data = f.data_of(event)
    facts = [("Job", f.job_id(event))]
    if data.get("job_type"):
        facts.append(("Type", str(data["job_type"])))
    if shown := f.counts(event):
        facts.append(("Counts", ", ".join(f"{k} {f.number(v)}" for k, v in shown.items())))
    if (seconds := f.duration_seconds(event)) is not None:
        facts.append(("Duration", f.format_duration(seconds)))
    if shown_labels := f.labels(event):
        facts.append(("Labels", ", ".join(f"{k}={v}" for k, v in shown_labels.items())))
    watch = data.get("watch")
    if isinstance(watch, Mapping) and watch.get("polls") is not None:
        facts.append(("Polls", str(watch["polls"])))
    return facts


def job_line(event: Mapping[str, Any]) -> str:
    """`job=ID upsert requested=10 took=6m15s polls=3 labels=a=b errors: ...` for consoles."""
    data = f.data_of(event)
    parts = [f"job={f.job_id(event)}"]
    if data.get("job_type"):
        parts.append(str(data["job_type"]))
    parts += [f"{k}={f.number(v)}" for k, v in f.counts(event).items()]
    if (seconds := f.duration_seconds(event)) is not None:
        parts.append(f"took={f.format_duration(seconds).replace(' ', '')}")
    watch = data.get("watch")
    if isinstance(watch, Mapping) and watch.get("polls") is not None:
        parts.append(f"polls={watch['polls']}")
    if shown_labels := f.labels(event):
        parts.append("labels=" + ",".join(f"{k}={v}" for k, v in shown_labels.items()))
    if errs := f.errors_lines(event):
        # "errors: 10 rows rejected; 8 × invalid email; 1 × duplicate contact"
        parts.append(f"errors: {'; '.join(errs[:4])}")
    return f.one_line(" ".join(parts))


def alert_message(event: Mapping[str, Any]) -> Message:
    """Something about the watcher itself: the alert kind, its message and details."""
    data, kind = f.data_of(event), f.alert_kind(event)
    text = str(data.get("message", ""))
    facts = [("Alert", kind), ("Message", text)]
    facts += [(str(k), str(v)) for k, v in data.items() if k not in {"alert", "message"}]
    shown = f.look_of(f.ALERT)
    return Message(
        kind=str(event.get("type", "")),
        subject=kind,
        status=f.ALERT,
        severity=SEVERITY_BY_ALERT.get(kind, Severity.WARNING),
        title=f"import-watcher alert: {kind}",
        summary=text or kind,
        line=f.one_line(f"{event.get('type')} {kind}: {text}"),
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        footer=footer_of(event),
    )


def generic_message(event: Mapping[str, Any]) -> Message:
    """An event type this version does not know: its scalar data as facts, nothing lost silently."""
    kind = str(event.get("type", "")) or "event"
    data = f.data_of(event)
    facts = tuple((str(k), str(v)) for k, v in data.items() if isinstance(v, str | int | float | bool))
    return Message(
        kind=kind,
        subject=kind,
        status=f.outcome_of(event),
        severity=Severity.INFO,
        title=f"import-watcher: {kind}",
        summary=kind,
        line=f.one_line(f"{kind} " + " ".join(f"{k}={v}" for k, v in facts)),
        facts=facts[:20],
        footer=footer_of(event),
    )


def _outcome_summary(status: str, shown: Mapping[str, int | float]) -> str:
    requested, errored = shown.get("requested"), shown.get("errored")
    if status == Outcome.COMPLETED.value:
        return f"{f.number(requested)} contacts imported." if requested is not None else "The import completed."
    if status == Outcome.ERRORED.value and requested is not None:
        return f"{f.number(errored or 0)} of {f.number(requested)} contacts were rejected."
    if status == Outcome.FAILED.value:
        return "SendGrid says the import failed."
    if status == Outcome.TIMED_OUT.value:
        return "No final status before the deadline; the watcher stopped polling."
    if status == Outcome.NOT_FOUND.value:
        return "SendGrid does not know this import job."
    return f"The import {f.look_of(status).wording}."


def error_fields(raw: Any) -> dict[str, Any]:
    """Message keyword arguments (`errors`, `reasons`) for an errors summary ({rows, top_reasons} or {unavailable})."""
    if not isinstance(raw, Mapping):
        return {}
    if "unavailable" in raw:
        return {"errors": f"errors file unavailable: {raw['unavailable']}"}
    return {"errors": f"{f.grouped(raw.get('rows', 0))} rows rejected", "reasons": f.reasons_of(raw.get("top_reasons"))}


def footer_of(event: Mapping[str, Any]) -> str:
    watch = f.data_of(event).get("watch")
    if isinstance(watch, Mapping) and watch.get("detected_at") and not f.is_alert(event):
        return f"{event.get('type', '')} · detected {watch['detected_at']}"
    return f"{event.get('type', '')} · {event.get('timestamp', '')}"


def fit_lines(
    section: Section, *, budget: int, max_items: int, render: Callable[[str], str], size: Callable[[str], int] = len
) -> tuple[list[str], int]:
    """The section's first items, rendered, that fit in `budget` (each counted with a newline),
    and how many are left out ("and N more", the event's own `more` included)."""
    shown: list[str] = []
    for line in section.lines[:max_items]:
        item = render(line)
        if size(item) + 1 > budget:
            break
        shown.append(item)
        budget -= size(item) + 1
    return shown, section.more + len(section.lines) - len(shown)
