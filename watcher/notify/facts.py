"""Facts read from an event body (the DESIGN.md webhook body), tolerant of missing or odd fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watcher.events import ALERT_EVENT, parse_iso
from watcher.models import Outcome

ALERT = "alert"


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
    Outcome.READY.value: Look("✔", "✅", "ready"),
    Outcome.FAILURE.value: Look("✖", "❌", "failed"),
    "succeeded": Look("✔", "✅", "succeeded"),
    ALERT: Look("!", "🚨", "needs attention"),
    "pending": Look("…", "⏳", "still pending"),
    "digest": Look("≡", "🗒️", "digest"),
}

# Order in which SendGrid's counters are shown; other *_count keys follow.
COUNT_KEYS = tuple(f"{n}_count" for n in ("requested", "created", "updated", "deleted", "errored"))


def data_of(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The event's `data` mapping, or an empty one."""
    data = event.get("data")
    return data if isinstance(data, Mapping) else {}


def is_alert(event: Mapping[str, Any]) -> bool:
    return event.get("type") == ALERT_EVENT


def outcome_of(event: Mapping[str, Any]) -> str:
    """`completed` ... `failure` (`data.status`), else the type's last part (`succeeded`), or `alert`."""
    if is_alert(event):
        return ALERT
    status = data_of(event).get("status")
    if isinstance(status, str) and status:
        return status
    kind = str(event.get("type", ""))
    return kind.rpartition(".")[2] or "unknown"


def look_of(status: str) -> Look:
    return LOOKS.get(status) or Look("•", "ℹ️", status)


def look(event: Mapping[str, Any]) -> Look:
    return look_of(outcome_of(event))


def job_id(event: Mapping[str, Any]) -> str:
    return str(data_of(event).get("job_id") or "?")


def alert_kind(event: Mapping[str, Any]) -> str:
    return str(data_of(event).get("alert") or "unknown")


def span_seconds(data: Mapping[str, Any]) -> float | None:
    """finished_at - started_at of a data mapping, when both are readable."""
    start, end = parse_iso(data.get("started_at")), parse_iso(data.get("finished_at"))
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def duration_seconds(event: Mapping[str, Any]) -> float | None:
    """finished_at - started_at, when SendGrid gave both."""
    return span_seconds(data_of(event))


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


def counts_of(results: Any) -> dict[str, int | float]:
    """SendGrid's counters by short name (`requested`, `created`, ...), in a stable order."""
    if not isinstance(results, Mapping):
        return {}
    keys = [k for k in COUNT_KEYS if k in results]
    keys += sorted(k for k in results if str(k).endswith("_count") and k not in COUNT_KEYS)
    shown: dict[str, int | float] = {}
    for key in keys:
        value = results[key]
        if is_number(value):
            shown[str(key).removesuffix("_count")] = value
    return shown


def counts(event: Mapping[str, Any]) -> dict[str, int | float]:
    return counts_of(data_of(event).get("results"))


def labels_of(raw: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def labels(event: Mapping[str, Any]) -> dict[str, str]:
    return labels_of(data_of(event).get("labels"))


def errors_url(event: Mapping[str, Any]) -> str | None:
    results = data_of(event).get("results")
    url = results.get("errors_url") if isinstance(results, Mapping) else None
    return url if isinstance(url, str) and url else None


def reasons_of(items: Any) -> tuple[tuple[int | float, str], ...]:
    """(count, reason) pairs from a `top_reasons` list; odd entries skipped."""
    if not isinstance(items, list | tuple):
        return ()
    pairs = []
    for item in items:
        if isinstance(item, Mapping):
            count = item.get("count", 0)
            pairs.append((count if is_number(count) else 0, str(item.get("reason", ""))))
    return tuple(pairs)


def errors_lines(event: Mapping[str, Any]) -> list[str]:
    """The errors summary: rows and top reasons, or why the file could not be read."""
    errors = data_of(event).get("errors")
    if not isinstance(errors, Mapping):
        return []
    if "unavailable" in errors:
        return [f"errors file unavailable: {errors['unavailable']}"]
    lines = [f"{grouped(errors.get('rows', 0))} rows rejected"]
    lines += [f"{number(n)} × {reason}" for n, reason in reasons_of(errors.get("top_reasons"))]
    return lines


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(value: Any) -> str:
    """Whole numbers without `.0`; anything else as it is."""
    if is_number(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def grouped(value: Any) -> str:
    """Whole numbers with thousands separators (`1,000,000`), for batch and digest totals."""
    if is_number(value) and float(value).is_integer():
        return f"{int(value):,}"
    return str(value)


def one_line(text: str) -> str:
    # Labels and messages come from users and servers: keep "one line per event" true.
    return "".join(ch if ch.isprintable() else " " for ch in text)
