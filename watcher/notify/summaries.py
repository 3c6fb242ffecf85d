"""Messages for the events that speak for many jobs: batch summaries, stuck warnings, digests.

They are read on phones: counts first, the worst outcome first, then the first few jobs that
need a look, and "and N more" for the rest, whatever the size of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.batches import SEVERITY_ORDER
from watcher.models import Outcome
from watcher.notify import facts as f
from watcher.notify.message import (
    SEVERITY_BY_STATUS,
    Link,
    Message,
    Section,
    Severity,
    error_fields,
    footer_of,
    job_facts,
    job_line,
)


def batch_message(event: Mapping[str, Any]) -> Message:
    """A finished batch: outcomes worst first, summed counts, merged reasons, the jobs to look at."""
    data = f.data_of(event)
    name, status = str(data.get("batch") or "?"), f.outcome_of(event)
    shown = f.look_of(status)
    outcomes = _tally(data.get("outcomes"))
    jobs = int(data["jobs"]) if f.is_number(data.get("jobs")) else sum(outcomes.values())
    facts = [("Batch", name), ("Status", shown.wording), ("Jobs", f.grouped(jobs))]
    if outcomes:
        facts.append(("Outcomes", _tally_text(outcomes)))
    if totals := f.counts_of(data.get("totals")):
        facts.append(("Counts", ", ".join(f"{k} {f.grouped(v)}" for k, v in totals.items())))
    if (seconds := f.span_seconds(data)) is not None:
        facts.append(("Duration", f.format_duration(seconds)))
    if shown_labels := f.labels_of(data.get("labels")):
        facts.append(("Labels", ", ".join(f"{k}={v}" for k, v in shown_labels.items())))
    if data.get("continues"):
        facts.append(("Continues", str(data["continues"])))
    bad = sum(n for outcome, n in outcomes.items() if outcome != Outcome.COMPLETED.value)
    url = data.get("url")
    return Message(
        kind=str(event.get("type", "")),
        subject=name,
        status=status,
        severity=SEVERITY_BY_STATUS.get(status, Severity.WARNING),
        title=f"Batch {name} {shown.wording}",
        summary=f"{_plural(jobs, 'job')}: {_tally_text(outcomes) or 'none final'}.",
        line=f.one_line(f"{status:<10} batch={name} jobs={jobs} " + " ".join(f"{k}={n}" for k, n in outcomes.items())),
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        **_batch_errors(data.get("errors")),
        sections=_not_completed(data.get("not_completed"), bad),
        links=(Link("Open the batch", url),) if isinstance(url, str) and url else (),
        footer=footer_of(event),
    )


def stuck_message(event: Mapping[str, Any]) -> Message:
    """One job still pending after `polling.warn_after`: what it is and how long it has waited."""
    data = f.data_of(event)
    job, waited = f.job_id(event), _waited(data)
    facts = job_facts(event)
    facts.insert(1, ("Pending for", waited))
    if data.get("batch"):
        facts.append(("Batch", str(data["batch"])))
    shown = f.look_of("pending")
    return Message(
        kind=str(event.get("type", "")),
        subject=job,
        status="pending",
        severity=Severity.WARNING,
        title=f"Contact import {job} still pending after {waited}",
        summary=f"Still pending after {waited}; the watcher keeps watching it until its deadline.",
        line=f"{'stuck':<10} {job_line(event)} pending_for={waited.replace(' ', '')}",
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        footer=footer_of(event),
    )


def stuck_batch_message(event: Mapping[str, Any]) -> Message:
    """Several stuck jobs of one batch found together: how many, the longest wait, the first few."""
    data = f.data_of(event)
    name = str(data.get("batch") or "?")
    listed = [job for job in data.get("jobs") or [] if isinstance(job, Mapping)]
    count = int(data["count"]) if f.is_number(data.get("count")) else len(listed)
    facts = [("Batch", name), ("Stuck jobs", f.grouped(count)), ("Longest pending", _waited(data))]
    if shown_labels := f.labels_of(data.get("labels")):
        facts.append(("Labels", ", ".join(f"{k}={v}" for k, v in shown_labels.items())))
    rows = tuple((str(job.get("job_id", "?")), _waited(job), str(_polls(job))) for job in listed)
    section = Section(
        "Pending jobs",
        tuple(f"{job} — pending for {waited}, {polls} polls" for job, waited, polls in rows),
        ("Job", "Pending for", "Polls"),
        rows,
        more=max(0, int(count) - len(rows)),
    )
    shown = f.look_of("pending")
    return Message(
        kind=str(event.get("type", "")),
        subject=name,
        status="pending",
        severity=Severity.WARNING,
        title=f"{f.grouped(count)} contact imports of batch {name} still pending",
        summary=f"{f.grouped(count)} jobs of batch {name} are still pending, the longest for {_waited(data)}.",
        line=f.one_line(f"{'stuck':<10} batch={name} jobs={count} pending_for={_waited(data).replace(' ', '')}"),
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        sections=(section,),
        footer=footer_of(event),
    )


def digest_message(event: Mapping[str, Any]) -> Message:
    """What happened since the previous digest: jobs and batches by outcome, the slowest, what broke."""
    data = f.data_of(event)
    name = str(data.get("digest") or "digest")
    jobs, batches = _tally(data.get("jobs")), _tally(data.get("batches"))
    raw_dead = data.get("dead_deliveries")
    dead: Mapping[str, Any] = raw_dead if isinstance(raw_dead, Mapping) else {}
    dead_count = int(dead["count"]) if f.is_number(dead.get("count")) else 0
    alerts = [a for a in data.get("alerts") or [] if isinstance(a, Mapping)]
    facts = [
        ("Period", f"{data.get('since')} to {data.get('until')}"),
        ("Jobs", f"{f.grouped(sum(jobs.values()))}" + (f": {_tally_text(jobs)}" if jobs else "")),
        ("Batches", f"{f.grouped(sum(batches.values()))}" + (f": {_tally_text(batches)}" if batches else "")),
        ("Dead deliveries", f.grouped(dead_count)),
        ("Alerts", f.grouped(len(alerts))),
    ]
    reasons = f.reasons_of(data.get("top_reasons"))
    worst = next((o for o in SEVERITY_ORDER if jobs.get(o) or batches.get(o)), "")
    shown = f.look_of("digest")
    return Message(
        kind=str(event.get("type", "")),
        subject=name,
        status="digest",
        severity=Severity.WARNING if dead_count or worst in {"failed", "timed_out"} else Severity.INFO,
        title=f"import-watcher digest {name}",
        summary=(
            f"{_plural(sum(jobs.values()), 'job')} and {_plural(sum(batches.values()), 'batch')} finished, "
            f"{_plural(dead_count, 'dead delivery')}, {_plural(len(alerts), 'alert')}."
        ),
        line=f.one_line(
            f"{'digest':<10} {name} " + " ".join(f"{k}={n}" for k, n in jobs.items()) + f" dead={dead_count}"
        ),
        icon=shown.emoji,
        symbol=shown.symbol,
        facts=tuple(facts),
        errors="the most common reasons in the period" if reasons else None,
        reasons=reasons,
        sections=_digest_sections(data.get("slowest"), dead, dead_count, alerts),
        footer=footer_of(event),
    )


def _digest_sections(
    slowest: Any, dead: Mapping[str, Any], dead_count: int, alerts: list[Mapping[str, Any]]
) -> tuple[Section, ...]:
    sections = []
    slow = [s for s in slowest or [] if isinstance(s, Mapping)]
    if slow:
        rows = tuple(
            (str(s.get("job_id")), _waited(s, "seconds"), str(s.get("outcome"))) for s in slow
        )
        lines = tuple(f"{job} — {took}, {outcome}" for job, took, outcome in rows)
        sections.append(Section("Slowest jobs", lines, ("Job", "Took", "Outcome"), rows))
    first = [d for d in dead.get("first") or [] if isinstance(d, Mapping)]
    if first:
        rows = tuple((str(d.get("notifier")), str(d.get("job_id") or "—"), str(d.get("error") or "")) for d in first)
        lines = tuple(f"{notifier}: job {job}: {error}" for notifier, job, error in rows)
        sections.append(Section("Dead deliveries", lines, ("Notifier", "Job", "Error"), rows, dead_count - len(rows)))
    if alerts:
        rows = tuple((str(a.get("at") or ""), str(a.get("alert")), str(a.get("message") or "")) for a in alerts)
        lines = tuple(f"{at} {kind}: {text}" for at, kind, text in rows)
        sections.append(Section("Alerts", lines, ("At", "Alert", "Message"), rows))
    return tuple(sections)


def _tally(raw: Any) -> dict[str, int]:
    """{outcome: count} with positive counts only, worst first, unknown outcomes last."""
    if not isinstance(raw, Mapping):
        return {}
    order = {outcome: i for i, outcome in enumerate(SEVERITY_ORDER)}
    items = [(str(k), int(v)) for k, v in raw.items() if f.is_number(v) and v > 0]
    items.sort(key=lambda item: (order.get(item[0], len(order)), item[0]))
    return dict(items)


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + ("es" if noun.endswith("ch") else "s")
    return f"{f.grouped(n)} {plural}"


def _tally_text(tally: Mapping[str, int]) -> str:
    return ", ".join(f"{f.grouped(n)} {outcome}" for outcome, n in tally.items())


def _batch_errors(raw: Any) -> dict[str, Any]:
    fields = error_fields(raw)
    unavailable = raw.get("unavailable_jobs") if isinstance(raw, Mapping) else None
    if fields and f.is_number(unavailable) and unavailable:
        fields["errors"] += f" (the errors files of {f.grouped(unavailable)} jobs could not be read)"
    if fields.get("errors") == "0 rows rejected" and not fields.get("reasons"):
        return {}  # a clean batch says nothing about errors
    return fields


def _not_completed(raw: Any, bad: int) -> tuple[Section, ...]:
    listed = [job for job in raw or [] if isinstance(job, Mapping)]
    if not listed:
        return ()
    rows = tuple(
        (str(job.get("job_id", "?")), str(job.get("outcome", "?")), f.grouped(job.get("errored_count", 0)))
        for job in listed
    )
    lines = tuple(
        f"{job} — {outcome}" + (f" ({errored} contacts rejected)" if errored != "0" else "")
        for job, outcome, errored in rows
    )
    return (Section("Not completed", lines, ("Job", "Outcome", "Errored"), rows, more=max(0, bad - len(rows))),)


def _waited(data: Mapping[str, Any], key: str = "pending_for") -> str:
    seconds: Any = data.get(key)
    return f.format_duration(float(seconds)) if f.is_number(seconds) else "?"


def _polls(job: Mapping[str, Any]) -> Any:
    watch = job.get("watch")
    return watch.get("polls", "?") if isinstance(watch, Mapping) else "?"
