"""The polling engine: a due-time queue kept by the store, bounded concurrency, leases.

Per-job polls are not APScheduler jobs: the store orders unfinished jobs by
``next_poll_at`` and the engine claims the due ones in batches, so 100,000
tracked jobs cost one index, not 100,000 timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from watcher.claimloop import ClaimLoop
from watcher.clock import Clock
from watcher.errors import ImportNotFound, KeyRefused, StoreUnavailable, TryLater
from watcher.events import alert_event
from watcher.logs import CachedLogger, JobLog
from watcher.models import TERMINAL_STATUSES, JobState, PollUpdate, Snapshot
from watcher.outcomes import ErrorsFetcher, Recipient, errors_info, make_delivery, outcome_deliveries
from watcher.policy import (
    Decision,
    Finish,
    NotFound,
    Observation,
    PollPolicy,
    Refused,
    Reschedule,
    Seen,
    Transient,
    decide,
)
from watcher.routing import Route
from watcher.store.base import RecordsPolls, StateStore

log = structlog.get_logger("watcher.engine")
_log = CachedLogger(log)

KEY_STATE = "sendgrid.key_state"


class ImportSource(Protocol):
    """What the engine needs of the SendGrid client."""

    async def get_import(self, job_id: str) -> Snapshot: ...




@dataclass
class EngineStats:
    """Counters read by metrics and the shutdown summary."""

    polls: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    poll_seconds: list[float] = field(default_factory=list)

    def count_poll(self, result: str) -> None:
        self.polls[result] = self.polls.get(result, 0) + 1


class Engine(ClaimLoop):
    """Claims due jobs, polls them, records what happened; one per process."""

    name, crashed, loop_log = "engine", "poll_crashed", log

    def __init__(
        self,
        *,
        store: StateStore,
        client: ImportSource,
        policy: PollPolicy,
        clock: Clock,
        owner: str,
        recipients: Sequence[Recipient],
        routes: Sequence[Route] = (),
        errors_fetcher: ErrorsFetcher | None = None,
        max_concurrency: int = 32,
        lease: float = 120.0,
        rng: random.Random | None = None,
        on_deliveries: Callable[[], None] | None = None,
        on_poll: Callable[[str, float], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, limit=max_concurrency)
        self.store = store
        self.client = client
        self.policy = policy
        self.owner = owner
        self.recipients = {r.name: r for r in recipients}
        self.routes = tuple(routes)
        self.errors_fetcher = errors_fetcher
        self.max_concurrency = max_concurrency
        self.lease = lease
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.on_deliveries = on_deliveries or (lambda: None)
        self.on_poll = on_poll
        self.stats = EngineStats()
        self._ready: deque[tuple[JobState, float]] = deque()  # claimed (job, when), not started
        self._reserve = 2 * max_concurrency  # ready jobs to keep besides those in flight
        self._stopping = False
        self._batch_store: RecordsPolls | None = store if isinstance(store, RecordsPolls) else None
        self._records: list[tuple[str, PollUpdate, JobLog]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._claiming = False
        self._unknown_logged: set[tuple[str, str]] = set()
        self._key_state: str | None = None

    # --- the loop -------------------------------------------------------------
    #
    # Due jobs are claimed into a ready queue; runner tasks (at most max_concurrency, so
    # at most that many polls in flight) take them one after another. A runner goes
    # straight from one poll to the next: no task per poll, and the next request leaves
    # in the same event-loop turn the previous answer arrived. A reserve of up to twice
    # max_concurrency jobs waits ready besides those in flight, so runners do not run dry
    # while the next claim is on its way. A ready job whose lease has half run out is
    # given back, not polled, and halves the reserve (polls held back by the rate budget
    # must not wait out their leases in the queue); jobs taken while fresh grow it again.
    #
    # The polls that finish in one event-loop turn queue their (non-final) records; the
    # next turn, one "flush" task writes them with one `record_polls` (one transaction)
    # and, when half the reserve is gone, claims the next round. A store without
    # `record_polls` gets a `record_poll` per poll, awaited by the runner, as before.
    # The loop itself claims when runners end, on `wake`, and at least every second.

    async def run(self, stop: asyncio.Event) -> None:
        """Poll due jobs until `stop` is set; in-flight polls are left to `drain`."""
        self._stopping = False
        await super().run(stop)

    async def _after_run(self) -> None:
        # Runners finish the poll in hand; jobs claimed but not started go back.
        self._stopping = True
        await self._release_ready()

    async def _next_due_at(self) -> float | None:
        return await self.store.next_job_due_at()

    def _room(self) -> int:
        """How many more jobs this engine may hold: max_concurrency in flight, plus the reserve."""
        return self.max_concurrency + self._reserve - len(self._inflight) - len(self._ready)

    async def _claim(self) -> int:
        """Claim due jobs into the ready queue (up to the room left) and start runners for them."""
        room = self._room()
        if room <= 0 or self._claiming:
            self._start_runners()
            return 0
        self._claiming = True
        try:
            now = self.clock.now()
            jobs = await self.store.claim_due_jobs(now=now, limit=room, owner=self.owner, lease=self.lease)
        finally:
            self._claiming = False
        self._ready.extend((job, now) for job in jobs)
        if self._stopping:
            await self._release_ready()  # stopped while claiming
        self._start_runners()
        return len(jobs)

    def _start_runners(self) -> None:
        while self._ready and len(self._inflight) < self.max_concurrency and not self._stopping:
            first = self._ready.popleft()
            task = asyncio.create_task(self._run_polls(first), name=f"poll:{first[0].id}")
            self._start(task)

    async def _run_polls(self, entry: tuple[JobState, float]) -> None:
        """One runner: poll `entry`'s job, then ready jobs one after another while there are any."""
        batch = self._batch_store is not None
        while True:
            job, claimed_at = entry
            waited = self.clock.now() - claimed_at
            if waited < self.lease / 2:
                if waited < self.lease / 8 and self._reserve < 2 * self.max_concurrency:
                    self._reserve += 1
                await self._poll(job, batch=batch)
            else:
                self._reserve //= 2
                await self._release(job)  # waited too long: let the next claim take it afresh
            if self._stopping or not self._ready:
                return
            entry = self._ready.popleft()
            if len(self._ready) <= self._reserve // 2:
                self._schedule_flush()  # half the reserve is gone: claim the next round

    def _schedule_flush(self) -> None:
        if self._flusher is None:
            # Runs next turn, when every poll finishing in this one has queued its record.
            self._flusher = asyncio.create_task(self._flush(), name="engine:flush")

    async def _flush(self) -> None:
        """Write the queued records (one `record_polls` per batch), then top the ready queue up."""
        try:
            while True:
                if self._records:
                    await self._write_records()
                if not self._stopping and len(self._ready) <= self._reserve // 2:
                    try:
                        await self._claim()
                    except Exception:
                        self._wake.set()  # the loop claims again, and reports (or raises) what failed
                if not self._records:
                    return
        finally:
            self._flusher = None

    async def _release_ready(self) -> None:
        while self._ready:
            job, _ = self._ready.popleft()
            await self._release(job)

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds for in-flight polls, cancel the rest and release their leases."""
        self._stopping = True
        cancelled = await self._finish_tasks(grace)
        await self._release_ready()
        if self._flusher is not None:
            # Polls already made are written, as a poll waiting on its record_poll was.
            await asyncio.gather(asyncio.shield(self._flusher), return_exceptions=True)
        await self._release_ready()
        return cancelled

    # --- one poll ---------------------------------------------------------------

    async def _poll(self, job: JobState, *, batch: bool) -> None:
        """Poll one claimed job; a non-final result is recorded now, or queued for the next batch."""
        bound = JobLog(_log, job.id)
        started = self.clock.now()
        try:
            seen = await self._observe(job, bound)
            now = self.clock.now()
            if self.on_poll is not None:
                self.on_poll(type(seen).__name__.lower(), now - started)
            decision = decide(self.policy, job, seen, now, self.rng.random())
            if batch and isinstance(decision, Reschedule):
                self._queue_record(job, decision, bound)
            else:
                await self._record(job, decision, now, bound)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except StoreUnavailable as exc:
            bound.warning("engine.record_failed", error=str(exc))

    def _queue_record(self, job: JobState, decision: Reschedule, bound: JobLog) -> None:
        update = PollUpdate(decision.next_poll_at, decision.polls, decision.transient_errors, decision.snapshot)
        self._records.append((job.id, update, bound))
        self._schedule_flush()

    async def _write_records(self) -> None:
        """Write the queued records with one `record_polls`; report each as `_record` would."""
        batch, self._records = self._records, []
        if self._batch_store is None:  # pragma: no cover - records are queued only for such stores
            return
        try:
            written = await self._batch_store.record_polls(
                [(job_id, update) for job_id, update, _ in batch], owner=self.owner
            )
        except StoreUnavailable as exc:
            for _, _, bound in batch:
                bound.warning("engine.record_failed", error=str(exc))
            return
        except Exception as exc:
            for _ in batch:
                log.error("engine.poll_crashed", error=repr(exc))
            return
        for (_, _, bound), ok in zip(batch, written, strict=True):
            if not ok:
                bound.warning("engine.lease_lost")

    async def _observe(self, job: JobState, bound: Any) -> Observation:
        try:
            snapshot = await self.client.get_import(job.id)
        except ImportNotFound:
            self.stats.count_poll("not_found")
            if self._key_state != "ok":
                await self._key_works()
            return NotFound()
        except KeyRefused as exc:
            self.stats.count_poll("key_refused")
            await self._key_refused(exc)
            return Refused()
        except TryLater as exc:
            self.stats.count_poll("transient")
            bound.info("engine.poll_deferred", reason=exc.reason, retry_after=exc.retry_after)
            return Transient(exc.retry_after)
        self.stats.count_poll("ok")
        if self._key_state != "ok":
            await self._key_works()
        self._note_unknown_status(job.id, snapshot, bound)
        return Seen(snapshot)

    def _note_unknown_status(self, job_id: str, snapshot: Snapshot, bound: Any) -> None:
        if snapshot.status == "pending":
            return  # the common answer, known without normalising it
        status = snapshot.normalized_status or ""
        if status in TERMINAL_STATUSES or status == "pending":
            return
        if (job_id, status) not in self._unknown_logged:
            if len(self._unknown_logged) > 10_000:
                self._unknown_logged.clear()
            self._unknown_logged.add((job_id, status))
            bound.warning("engine.unknown_status", status=snapshot.status)

    async def _record(self, job: JobState, decision: Decision, now: float, bound: Any) -> None:
        if isinstance(decision, Reschedule):
            update = PollUpdate(
                decision.next_poll_at, decision.polls, decision.transient_errors, decision.snapshot
            )
            if not await self.store.record_poll(job.id, update, owner=self.owner):
                bound.warning("engine.lease_lost")
            return
        await self._finish(job, decision, now, bound)

    async def _finish(self, job: JobState, decision: Finish, now: float, bound: Any) -> None:
        errors = await errors_info(decision, self.errors_fetcher)
        deliveries, names = outcome_deliveries(
            job, decision, now, routes=self.routes, recipients=self.recipients, errors=errors
        )
        written = await self.store.record_outcome(
            job.id,
            outcome=decision.outcome,
            snapshot=decision.snapshot,
            polls=decision.polls,
            detected_at=now,
            deliveries=deliveries,
            owner=self.owner,
        )
        if not written:
            bound.warning("engine.outcome_not_written", outcome=decision.outcome.value)
            return
        self.stats.outcomes[decision.outcome.value] = self.stats.outcomes.get(decision.outcome.value, 0) + 1
        self._unknown_logged.discard((job.id, (decision.snapshot.normalized_status or "") if decision.snapshot else ""))
        bound.info("job.finished", outcome=decision.outcome.value, polls=decision.polls, notify=names)
        if deliveries:
            self.on_deliveries()

    async def _release(self, job: JobState) -> None:
        with contextlib.suppress(StoreUnavailable, asyncio.CancelledError):
            await asyncio.shield(self.store.release_job(job.id, owner=self.owner))

    # --- the key alert: once when refused, once when it works again ---------------

    async def _key_refused(self, exc: KeyRefused) -> None:
        await self._key_transition("refused", f"SendGrid refused the API key (HTTP {exc.status}): {exc.message}")

    async def _key_works(self) -> None:
        """An answer came: the key works. Callers skip this once it is known to (every poll answers)."""
        await self._key_transition("ok", "SendGrid accepts the API key again")

    async def _key_transition(self, new: str, message: str) -> None:
        if self._key_state == new:
            return
        previous = await self.store.get_meta(KEY_STATE)
        previous_state = previous.split(":", 1)[0] if previous else None
        self._key_state = new
        if previous_state == new or (previous_state is None and new == "ok"):
            if previous is None:
                await self.store.set_meta(KEY_STATE, f"{new}:{self.clock.now()}")
            return
        now = self.clock.now()
        await self.store.set_meta(KEY_STATE, f"{new}:{now}")
        kind = "key_refused" if new == "refused" else "key_accepted"
        log.warning("watcher.alert", alert=kind, message=message)
        event = alert_event(kind, message, at=now)
        # Replicas racing on the same transition read the same `previous`, so they
        # build the same delivery ids and the store keeps one of each.
        deliveries = [
            make_delivery(recipient, event, now, None, kind, previous or "initial")
            for recipient in self.recipients.values()
        ]
        if deliveries and await self.store.add_deliveries(deliveries):
            self.on_deliveries()
