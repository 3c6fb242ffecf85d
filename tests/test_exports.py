"""Exports are jobs too: the engine watches them through the real client against a local SendGrid
that serves GET /v3/marketing/contacts/exports/{id} as the spec's ContactExport, to ready,
failure and timed_out, with contact_export.<outcome> events; a job's account picks its client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import serve_app
from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.models import JobKind, JobRef, JobState
from watcher.outcomes import KEY_STATE, Recipient
from watcher.policy import PollPolicy
from watcher.ratelimit.local import LocalRateBudget
from watcher.routing import Route
from watcher.schema import Secret
from watcher.sendgrid import SendGridClient, SendGridSettings
from watcher.store import MemoryStore

NOW = 1_800_000_000.0
POLICY = PollPolicy(initial_delay=0.0, min_interval=10.0, max_interval=10.0, deadline=60.0, jitter=0.0)
URL_1 = "https://exports.example.test/e/part-1.csv.gz?X-Amz-Signature=topsecret"
URL_2 = "https://exports.example.test/e/part-2.csv.gz?X-Amz-Signature=topsecret"


def export_body(status: str, **fields: Any) -> dict[str, Any]:
    """A ContactExport as the spec has it (id, status, created_at, updated_at, expires_at required)."""
    return {"id": "x", "status": status, "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:01:00Z",
            "expires_at": "2026-11-30T10:00:00Z", "_metadata": {"self": "https://api.sendgrid.com/"}, **fields}  # fmt: skip


@dataclass
class LocalSendGrid:
    """Scripted answers per job id (the last one repeats); records (path, Authorization) of each request."""

    answers: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization", "")))
        script = self.answers.get(request.match_info["id"], [(404, {"errors": [{"message": "not found"}]})])
        status, body = script.pop(0) if len(script) > 1 else script[0]
        return web.json_response(body, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v3/marketing/contacts/exports/{id}", self.handle)
        app.router.add_get("/v3/marketing/contacts/imports/{id}", self.handle)
        return app


@pytest.fixture
async def sendgrid() -> AsyncIterator[tuple[LocalSendGrid, str]]:
    fake = LocalSendGrid()
    runner, port = await serve_app(fake.app())
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def client(base_url: str, session: aiohttp.ClientSession, clock: ManualClock, key: str = "SG.main") -> SendGridClient:
    settings = SendGridSettings(api_key=Secret(key), base_url=base_url)
    return SendGridClient(settings, session=session, budget=LocalRateBudget(max_rate=None, clock=clock), clock=clock)


async def poll_due(engine: Engine, store: MemoryStore, clock: ManualClock) -> list[JobState]:
    """Claim and poll every due job once (no loop, no timers), then write the records."""
    claimed = await store.claim_due_jobs(now=clock.now(), limit=100, owner="w", lease=60)
    for job in claimed:
        engine._hold(job.id, job.lease.token if job.lease else "")
        await engine._poll(job)
    await engine._write_records()
    return claimed


async def watch(engine: Engine, store: MemoryStore, clock: ManualClock, rounds: int) -> None:
    for _ in range(rounds):
        await poll_due(engine, store, clock)
        clock.advance(10.0)


async def test_an_export_is_watched_to_ready_and_failure_with_contact_export_events(
    sendgrid: tuple[LocalSendGrid, str], session: aiohttp.ClientSession
) -> None:
    """Exports poll the exports path until `ready` / `failure` (which would never end an import) and
    notify contact_export.<outcome> with the DESIGN data; an import beside them still polls imports."""
    fake, base = sendgrid
    fake.answers["exp-ok"] = [(200, export_body("pending")),
                              (200, export_body("ready", urls=[URL_1, URL_2], contact_count=1234,
                                                completed_at="2026-11-27T10:02:00Z", export_type="contacts_export"))]
    fake.answers["exp-bad"] = [(200, export_body("failure", message="segment was deleted"))]
    fake.answers["imp-1"] = [(200, {"id": "imp-1", "status": "ready"}), (200, {"id": "imp-1", "status": "completed"})]
    clock, store = ManualClock(NOW), MemoryStore()
    for ref in (JobRef("exp-ok", {"team": "data"}, kind=JobKind.EXPORT), JobRef("exp-bad", kind="export"),
                JobRef("imp-1")):  # fmt: skip
        await store.add_job(ref, now=NOW, first_poll_at=NOW)
    engine = Engine(store=store, client=client(base, session, clock), policy=POLICY, clock=clock, owner="w",
                    recipients=[Recipient("hook", 3600.0)])  # fmt: skip

    await watch(engine, store, clock, 3)

    states = {job.id: (job.state, job.polls) for job in await store.list_jobs()}
    assert {"exp-ok": ("ready", 2), "exp-bad": ("failure", 1), "imp-1": ("completed", 2)} == states
    paths = {path for path, _ in fake.seen}
    assert {"/v3/marketing/contacts/exports/exp-ok", "/v3/marketing/contacts/exports/exp-bad",
            "/v3/marketing/contacts/imports/imp-1"} == paths  # fmt: skip
    events = {d.job_id: dict(d.event) for d in await store.list_deliveries()}
    assert {
        "type": "contact_export.ready",
        "timestamp": "2027-01-15T08:00:10Z",
        "data": {"export_id": "exp-ok", "status": "ready", "contact_count": 1234, "urls": [URL_1, URL_2],
                 "expires_at": "2026-11-30T10:00:00Z", "started_at": "2026-11-27T10:00:00Z",
                 "finished_at": "2026-11-27T10:02:00Z", "job_type": "contacts_export", "labels": {"team": "data"},
                 "watch": {"added_at": "2027-01-15T08:00:00Z", "detected_at": "2027-01-15T08:00:10Z", "polls": 2}},
    } == events["exp-ok"]  # fmt: skip
    failed = events["exp-bad"]
    assert ("contact_export.failure", "segment was deleted", [], None) == (
        failed["type"], failed["data"]["message"], failed["data"]["urls"], failed["data"]["contact_count"])
    assert "contact_import.completed" == events["imp-1"]["type"]
    assert {"ready": 1, "failure": 1, "completed": 1} == engine.outcomes


async def test_an_export_pending_past_its_deadline_times_out_and_an_unknown_id_is_not_found(
    sendgrid: tuple[LocalSendGrid, str], session: aiohttp.ClientSession
) -> None:
    """The deadline ends a pending export as timed_out; a 404 beyond the grace is not_found, as for imports;
    an import status an export answers with ("completed") does not end it."""
    fake, base = sendgrid
    fake.answers["exp-slow"] = [(200, export_body("completed")), (200, export_body("pending"))]
    clock, store = ManualClock(NOW), MemoryStore()
    policy = PollPolicy(initial_delay=0.0, min_interval=10.0, max_interval=10.0, deadline=30.0,
                        not_found_grace=15.0, jitter=0.0)  # fmt: skip
    await store.add_job(JobRef("exp-slow", kind=JobKind.EXPORT), now=NOW, first_poll_at=NOW)
    await store.add_job(JobRef("exp-gone", kind=JobKind.EXPORT), now=NOW, first_poll_at=NOW)
    engine = Engine(store=store, client=client(base, session, clock), policy=policy, clock=clock, owner="w",
                    recipients=[Recipient("hook", 3600.0)])  # fmt: skip

    await watch(engine, store, clock, 4)

    slow, gone = await store.get_job("exp-slow"), await store.get_job("exp-gone")
    assert slow is not None and gone is not None
    assert (("timed_out", 4, "pending"), ("not_found", 3)) == (
        (slow.state, slow.polls, slow.snapshot.status if slow.snapshot else None), (gone.state, gone.polls))
    types = sorted(d.event["type"] for d in await store.list_deliveries())
    assert ["contact_export.not_found", "contact_export.timed_out"] == types


async def test_a_jobs_account_picks_its_client_and_an_unknown_account_waits_with_one_alert(
    sendgrid: tuple[LocalSendGrid, str], session: aiohttp.ClientSession
) -> None:
    """A job of a named account is polled with that account's client (its own key), one with no account
    with the default client; a job naming an account nobody configured is not polled, alerts once
    (its own key state, the default one untouched), and times out at its deadline."""
    fake, base = sendgrid
    for job_id in ("e-main", "e-eu"):
        fake.answers[job_id] = [(200, export_body("pending")), (200, export_body("ready", urls=[URL_1]))]
    clock, store = ManualClock(NOW), MemoryStore()
    await store.add_job(JobRef("e-main", kind=JobKind.EXPORT), now=NOW, first_poll_at=NOW)
    await store.add_job(JobRef("e-eu", kind=JobKind.EXPORT, account="eu-brand"), now=NOW, first_poll_at=NOW)
    await store.add_job(JobRef("e-lost", kind=JobKind.EXPORT, account="gone"), now=NOW, first_poll_at=NOW)
    await store.add_job(JobRef("i-lost", account="gone-too"), now=NOW, first_poll_at=NOW)
    main = client(base, session, clock, "SG.main")
    eu = client(base, session, clock, "SG.eu")
    routes = [Route(("eu-hook",), accounts=frozenset({"eu-brand"})), Route(("main-hook",), accounts=frozenset({"main"}))]
    engine = Engine(store=store, client=main, clients={"main": main, "eu-brand": eu}, default_account="main",
                    policy=POLICY, clock=clock, owner="w", routes=routes,
                    recipients=[Recipient("eu-hook", 3600.0), Recipient("main-hook", 3600.0)])  # fmt: skip

    await watch(engine, store, clock, 8)

    keys = {path.rsplit("/", 1)[1]: auth for path, auth in fake.seen}
    assert {"e-main": "Bearer SG.main", "e-eu": "Bearer SG.eu"} == keys
    assert {"e-main": "ready", "e-eu": "ready", "e-lost": "timed_out", "i-lost": "timed_out"} == {
        j.id: j.state for j in await store.list_jobs()}
    deliveries = await store.list_deliveries()
    routed = {(d.job_id, d.notifier) for d in deliveries if d.job_id}
    assert {("e-main", "main-hook"), ("e-eu", "eu-hook")} == routed
    alerts = [dict(d.event["data"]) for d in deliveries if d.job_id is None]
    # One alert per unknown account and recipient (each account's delivery ids its own).
    assert [("unknown_account", "gone")] * 2 + [("unknown_account", "gone-too")] * 2 == sorted(
        (a["alert"], a["account"]) for a in alerts)
    assert {"eu-brand", "gone", "gone-too"} == {d.event["data"].get("account") for d in deliveries if d.job_id != "e-main"}
    assert (await store.get_meta(KEY_STATE) or "").startswith("ok:")  # the default key's state is its own
    assert (await store.get_meta(f"{KEY_STATE}:gone") or "").startswith("refused:")
    assert 14 == engine.stats.polls["unknown_account"]  # each round (0 s to the 60 s deadline), never a request


def test_export_event_for_the_default_account_has_no_account_key() -> None:
    """A job of the default account keeps DESIGN's shape: no `account` in import or export data."""
    from watcher.events import outcome_event
    from watcher.models import Outcome, Snapshot

    job = JobState("e-1", {}, None, NOW, NOW, kind=JobKind.EXPORT)
    data = outcome_event(job, outcome=Outcome.READY, snapshot=Snapshot("ready"), polls=1, detected_at=NOW)["data"]
    assert ["contact_count", "expires_at", "export_id", "finished_at", "labels", "started_at", "status", "urls",
            "watch"] == sorted(data)  # fmt: skip
    imported = outcome_event(JobState("i-1", {}, None, NOW, NOW, account="eu"), outcome=Outcome.COMPLETED,
                             snapshot=None, polls=1, detected_at=NOW)  # fmt: skip
    assert ("contact_import.completed", "eu") == (imported["type"], imported["data"]["account"])
    assert json.dumps(data)  # plain JSON


def test_a_batch_of_exports_counts_ready_and_failure() -> None:
    """A batch summary counts export outcomes too: failure is its worst, ready is clean (not listed)."""
    from watcher.batches import batch_event
    from watcher.models import Batch, BatchPhase, Outcome

    jobs = [JobState(f"e-{o.value}", {}, None, NOW, NOW, outcome=o, detected_at=NOW, batch="b", kind=JobKind.EXPORT)
            for o in (Outcome.READY, Outcome.FAILURE)]  # fmt: skip
    batch = Batch("b", BatchPhase.OPEN, 2, 2, {"ready": 1, "failure": 1}, NOW, NOW)
    data = batch_event(batch, jobs, now=NOW, summary_id="s", public_url=None)["data"]
    assert ("failure", {"failure": 1, "ready": 1}) == (data["status"], data["outcomes"])
    assert [{"job_id": "e-failure", "outcome": "failure", "errored_count": 0}] == data["not_completed"]


async def test_the_default_account_named_by_a_job_shares_the_one_key_state(
    sendgrid: tuple[LocalSendGrid, str], session: aiohttp.ClientSession
) -> None:
    """A job naming the default account (as POST /imports and the CLI record it) and one naming none are
    polled with the same key: its refusal is one key state and one alert per recipient, not two."""
    fake, base = sendgrid
    refused = (401, {"errors": [{"message": "authorization required"}]})
    for job_id in ("k-named", "k-unnamed"):
        fake.answers[job_id] = [refused]
    clock, store = ManualClock(NOW), MemoryStore()
    await store.add_job(JobRef("k-named", kind=JobKind.EXPORT, account="main"), now=NOW, first_poll_at=NOW)
    await store.add_job(JobRef("k-unnamed", kind=JobKind.EXPORT), now=NOW, first_poll_at=NOW)
    main = client(base, session, clock, "SG.main")
    engine = Engine(store=store, client=main, clients={"main": main}, default_account="main", policy=POLICY,
                    clock=clock, owner="w", recipients=[Recipient("ops", 3600.0)])
    await watch(engine, store, clock, 2)
    alerts = [d.event["data"]["alert"] for d in await store.list_deliveries() if d.job_id is None]
    assert ["key_refused"] == alerts
    assert (await store.get_meta(KEY_STATE) or "").startswith("refused:")
    assert await store.get_meta(f"{KEY_STATE}:main") is None
