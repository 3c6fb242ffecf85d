"""Records of the Redis store as models, and models as script arguments.

Hash fields are strings: numbers as repr() of floats (exact round trips), JSON for
labels, notify, snapshots, events and errors. `owner` holds the lease token of a
claimed record and `lease_until` its expiry, both "" while it is free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from watcher.models import Batch, BatchPhase, Delivery, DeliveryState, JobKind, JobState, Lease, Outcome, Snapshot

#: Every delivery field but the event body, which is the large part and no view needs.
DELIVERY_FIELDS_NO_EVENT = (
    "id", "notifier", "created_at", "next_attempt_at", "deadline_at", "job_id", "state",
    "attempts", "last_error",
)  # fmt: skip


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def num(value: float) -> str:
    """repr() of a float round-trips exactly, which str(int) or Lua's tostring would not."""
    return repr(float(value))


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A hash from the flat [field, value, ...] list HGETALL gives inside a script."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def script_rows(raw: str) -> list[dict[str, str]]:
    """The records a script returned as JSON (cjson writes an empty list as {})."""
    rows = json.loads(raw)
    return [pairs(row) for row in rows] if isinstance(rows, list) else []


def _lease(h: dict[str, str], leased: bool) -> Lease | None:
    return Lease(h["owner"], float(h["lease_until"])) if leased else None


def job(h: dict[str, str], *, leased: bool = False) -> JobState:
    """A job from its hash; `leased` for the copies a claim hands out."""
    notify = json.loads(h["notify"])
    snapshot = json.loads(h["snapshot"])
    return JobState(
        id=h["id"],
        labels=json.loads(h["labels"]),
        notify=None if notify is None else tuple(notify),
        added_at=float(h["added_at"]),
        next_poll_at=float(h["next_poll_at"]),
        polls=int(h["polls"]),
        transient_errors=int(h["transient_errors"]),
        snapshot=None if snapshot is None else Snapshot.from_dict(snapshot),
        outcome=Outcome(h["outcome"]) if h["outcome"] else None,
        detected_at=float(h["detected_at"]) if h["detected_at"] else None,
        lease=_lease(h, leased),
        # A job written before batches existed lacks these fields.
        batch=h.get("batch") or None,
        errors=json.loads(h.get("errors") or "null"),
        stuck_at=float(h["stuck_at"]) if h.get("stuck_at") else None,
        # A job written before exports and accounts existed is an import of the default account.
        kind=JobKind(h.get("kind") or JobKind.IMPORT),
        account=h.get("account") or None,
    )


def batch(h: dict[str, str], *, leased: bool = False) -> Batch:
    """A batch from its hash: outcome counts are its o:<outcome> fields."""
    outcomes = {field[2:]: int(value) for field, value in h.items() if field.startswith("o:") and int(value) > 0}
    return Batch(
        name=h["name"],
        phase=BatchPhase(h["phase"]),
        jobs=int(h["jobs"]),
        final=int(h["final"]),
        outcomes=outcomes,
        started_at=float(h["started_at"]),
        quiet_since=float(h["quiet_since"]),
        finished_at=float(h["finished_at"]) if h["finished_at"] else None,
        summaries=int(h["summaries"]),
        last_summary_id=h["last_summary_id"] or None,
        lease=_lease(h, leased),
    )


def delivery(h: dict[str, str], *, leased: bool = False) -> Delivery:
    """A delivery from its hash; without an `event` field its event is {}."""
    event = h.get("event")
    return Delivery(
        id=h["id"],
        notifier=h["notifier"],
        event=json.loads(event) if event is not None else {},
        created_at=float(h["created_at"]),
        next_attempt_at=float(h["next_attempt_at"]),
        deadline_at=float(h["deadline_at"]),
        job_id=h["job_id"] or None,
        state=DeliveryState(h["state"]),
        attempts=int(h["attempts"]),
        last_error=json.loads(h["last_error"]),
        lease=_lease(h, leased),
    )


def delivery_args(deliveries: Sequence[Delivery]) -> list[str]:
    """The count, then ten fields per delivery, in the order the scripts' add_delivery reads."""
    fields = [str(len(deliveries))]
    for d in deliveries:
        fields += [
            d.id, d.notifier, dumps(dict(d.event)), num(d.created_at), num(d.next_attempt_at),
            num(d.deadline_at), d.job_id or "", DeliveryState(d.state).value, str(d.attempts),
            dumps(d.last_error),
        ]  # fmt: skip
    return fields


def snapshot_arg(snapshot: Snapshot | None) -> str:
    return dumps(None if snapshot is None else snapshot.to_dict())
