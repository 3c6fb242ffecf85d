"""What a final outcome notifies: routed recipients, stable delivery ids, the errors summary."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from watcher.clock import ManualClock
from watcher.errors import KeyRefused
from watcher.models import JobState, Outcome, Snapshot
from watcher.outcomes import (
    KEY_STATE,
    BatchChoice,
    ErrorsInfo,
    KeyAlerts,
    Recipient,
    default_batch_choice,
    errors_info,
    outcome_deliveries,
)
from watcher.policy import Finish
from watcher.routing import Route
from watcher.store import SqliteStore

NOW = 1_800_000_000.0
RECIPIENTS = {name: Recipient(name, 3600.0) for name in ("team-slack", "audit-hook", "ops-mail")}
ROUTES = (
    Route(("ops-mail",), statuses=frozenset({"errored", "failed"})),
    Route(("team-slack",), labels={"team": frozenset({"growth"})}),
    Route(("audit-hook",)),
)
ERRORED = Snapshot("errored", "upsert", {"requested_count": 10, "errored_count": 1, "errors_url": "https://e/x.csv"})


def job(**changes: object) -> JobState:
    fields: dict[str, object] = {"id": "job-1", "labels": {"team": "growth"}, "notify": None, "added_at": NOW - 60,
                                  "next_poll_at": NOW}  # fmt: skip
    fields.update(changes)
    return JobState(**fields)  # type: ignore[arg-type]


def test_routes_pick_the_recipients_and_each_gets_the_same_event() -> None:
    """Matching routes name the recipients, each gets one delivery of the same event, due now."""
    errors = ErrorsInfo({"rows": 1}, sample_csv="email,error\nx,invalid\n")
    deliveries, names = outcome_deliveries(
        job(), Finish(Outcome.ERRORED, 4, ERRORED), NOW, routes=ROUTES, recipients=RECIPIENTS, errors=errors
    )
    assert ["team-slack", "audit-hook", "ops-mail"] == names
    assert names == [d.notifier for d in deliveries]
    assert 1 == len({repr(d.event) for d in deliveries})
    first = deliveries[0]
    assert ("contact_import.errored", {"rows": 1}) == (first.event["type"], first.event["data"]["errors"])
    assert "email,error\nx,invalid\n" == first.event["errors_sample_csv"]
    assert (NOW, NOW, NOW + 3600.0, "job-1") == (first.created_at, first.next_attempt_at, first.deadline_at, first.job_id)


def test_delivery_ids_depend_on_job_outcome_and_recipient_only() -> None:
    """A replica (or a restart) finishing the same job again makes the same ids; another job or outcome does not."""

    def ids(j: JobState, outcome: Outcome, now: float) -> list[str]:
        deliveries, _ = outcome_deliveries(
            j, Finish(outcome, 3, ERRORED), now, routes=ROUTES, recipients=RECIPIENTS, errors=None
        )
        return [d.id for d in deliveries]

    first = ids(job(), Outcome.ERRORED, NOW)
    assert first == ids(job(), Outcome.ERRORED, NOW + 30)
    assert len(set(first)) == 3
    assert not set(first) & set(ids(job(id="job-2"), Outcome.ERRORED, NOW))
    assert not set(first) & set(ids(job(added_at=NOW - 10), Outcome.ERRORED, NOW))  # re-added after removal
    assert not set(first) & set(ids(job(), Outcome.FAILED, NOW))


def test_a_per_job_notify_list_overrides_the_routes() -> None:
    """An empty per-job notify list sends nothing, whatever the routes say."""
    deliveries, names = outcome_deliveries(
        job(notify=()), Finish(Outcome.COMPLETED, 2, None), NOW, routes=ROUTES, recipients=RECIPIENTS, errors=None
    )
    assert ([], []) == (deliveries, names)


async def fetched(url: str) -> ErrorsInfo:
    return ErrorsInfo({"url": url})


async def broken(url: str) -> ErrorsInfo:
    raise TimeoutError


@pytest.mark.parametrize(
    ("outcome", "snapshot", "fetcher", "expected"),
    [
        (Outcome.COMPLETED, ERRORED, fetched, None),
        (Outcome.ERRORED, ERRORED, fetched, {"url": "https://e/x.csv"}),
        (Outcome.FAILED, Snapshot("failed", results={}), fetched, {"unavailable": "SendGrid gave no errors_url"}),
        (Outcome.ERRORED, ERRORED, None, {"unavailable": "errors file download is disabled"}),
        (Outcome.ERRORED, ERRORED, broken, {"unavailable": "TimeoutError"}),
    ],
)
async def test_errors_info_never_holds_a_notification_back(
    outcome: Outcome, snapshot: Snapshot, fetcher: object, expected: dict[str, str] | None
) -> None:
    """The errors summary is there, or says why not; a failing download never raises."""
    info = await errors_info(Finish(outcome, 1, snapshot), fetcher)  # type: ignore[arg-type]
    assert expected == (None if info is None else dict(info.summary))


async def test_replicas_racing_on_a_refused_key_write_one_alert_with_the_state_change(tmp_path: Path) -> None:
    """Two replicas see the key refused at once: the state moves once and its alerts are written with it."""
    first, second = SqliteStore(str(tmp_path / "state.db")), SqliteStore(str(tmp_path / "state.db"))
    await first.open()
    await second.open()
    try:
        clock, refused = ManualClock(NOW), KeyRefused(401, "bad key")
        replicas = [KeyAlerts(store, RECIPIENTS, clock, lambda: None) for store in (first, second)]
        await asyncio.gather(*(replica.refused(refused) for replica in replicas))
        await asyncio.gather(*(replica.refused(refused) for replica in replicas))  # still refused: nothing new
        alerts = await first.list_deliveries()
        assert sorted(RECIPIENTS) == sorted(d.notifier for d in alerts)
        assert {"key_refused"} == {d.event["data"]["alert"] for d in alerts}
        assert f"refused:{NOW}" == await first.get_meta(KEY_STATE)
        clock.advance(60)
        await asyncio.gather(*(replica.works() for replica in replicas))
        kinds = sorted(d.event["data"]["alert"] for d in await first.list_deliveries())
        assert ["key_accepted"] * 3 + ["key_refused"] * 3 == kinds
    finally:
        await first.close()
        await second.close()


def test_a_batched_job_notifies_only_notifiers_asking_for_every_job_or_this_outcome_early() -> None:
    """For a job in a batch: a chat-like notifier gets a failure at once but not a completion (that waits
    for the summary); a notifier with per_job gets both; an unbatched job still reaches everyone."""
    recipients = {
        "chat": Recipient("chat", 60.0, BatchChoice(per_job=False)),
        "hook": Recipient("hook", 60.0, BatchChoice(per_job=True)),
        "pager": Recipient("pager", 60.0, BatchChoice(per_job=False, early=frozenset({"timed_out"}))),
    }

    def names(j: JobState, outcome: Outcome) -> list[str]:
        return outcome_deliveries(j, Finish(outcome, 1, None), NOW, routes=(), recipients=recipients, errors=None)[1]

    batched = job(batch="nightly")
    assert ["hook"] == names(batched, Outcome.COMPLETED)
    assert ["chat", "hook"] == names(batched, Outcome.FAILED)
    assert ["hook", "pager"] == names(batched, Outcome.TIMED_OUT)
    assert ["chat", "hook", "pager"] == names(job(), Outcome.COMPLETED)


def test_notifier_types_default_to_summaries_for_people_and_everything_for_machines() -> None:
    """slack and email (and unknown types) get no per-job message for batched jobs; webhook and console do."""
    assert {"slack": False, "email": False, "teams": False, "webhook": True, "console": True} == {
        kind: default_batch_choice(kind).per_job for kind in ("slack", "email", "teams", "webhook", "console")
    }
    assert {frozenset({"failed"})} == {default_batch_choice(k).early for k in ("slack", "webhook")}


async def test_the_engine_stores_the_errors_summary_with_the_outcome(tmp_path: Path) -> None:
    """The errors-file summary read for an errored job is written with its outcome, for batch summaries."""
    from watcher.engine import Engine
    from watcher.models import JobRef
    from watcher.policy import PollPolicy

    class Errored:
        async def get_import(self, job_id: str) -> Snapshot:
            return ERRORED

    async def fetch(url: str) -> ErrorsInfo:
        return ErrorsInfo({"rows": 1, "top_reasons": [{"reason": "invalid email", "count": 1}]})

    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    try:
        clock = ManualClock(NOW)
        await store.add_job(JobRef("e-1", batch="b"), now=NOW, first_poll_at=NOW)
        engine = Engine(store=store, client=Errored(), policy=PollPolicy(), clock=clock, owner="w",
                        recipients=[], errors_fetcher=fetch)
        [claimed] = await store.claim_due_jobs(now=NOW, limit=1, owner="w", lease=30)
        engine._hold(claimed.id, claimed.lease.token if claimed.lease else "")
        await engine._poll(claimed)
        stored = await store.get_job("e-1")
    finally:
        await store.close()
    assert stored is not None and ("errored", 1) == (stored.state, dict(stored.errors or {})["rows"])
