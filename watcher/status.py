"""The job and batch views shared by `status --json`, the API and the status page, and the API's paging cursor."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from watcher.batches import TOTAL_KEYS, batch_status
from watcher.events import iso
from watcher.models import Batch, BatchPhase, Delivery, JobState, StoreCounts, Tombstone, validate_job_id
from watcher.store.base import StateStore

#: What a cursor's time may look like: repr() of a non-negative float, nothing else.
_CURSOR_TIME = re.compile(r"\d{1,20}(\.\d{1,20})?(e[+-]\d{1,3})?")
MAX_CURSOR = 200
TOTALS_PAGE = 500  # jobs per read when summing a batch's totals


def job_view(
    job: JobState, deliveries: Iterable[Delivery], *, expected_finish_at: float | None = None
) -> dict[str, Any]:
    """One job as users see it (DESIGN.md `status --json`); `expected_finish_at`: when such jobs end,
    from the run times of finished ones (watcher.learned), for a running job when known."""
    snapshot = job.snapshot
    return {
        "id": job.id,
        "kind": job.kind.value,
        "account": job.account,  # null: the default account
        "state": job.state,
        "polls": job.polls,
        "labels": dict(job.labels),
        "notify": list(job.notify) if job.notify is not None else None,
        "batch": job.batch,
        "added_at": iso(job.added_at),
        "next_poll_at": iso(job.next_poll_at) if job.outcome is None else None,
        "expected_finish_at": iso(expected_finish_at) if job.outcome is None else None,
        "status": snapshot.status if snapshot else None,
        "job_type": snapshot.job_type if snapshot else None,
        "results": _finite(dict(snapshot.results)) if snapshot else {},
        "finished_at": snapshot.finished_at if snapshot else None,
        "detected_at": iso(job.detected_at),
        "deliveries": [
            {
                "notifier": d.notifier,
                "state": d.state.value,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "next_attempt_at": iso(d.next_attempt_at) if d.state.value == "pending" else None,
            }
            for d in deliveries
        ],
    }


def _finite(value: Any) -> Any:
    # NaN and Infinity are not JSON: a stored count that became one is shown as unknown, never emitted.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


async def job_views(
    store: StateStore, jobs: Sequence[JobState], expected: Callable[[JobState], float | None] | None = None
) -> list[dict[str, Any]]:
    """Views of several jobs with one outbox query that never reads the stored event bodies;
    `expected` tells a running job's expected finish (LearnedSchedules.expected_finish at now)."""
    by_job: dict[str, list[Delivery]] = defaultdict(list)
    if jobs:
        for delivery in await store.list_deliveries([j.id for j in jobs], with_events=False):
            if delivery.job_id is not None:
                by_job[delivery.job_id].append(delivery)
    return [
        job_view(job, by_job.get(job.id, []),
                 expected_finish_at=expected(job) if expected is not None and job.outcome is None else None)
        for job in jobs
    ]


def tombstone_view(tombstone: Tombstone) -> dict[str, Any]:
    """A stopped or purged job as `POST /jobs` answers for it: `state` is the tombstone's reason."""
    return {"id": tombstone.id, "state": tombstone.reason.value, "since": iso(tombstone.at)}


def summary_view(counts: StoreCounts) -> dict[str, dict[str, int]]:
    """`GET /summary`: jobs and deliveries per state, every state present."""
    return {"jobs": dict(counts.jobs_by_state), "deliveries": dict(counts.deliveries_by_state)}


def encode_cursor(added_at: float, job_id: str) -> str:
    """The opaque cursor of the page that starts after this place in (added_at, id) order
    (or (started_at, name) for batches)."""
    text = f"{float(added_at)!r}:{job_id}".encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


def decode_cursor(cursor: str, check: Callable[[str], object] = validate_job_id) -> tuple[float, str]:
    """(time, name) from a cursor this module made, the name passing `check` (a job id unless
    told otherwise: batch cursors hold batch names); ValueError for anything else."""
    bogus = ValueError("`after` is not a cursor this server gave out")
    if not cursor.isascii() or len(cursor) > MAX_CURSOR:
        raise bogus
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        at_text, _, job_id = raw.decode("ascii").partition(":")  # a batch name's own colons stay in it
        check(job_id)
    except (binascii.Error, ValueError):  # UnicodeDecodeError and InvalidJobId are ValueErrors
        raise bogus from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != cursor:
        raise bogus  # only the one spelling this module writes
    added_at = float(at_text) if _CURSOR_TIME.fullmatch(at_text) else math.nan
    if not math.isfinite(added_at) or f"{added_at!r}" != at_text:
        raise bogus
    return added_at, job_id


def status_table(views: Sequence[dict[str, Any]]) -> str:
    """A plain-text table for `import-watcher status`; a BATCH column when any job has a batch."""
    batched = any(v.get("batch") for v in views)
    rows = [("JOB", "STATE", "POLLS", "NEXT POLL / DETECTED", *(("BATCH",) if batched else ()), "DELIVERIES")]
    for v in views:
        when = v["next_poll_at"] or v["detected_at"] or "-"
        deliveries = ", ".join(f"{d['notifier']}={d['state']}({d['attempts']})" for d in v["deliveries"]) or "-"
        batch = (v.get("batch") or "-",) if batched else ()
        rows.append((v["id"], v["state"], str(v["polls"]), when, *batch, deliveries))
    aligned = len(rows[0]) - 1  # every column but the last, which runs on
    widths = [max(len(r[i]) for r in rows) for i in range(aligned)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:aligned])) + "  " + row[aligned] for row in rows
    )


def batch_view(
    batch: Batch, jobs: Sequence[JobState] | None = None, *, totals: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """One batch as `GET /batches/{name}` and `status --batch` show it; `totals` only with its jobs
    (or given, summed already).

    `jobs` is the count (as in the batch_finished event), `final` how many of them are final, and
    `status` the worst outcome so far (null while none is final); `finished_at` is set while the
    batch stands finished (a job joining reopens it).
    """
    view: dict[str, Any] = {
        "name": batch.name,
        "state": batch.phase.value,
        "jobs": batch.jobs,
        "final": batch.final,
        "status": batch_status(batch.outcomes) if batch.final else None,
        "outcomes": {k: v for k, v in batch.outcomes.items() if v > 0},
        "started_at": iso(batch.started_at),
        "finished_at": iso(batch.finished_at) if batch.phase is BatchPhase.FINISHED else None,
    }
    if totals is not None:
        view["totals"] = dict(totals)
    elif jobs is not None:
        view["totals"] = batch_totals(jobs)
    return view


async def stored_batch_totals(store: StateStore, name: str, *, page: int = TOTALS_PAGE) -> dict[str, int]:
    """`batch_totals` of every job of the batch, read a page at a time through the store's batch index.

    The work grows with the batch's size (a batch is one nightly sync, not the whole store), but memory
    stays one page. Running totals kept in the batch row would make this one read, at the price of a
    batch-row write on every poll of every batched job (results change with each poll, not only at the
    outcome), on the hot path of all three stores: not worth it for a view opened by hand.
    """
    summed = dict.fromkeys(TOTAL_KEYS, 0)
    after: tuple[float, str] | None = None
    while True:
        jobs = await store.list_jobs(batch=name, limit=page, after=after)
        for key, value in batch_totals(jobs).items():
            summed[key] += value
        if len(jobs) < page:
            return summed
        after = (jobs[-1].added_at, jobs[-1].id)


def batch_totals(jobs: Iterable[JobState]) -> dict[str, int]:
    """SendGrid's five counters summed over the jobs' last results; a missing or non-finite one counts 0."""
    summed = dict.fromkeys(TOTAL_KEYS, 0)
    for job in jobs:
        results = job.snapshot.results if job.snapshot else {}
        for key in TOTAL_KEYS:
            value = results.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                summed[key] += int(value)
    return summed


def batch_line(view: dict[str, Any]) -> str:
    """The one line `status --batch` prints above the batch's jobs."""
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(view["outcomes"].items())) or "none final yet"
    when = f"finished {view['finished_at']}" if view["finished_at"] else f"started {view['started_at']}"
    totals = view.get("totals") or {}
    counts = ", ".join(f"{k.removesuffix('_count')} {v}" for k, v in totals.items() if v)
    worst = f", worst {view['status']}" if view["status"] else ""
    head = f"batch {view['name']}: {view['state']}, {view['final']}/{view['jobs']} final ({outcomes}){worst}"
    return f"{head}; {when}" + (f"; {counts}" if counts else "")
