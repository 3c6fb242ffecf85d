"""Rows of the SQLite store as models, and models as rows.

The column lists the store selects, JSON encoding of the text columns, the
conversions between rows and JobState / Delivery, and the two memos that spare
re-parsing what repeats from row to row: labels texts, and a job's own last snapshot.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from watcher.models import Batch, BatchPhase, Delivery, DeliveryState, JobKind, JobState, Lease, Outcome, Snapshot

_JOB_COLUMNS = (
    "id, labels, notify, added_at, next_poll_at, polls, transient_errors, snapshot, outcome, detected_at,"
    " batch, errors, stuck_at, kind, account"
)
_BATCH_COLUMNS = "name, phase, jobs, final, outcomes, started_at, quiet_since, finished_at, summaries, last_summary_id"
_DELIVERY_COLUMNS = "id, notifier, event, created_at, next_attempt_at, deadline_at, job_id, state, attempts, last_error"
# The same columns with the body left unread: job views never need it, and it is the large part.
_DELIVERY_COLUMNS_NO_EVENT = _DELIVERY_COLUMNS.replace("event,", "'{}' AS event,")
_INSERT_DELIVERY = (
    f"INSERT OR IGNORE INTO deliveries ({_DELIVERY_COLUMNS}, due_at) VALUES"  # noqa: S608
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _snapshot_json(snapshot: Snapshot | None) -> str | None:
    return None if snapshot is None else _dumps(snapshot.to_dict())


def _snapshot(text: str | None) -> Snapshot | None:
    return None if text is None else Snapshot.from_dict(json.loads(text))


#: Distinct labels texts kept parsed (labels repeat across jobs: a team, a source).
LABELS_MEMO = 256


class _LabelsMemo:
    """The labels column parsed once per distinct text; each job still gets a dict of its own."""

    def __init__(self) -> None:
        self._parsed: dict[str, dict[str, str]] = {}

    def __call__(self, text: str) -> Any:
        parsed = self._parsed.get(text)
        if parsed is not None:
            return dict(parsed)
        value = json.loads(text)
        if type(value) is dict and all(type(v) is str for v in value.values()):
            if len(self._parsed) >= LABELS_MEMO:
                self._parsed.clear()
            self._parsed[text] = dict(value)
        return value


def _job(
    row: Sequence[Any],
    labels_of: Callable[[str], Any] = json.loads,
    snapshot: Snapshot | None = None,
    lease: Lease | None = None,
) -> JobState:
    """A row of _JOB_COLUMNS (by position: a tuple or a sqlite3.Row) as a JobState.

    `snapshot`, when given, is the row's snapshot already parsed (see _SnapshotMemo).
    """
    job_id, labels, notify, added_at, next_poll_at, polls, transient_errors, text, outcome, detected_at = row[:10]
    batch, errors, stuck_at, kind, account = row[10:15]
    return JobState(
        job_id,
        labels_of(labels),
        None if notify is None else tuple(json.loads(notify)),
        added_at,
        next_poll_at,
        polls,
        transient_errors,
        _snapshot(text) if snapshot is None else snapshot,
        None if outcome is None else Outcome(outcome),
        detected_at,
        lease,
        batch,
        None if errors is None else json.loads(errors),
        stuck_at,
        JobKind(kind),
        account,
    )


def _batch(row: Sequence[Any], lease: Lease | None = None) -> Batch:
    """A row of _BATCH_COLUMNS (by position) as a Batch."""
    name, phase, jobs, final, outcomes, started_at, quiet_since, finished_at, summaries, last_summary_id = row
    return Batch(
        name, BatchPhase(phase), jobs, final, json.loads(outcomes), started_at, quiet_since,
        finished_at, summaries, last_summary_id, lease,
    )  # fmt: skip


def _same_json(a: Snapshot, b: Snapshot) -> bool:
    """Whether `_snapshot_json` gives the same text for both: equal, and alike in every
    way equality overlooks (results key order, 1 vs 1.0 vs true, 0.0 vs -0.0)."""
    if a is b:
        return True
    if (
        a.status != b.status or a.job_type != b.job_type
        or a.started_at != b.started_at or a.finished_at != b.finished_at
        or type(a.status) is not type(b.status) or type(a.job_type) is not type(b.job_type)
        or type(a.started_at) is not type(b.started_at) or type(a.finished_at) is not type(b.finished_at)
    ):  # fmt: skip
        return False
    ra, rb = a.results, b.results
    if type(ra) is not dict or type(rb) is not dict or len(ra) != len(rb):
        return False
    for (ka, va), (kb, vb) in zip(ra.items(), rb.items(), strict=True):
        if ka != kb or type(ka) is not str or type(kb) is not str or type(va) is not type(vb) or va != vb:
            return False
        if type(va) is float and repr(va) != repr(vb):
            return False
        if type(va) not in _FLAT_JSON:
            return False
    return True


_FLAT_JSON = (str, int, float, bool, type(None))

#: Jobs whose last written snapshot the store remembers (bounds its memory at 100,000 jobs).
SNAPSHOT_MEMO = 4096


class _SnapshotMemo:
    """The snapshot text this store last wrote for a job, with the Snapshot it came from.

    A job that is still running mostly shows the same snapshot poll after poll: then
    record_poll writes the remembered text instead of serialising the Snapshot again,
    and the next claim reuses the Snapshot instead of parsing the text again. Texts
    are compared, so a row changed by anyone else is parsed as before.
    """

    def __init__(self, size: int = SNAPSHOT_MEMO) -> None:
        self._size = size
        self._entries: dict[str, tuple[str, Snapshot]] = {}

    def text(self, job_id: str, snapshot: Snapshot | None) -> str | None:
        """`_snapshot_json(snapshot)`, from the memo when this job last had an identical one."""
        if snapshot is None:
            return None
        entry = self._entries.get(job_id)
        if entry is not None and _same_json(entry[1], snapshot):
            return entry[0]
        return _snapshot_json(snapshot)

    def remember(self, job_id: str, text: str | None, snapshot: Snapshot | None) -> None:
        """Note that `text` (which is `_snapshot_json(snapshot)`) is now this job's row."""
        entries = self._entries
        if text is None or snapshot is None or type(snapshot.results) is not dict:
            entries.pop(job_id, None)
            return
        if job_id not in entries and len(entries) >= self._size:
            del entries[next(iter(entries))]  # the oldest
        entries[job_id] = (text, snapshot)

    def snapshot(self, job_id: str, text: str | None) -> Snapshot | None:
        """The Snapshot of `text` if it is the text last written for this job, else None."""
        if text is None:
            return None
        entry = self._entries.get(job_id)
        return entry[1] if entry is not None and entry[0] == text else None

    def forget(self, job_id: str) -> None:
        self._entries.pop(job_id, None)

    def clear(self) -> None:
        self._entries.clear()


def _delivery(row: sqlite3.Row, lease: Lease | None = None) -> Delivery:
    return Delivery(
        id=row["id"],
        notifier=row["notifier"],
        event=json.loads(row["event"]),
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        deadline_at=row["deadline_at"],
        job_id=row["job_id"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        lease=lease,
    )


def _delivery_params(d: Delivery) -> tuple[Any, ...]:
    return (
        d.id, d.notifier, _dumps(dict(d.event)), d.created_at, d.next_attempt_at,
        d.deadline_at, d.job_id, DeliveryState(d.state).value, d.attempts, d.last_error,
        d.next_attempt_at,
    )  # fmt: skip
