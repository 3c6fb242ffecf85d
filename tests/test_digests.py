"""The watcher.digest event: a period's jobs, batches, reasons, slowest jobs, dead deliveries and alerts."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.digests import digest_event, is_empty
from watcher.events import alert_event
from watcher.models import Batch, BatchPhase, Delivery, DeliveryState, JobState, Outcome

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def job(job_id: str, outcome: Outcome, took: float, errors: dict[str, Any] | None = None) -> JobState:
    return JobState(
        id=job_id,
        labels={},
        notify=None,
        added_at=T0,
        next_poll_at=T0,
        outcome=outcome,
        detected_at=T0 + took,
        errors=errors,
    )


def finished_batch(name: str, outcomes: dict[str, int]) -> Batch:
    return Batch(name, BatchPhase.FINISHED, sum(outcomes.values()), sum(outcomes.values()), outcomes, T0, T0)


def dead(n: int) -> Delivery:
    return Delivery(
        id=f"msg_{n}",
        notifier="team-slack",
        event={},
        created_at=T0,
        next_attempt_at=T0,
        deadline_at=T0,
        job_id=f"j{n}",
        state=DeliveryState.DEAD,
        last_error=f"HTTP 50{n % 10}",
    )


def digest(**parts: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"jobs": [], "batches": [], "dead": [], "alerts": []}
    return digest_event(name="morning", since=T0, until=T0 + 86400, **{**args, **parts})


def test_jobs_and_batches_are_counted_by_outcome_worst_first() -> None:
    """Jobs by outcome and batches by their worst outcome, worst first."""
    jobs = [job("a", Outcome.COMPLETED, 10), job("b", Outcome.FAILED, 10), job("c", Outcome.COMPLETED, 10)]
    batches = [finished_batch("x", {"completed": 3, "errored": 1}), finished_batch("y", {"completed": 2})]

    data = digest(jobs=jobs, batches=batches)["data"]

    assert [("failed", 1), ("completed", 2)] == list(data["jobs"].items())
    assert [("errored", 1), ("completed", 1)] == list(data["batches"].items())
    assert ("morning", "2027-01-15T08:00:00Z", "2027-01-16T08:00:00Z") == (data["digest"], data["since"], data["until"])


def test_slowest_jobs_are_the_top_five_by_added_to_detected() -> None:
    """The five slowest jobs, slowest first, with whole seconds and their outcome."""
    jobs = [job(f"j{i}", Outcome.COMPLETED, took=100 * i + 0.4) for i in range(8)]

    slowest = digest(jobs=jobs)["data"]["slowest"]

    assert [("j7", 700), ("j6", 600), ("j5", 500), ("j4", 400), ("j3", 300)] == [
        (s["job_id"], s["seconds"]) for s in slowest
    ]
    assert {"completed"} == {s["outcome"] for s in slowest}


def test_top_reasons_are_merged_across_the_period() -> None:
    """Reasons from every job's errors file are merged, most common first."""
    jobs = [
        job("a", Outcome.ERRORED, 5, {"rows": 3, "top_reasons": [{"reason": "invalid email", "count": 3}]}),
        job("b", Outcome.ERRORED, 5, {"rows": 5, "top_reasons": [{"reason": "invalid email", "count": 1},
                                                                 {"reason": "missing", "count": 4}]}),
        job("c", Outcome.FAILED, 5, {"unavailable": "HTTP 403"}),
    ]

    assert [{"reason": "invalid email", "count": 4}, {"reason": "missing", "count": 4}] == digest(jobs=jobs)["data"][
        "top_reasons"
    ]


def test_dead_deliveries_are_counted_and_the_first_five_listed() -> None:
    """All dead deliveries are counted; the first five are listed with notifier, job and error."""
    data = digest(dead=[dead(n) for n in range(7)])["data"]

    assert 7 == data["dead_deliveries"]["count"]
    assert {"notifier": "team-slack", "job_id": "j0", "error": "HTTP 500"} == data["dead_deliveries"]["first"][0]
    assert 5 == len(data["dead_deliveries"]["first"])


def test_alerts_accept_events_or_their_data() -> None:
    """An alert is listed as {alert, message, at}, from a whole watcher.alert event or its data."""
    event = alert_event("key_refused", "HTTP 401", at=T0 + 5)
    data = digest(alerts=[event, {"alert": "key_accepted", "message": "ok", "at": "then"}])["data"]

    assert [
        {"alert": "key_refused", "message": "HTTP 401", "at": "2027-01-15T08:00:05Z"},
        {"alert": "key_accepted", "message": "ok", "at": "then"},
    ] == data["alerts"]


@pytest.mark.parametrize(
    ("parts", "empty"),
    [
        ({}, True),
        ({"jobs": [job("a", Outcome.COMPLETED, 1)]}, False),
        ({"batches": [finished_batch("x", {"completed": 1})]}, False),
        ({"dead": [dead(1)]}, False),
        ({"alerts": [alert_event("key_refused", "no", at=T0)]}, False),
    ],
)
def test_is_empty(parts: dict[str, Any], empty: bool) -> None:
    """A digest is empty only with no jobs, batches, dead deliveries or alerts."""
    assert empty == is_empty(digest(**parts))
