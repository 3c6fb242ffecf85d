"""Batch summary and stuck-warning events: pure builders over stored jobs."""

from __future__ import annotations

import random
from typing import Any

import pytest

from watcher.batches import (
    batch_event,
    batch_status,
    common_labels,
    merge_errors,
    stuck_batch_event,
    stuck_event,
    summary_id,
    uncovered_jobs,
)
from watcher.events import outcome_event
from watcher.models import Batch, BatchPhase, JobState, Outcome, Snapshot

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def job(
    job_id: str,
    outcome: Outcome | None = Outcome.COMPLETED,
    *,
    added: float = T0,
    detected: float | None = None,
    results: dict[str, Any] | None = None,
    errors: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    batch: str | None = "nightly",
) -> JobState:
    return JobState(
        id=job_id,
        labels=labels if labels is not None else {"team": "growth"},
        notify=None,
        added_at=added,
        next_poll_at=added,
        polls=3,
        snapshot=Snapshot(status="completed", job_type="upsert", results=results or {}),
        outcome=outcome,
        detected_at=(detected if detected is not None else added + 60) if outcome else None,
        batch=batch,
        errors=errors,
    )


def batch(**overrides: Any) -> Batch:
    fields: dict[str, Any] = {
        "name": "nightly",
        "phase": BatchPhase.OPEN,
        "jobs": 0,
        "final": 0,
        "outcomes": {},
        "started_at": T0,
        "quiet_since": T0,
    }
    return Batch(**{**fields, **overrides})


def summary(jobs: list[JobState], *, public_url: str | None = None, **overrides: Any) -> dict[str, Any]:
    return batch_event(batch(**overrides), jobs, now=T0 + 3600, summary_id="sum_x", public_url=public_url)["data"]


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ({}, "completed"),
        ({"completed": 3}, "completed"),
        ({"completed": 3, "not_found": 1}, "not_found"),
        ({"not_found": 1, "timed_out": 1}, "timed_out"),
        ({"timed_out": 5, "errored": 1}, "errored"),
        ({"errored": 9, "failed": 1, "completed": 90}, "failed"),
        ({"failed": 0, "completed": 1}, "completed"),
    ],
)
def test_batch_status_is_the_worst_outcome(outcomes: dict[str, int], status: str) -> None:
    """failed > errored > timed_out > not_found > completed; zero counts do not count."""
    assert status == batch_status(outcomes)


def test_summary_ids_are_deterministic_and_distinct() -> None:
    """The same batch and count give the same id on every replica; another count or batch another id."""
    assert summary_id("nightly", 0) == summary_id("nightly", 0)
    assert 3 == len({summary_id("nightly", 0), summary_id("nightly", 1), summary_id("weekly", 0)})
    assert summary_id("nightly", 0).startswith("sum_")


def test_event_shape_status_outcomes_and_times() -> None:
    """Type, timestamp, status, counts by outcome worst first, and start/end from the jobs."""
    jobs = [
        job("a", added=T0, detected=T0 + 100),
        job("b", Outcome.ERRORED, added=T0 + 10, detected=T0 + 900),
        job("c", Outcome.FAILED, added=T0 + 20, detected=T0 + 500),
    ]

    event = batch_event(batch(), jobs, now=T0 + 3600, summary_id="sum_1", public_url=None)

    assert ("contact_import.batch_finished", "2027-01-15T09:00:00Z") == (event["type"], event["timestamp"])
    data = event["data"]
    assert ("nightly", "sum_1", "failed", 3) == (data["batch"], data["summary_id"], data["status"], data["jobs"])
    assert [("failed", 1), ("errored", 1), ("completed", 1)] == list(data["outcomes"].items())
    assert ("2027-01-15T08:00:00Z", "2027-01-15T08:15:00Z") == (data["started_at"], data["finished_at"])


def test_totals_are_summed_over_snapshots() -> None:
    """The five counters are summed; whole floats count, missing and odd values count zero."""
    jobs = [
        job("a", results={"requested_count": 1000, "created_count": 990.0, "errored_count": 10}),
        job("b", results={"requested_count": 500, "updated_count": 500, "deleted_count": "x"}),
        job("c", results={}),
    ]

    assert {
        "requested_count": 1500,
        "created_count": 990,
        "updated_count": 500,
        "deleted_count": 0,
        "errored_count": 10,
    } == summary(jobs)["totals"]


def test_errors_are_merged_across_jobs_top_five() -> None:
    """Rows are summed, equal reasons merged, the five most common kept (ties by reason), unreadable files counted."""
    jobs = [
        job("a", errors={"rows": 10, "top_reasons": [{"reason": "invalid email", "count": 8}, {"reason": "b", "count": 2}]}),
        job("b", errors={"rows": 7, "top_reasons": [{"reason": "invalid email", "count": 4}, {"reason": "c", "count": 3}]}),
        job("c", errors={"rows": 9, "top_reasons": [{"reason": r, "count": 2} for r in "defg"]}),
        job("d", errors={"unavailable": "HTTP 403"}),
        job("e", errors=None),
    ]

    errors = summary(jobs)["errors"]

    assert 26 == errors["rows"]
    assert [("invalid email", 12), ("c", 3), ("b", 2), ("d", 2), ("e", 2)] == [
        (r["reason"], r["count"]) for r in errors["top_reasons"]
    ]
    assert 1 == errors["unavailable_jobs"]


def test_clean_batch_has_empty_errors_without_unavailable_key() -> None:
    """No errors anywhere: rows 0, no reasons, and no `unavailable_jobs` key."""
    assert {"rows": 0, "top_reasons": []} == merge_errors([None, {"rows": 0, "top_reasons": []}])


def test_not_completed_lists_the_first_twenty_in_added_order() -> None:
    """Jobs that did not complete, in (added_at, id) order whatever the input order, at most 20."""
    jobs = [job(f"ok-{i}", added=T0 + i) for i in range(30)]
    jobs += [
        job(f"bad-{i:02}", Outcome.ERRORED, added=T0 + 100 + i, results={"errored_count": i}) for i in range(25)
    ]
    random.Random(7).shuffle(jobs)

    listed = summary(jobs)["not_completed"]

    assert [f"bad-{i:02}" for i in range(20)] == [item["job_id"] for item in listed]
    assert {"job_id": "bad-03", "outcome": "errored", "errored_count": 3} == listed[3]


@pytest.mark.parametrize(
    ("labels", "common"),
    [
        ([{"team": "growth", "env": "prod"}, {"team": "growth", "env": "prod"}], {"team": "growth", "env": "prod"}),
        ([{"team": "growth", "env": "prod"}, {"team": "growth", "env": "test"}], {"team": "growth"}),
        ([{"team": "growth"}, {}], {}),
        ([{"team": "growth"}], {"team": "growth"}),
        ([], {}),
    ],
)
def test_common_labels(labels: list[dict[str, str]], common: dict[str, str]) -> None:
    """Only labels every job has with the same value are the batch's."""
    jobs = [job(f"j{i}", labels=ls) for i, ls in enumerate(labels)]

    assert common == common_labels(jobs)
    assert common == summary(jobs)["labels"]


@pytest.mark.parametrize(
    ("overrides", "continues"),
    [
        ({}, None),
        ({"summaries": 1, "last_summary_id": "sum_prev", "finished_at": T0}, "sum_prev"),
        ({"summaries": 0, "last_summary_id": "sum_stale"}, None),
    ],
)
def test_continues_names_the_previous_summary(overrides: dict[str, Any], continues: str | None) -> None:
    """`continues` is null on a first summary and the last summary's id once the batch reopened."""
    assert continues == summary([job("a")], **overrides)["continues"]


@pytest.mark.parametrize(
    ("public_url", "url"),
    [
        (None, None),
        ("", None),
        ("https://watch.example.com", "https://watch.example.com/batches/nightly"),
        ("https://watch.example.com/ops/", "https://watch.example.com/ops/batches/nightly"),
    ],
)
def test_url_only_with_a_public_url(public_url: str | None, url: str | None) -> None:
    """`url` links the batch on the status page when server.public_url is set, and is absent otherwise."""
    assert url == summary([job("a")], public_url=public_url).get("url")


def test_uncovered_jobs_after_a_summary_are_the_ones_that_joined_since() -> None:
    """A first summary covers every job; after one, only jobs added at or after its time."""
    jobs = [job("old", added=T0), job("new", added=T0 + 500)]

    assert ["old", "new"] == [j.id for j in uncovered_jobs(batch(), jobs)]
    reopened = batch(summaries=1, finished_at=T0 + 500, last_summary_id="sum_1")
    assert ["new"] == [j.id for j in uncovered_jobs(reopened, jobs)]


def test_stuck_event_is_the_outcome_data_pending() -> None:
    """A stuck warning carries the outcome event's data with status pending, pending_for and the batch."""
    pending = job("slow", None, added=T0, results={"requested_count": 5})

    event = stuck_event(pending, now=T0 + 7200)

    outcome_data = outcome_event(pending, outcome=Outcome.COMPLETED, snapshot=pending.snapshot, polls=3, detected_at=T0)
    assert ("contact_import.stuck", "2027-01-15T10:00:00Z") == (event["type"], event["timestamp"])
    assert set(outcome_data["data"]) | {"pending_for", "batch"} == set(event["data"])
    assert ("slow", "pending", 7200, "nightly") == tuple(
        event["data"][k] for k in ("job_id", "status", "pending_for", "batch")
    )
    assert 3 == event["data"]["watch"]["polls"]


def test_stuck_batch_event_groups_jobs() -> None:
    """One event for a batch's stuck jobs: count, the longest wait, common labels, the first 100 listed."""
    jobs = [job(f"s{i:03}", None, added=T0 + i, labels={"team": "growth", "n": str(i)}) for i in range(150)]

    event = stuck_batch_event("nightly", list(reversed(jobs)), now=T0 + 7200)

    data = event["data"]
    assert ("contact_import.stuck", "nightly", "pending", 150, 7200) == (
        event["type"], data["batch"], data["status"], data["count"], data["pending_for"]
    )
    assert {"team": "growth"} == data["labels"]
    assert [f"s{i:03}" for i in range(100)] == [item["job_id"] for item in data["jobs"]]
    assert stuck_event(jobs[0], now=T0 + 7200)["data"] == data["jobs"][0]
