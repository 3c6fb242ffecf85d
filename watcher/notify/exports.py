"""Messages for a contact export's outcome and a backup's: what is ready, how big, until when.

An export's download URLs are presigned: whoever holds one reads every contact until it
expires. So they are `private_links` (e-mail shows them; the webhook sends the event
itself), and chats say how many files are ready and until when, never where.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.events import parse_iso
from watcher.models import Outcome
from watcher.notify import facts as f
from watcher.notify.message import Link, Message, Severity, footer_of

EXPORT_PREFIX = "contact_export."
BACKUP_PREFIX = "backup."
BACKUP_SUCCEEDED = "succeeded"

#: An export that timed out may still finish at SendGrid: a warning, not an error as for an import.
SEVERITY_BY_EXPORT_STATUS: Mapping[str, Severity] = {
    Outcome.READY.value: Severity.INFO,
    Outcome.FAILURE.value: Severity.ERROR,
    Outcome.TIMED_OUT.value: Severity.WARNING,
    Outcome.NOT_FOUND.value: Severity.WARNING,
}


def export_message(event: Mapping[str, Any]) -> Message:
    """An export's outcome: contacts, how many files and until when; the files' links kept private."""
    data, status, shown = f.data_of(event), f.outcome_of(event), f.look(event)
    export = str(data.get("export_id") or "?")
    urls = [url for url in data.get("urls") or [] if isinstance(url, str) and url]
    expires = expiry(data.get("expires_at"))
    facts = [("Export", export), ("Outcome", shown.wording)]
    if data.get("job_type"):
        facts.append(("Type", str(data["job_type"])))
    if f.is_number(contacts := data.get("contact_count")):
        facts.append(("Contacts", f.grouped(contacts)))
    if urls:
        facts.append(("Files", f"{len(urls)} ready" + (f", links expire {expires}" if expires else "")))
    if (seconds := f.span_seconds(data)) is not None:
        facts.append(("Duration", f.format_duration(seconds)))
    facts += _common_facts(data)
    files = len(urls)
    links = tuple(
        Link(f"Download file {i} of {files}" if files > 1 else "Download the export", url,
             f"expires {expires}" if expires else "short-lived link")
        for i, url in enumerate(urls, start=1)
    )
    line = [f"export={export}"]
    line += [f"contacts={f.number(contacts)}"] if f.is_number(contacts) else []
    line += [f"files={files}"] if files else []
    line += [f"expires={data.get('expires_at')}"] if files and data.get("expires_at") else []
    line += _common_line(data)
    return Message(
        kind=str(event.get("type", "")),
        subject=export,
        status=status,
        severity=SEVERITY_BY_EXPORT_STATUS.get(status, Severity.WARNING),
        title=f"Contact export {export} {shown.wording}",
        summary=_export_summary(status, contacts, files, expires, data.get("message")),
        line=f.one_line(f"{status:<10} " + " ".join(line)),
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        private_links=links,
        footer=footer_of(event),
    )


def backup_message(event: Mapping[str, Any]) -> Message:
    """A backup's outcome: where it is, its contacts, files, size and checksum; or why it failed."""
    data, status, shown = f.data_of(event), f.outcome_of(event), f.look(event)
    name = str(data.get("backup") or "?")
    facts = [("Backup", name), ("Outcome", shown.wording)]
    if status != BACKUP_SUCCEEDED:
        reason = f.one_line(str(data.get("reason") or "no reason given"))
        facts.append(("Reason", reason))
        return _backup(event, name, status, shown, Severity.ERROR, f"The backup failed: {reason}", facts,
                       f"backup={name} reason={reason}")
    contacts, size, files = data.get("contact_count"), data.get("bytes"), _file_count(data.get("files"))
    size = size if f.is_number(size) else None
    if f.is_number(contacts):
        facts.append(("Contacts", f.grouped(contacts)))
    if files is not None:
        facts.append(("Files", f.grouped(files)))
    if size is not None:
        facts.append(("Size", size_text(size)))
    if data.get("path"):
        facts.append(("Path", str(data["path"])))
    if data.get("sha256"):
        facts.append(("SHA-256", str(data["sha256"])))
    facts += [("Labels", labels) for labels in _labels_text(data)]
    parts = [f"{f.grouped(contacts)} contacts" if f.is_number(contacts) else "The contacts"]
    if files is not None:
        parts.append(f"in {files} file{'' if files == 1 else 's'}")
    if size is not None:
        parts.append(f"({size_text(size)})")
    summary = " ".join(parts) + (f" kept at {data['path']}." if data.get("path") else " kept.")
    line = [f"backup={name}"]
    line += [f"contacts={f.number(contacts)}"] if f.is_number(contacts) else []
    line += [f"files={files}"] if files is not None else []
    line += [f"bytes={f.number(size)}"] if size is not None else []
    line += [f"path={data['path']}"] if data.get("path") else []
    return _backup(event, name, status, shown, Severity.INFO, summary, facts, " ".join(line))


def expiry(value: Any) -> str | None:
    """`2026-11-28 10:00 UTC` for an ISO time; other text as it is; None when absent."""
    if value is None or value == "":
        return None
    parsed = parse_iso(value)
    return parsed.strftime("%Y-%m-%d %H:%M UTC") if parsed else f.one_line(str(value))


def size_text(size: int | float) -> str:
    """`3.4 MB`: decimal units, one decimal beyond bytes."""
    amount, unit = float(size), "bytes"
    for bigger in ("kB", "MB", "GB", "TB"):
        if amount < 1000:
            break
        amount, unit = amount / 1000, bigger
    return f"{f.number(size)} bytes" if unit == "bytes" else f"{amount:.1f} {unit}"


def _backup(
    event: Mapping[str, Any], name: str, status: str, shown: f.Look, severity: Severity,
    summary: str, facts: list[tuple[str, str]], line: str,
) -> Message:
    return Message(
        kind=str(event.get("type", "")),
        subject=name,
        status=status,
        severity=severity,
        title=f"Backup {name} {shown.wording}",
        summary=summary,
        line=f.one_line(f"{status:<10} {line}"),
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        footer=footer_of(event),
    )


def _export_summary(status: str, contacts: Any, files: int, expires: str | None, said: Any) -> str:
    if status == Outcome.READY.value:
        what = f"{f.grouped(contacts)} contacts exported" if f.is_number(contacts) else "The export is ready"
        where = f" in {files} file{'' if files == 1 else 's'}" if files else ""
        return f"{what}{where}" + (f", to download before {expires}." if expires else ".")
    if status == Outcome.FAILURE.value:
        return "SendGrid says the export failed" + (f": {f.one_line(str(said))}" if said else ".")
    if status == Outcome.TIMED_OUT.value:
        return "No final status before the deadline; the watcher stopped polling."
    if status == Outcome.NOT_FOUND.value:
        return "SendGrid does not know this export."
    return f"The export {f.look_of(status).wording}."


def _common_facts(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Labels, batch, account and polls: what every watched job shows."""
    facts = [("Labels", labels) for labels in _labels_text(data)]
    facts += [(label, str(data[key])) for key, label in (("batch", "Batch"), ("account", "Account")) if data.get(key)]
    watch = data.get("watch")
    if isinstance(watch, Mapping) and watch.get("polls") is not None:
        facts.append(("Polls", str(watch["polls"])))
    return facts


def _common_line(data: Mapping[str, Any]) -> list[str]:
    parts = [f"{key}={data[key]}" for key in ("account", "batch") if data.get(key)]
    watch = data.get("watch")
    if isinstance(watch, Mapping) and watch.get("polls") is not None:
        parts.append(f"polls={watch['polls']}")
    if shown := f.labels_of(data.get("labels")):
        parts.append("labels=" + ",".join(f"{k}={v}" for k, v in shown.items()))
    return parts


def _labels_text(data: Mapping[str, Any]) -> list[str]:
    shown = f.labels_of(data.get("labels"))
    return [", ".join(f"{k}={v}" for k, v in shown.items())] if shown else []


def _file_count(raw: Any) -> int | None:
    """`files` as a count, or a list of the manifest's file entries."""
    if isinstance(raw, list):
        return len(raw)
    return int(raw) if f.is_number(raw) else None
