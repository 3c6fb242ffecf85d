"""The polling engine: a due-time queue kept by the store, bounded concurrency, leases.

Per-job polls are not APScheduler jobs: the store orders unfinished jobs by
``next_poll_at`` and the engine claims the due ones in batches, so 100,000
tracked jobs cost one index, not 100,000 timers.

Imports and exports share all of it: a job's kind picks the read (get_import or
get_export) and the statuses that end it; its account picks the client. A poll that
changes nothing but the next poll time is not written: the job stays held (engine_held).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import structlog

from watcher.claimloop import ClaimLoop
from watcher.clock import Clock
from watcher.engine_held import HeldJobs
from watcher.engine_held import job_token as _token
from watcher.engine_observe import EngineStats, ImportSource, Observing
from watcher.errors import StoreUnavailable
from watcher.learned import LearnedSchedules
from watcher.logs import CachedLogger, JobLog
from watcher.models import JobState, PollUpdate, terminal_statuses
from watcher.outcomes import ErrorsFetcher, KeyAlerts, Recipient, StuckWarnings, errors_info, outcome_deliveries
from watcher.policy import Finish, PollPolicy, Reschedule, Seen, decide
from watcher.routing import Route
from watcher.store.base import StateStore
from watcher.supervise import StoreHealth

log = structlog.get_logger("watcher.engine")
_log = CachedLogger(log)

__all__ = ["Engine", "EngineStats", "ImportSource"]


class Engine(Observing, ClaimLoop):
    """Claims due jobs, polls them, records what happened; one per process."""

    name, crashed, loop_log = "engine", "poll_crashed", log
    lost_event, id_key = "engine.lease_lost", "job_id"

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
        store_health: StoreHealth | None = None,
        on_batch_outcome: Callable[[], None] | None = None,
        clients: Mapping[str, ImportSource] | None = None,
        default_account: str | None = None,
        learned: LearnedSchedules | None = None,
        on_outcome: Callable[[JobState], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, limit=max_concurrency, lease=lease, store_health=store_health)
        self.store = store
        self.client = client  # the default account's: jobs with no account
        self.clients = dict(clients or {})  # by account name
        self.default_account = default_account  # the name routes know `client`'s account by
        self.policy = policy
        self.learned = learned  # run times of finished jobs: their schedules (None: proportional only)
        self.on_outcome = on_outcome  # metrics: polls per job, detection delay
        self.owner = owner
        self.recipients = {r.name: r for r in recipients}
        self.routes = tuple(routes)
        self.errors_fetcher = errors_fetcher
        self.max_concurrency = max_concurrency
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.on_deliveries = on_deliveries or (lambda: None)
        self.on_poll = on_poll
        self.on_batch_outcome = on_batch_outcome or (lambda: None)  # a batch may settle from now on
        self.stats = EngineStats()
        self._ready: deque[tuple[JobState, float]] = deque()  # claimed (job, when), not started
        self._reserve = 2 * max_concurrency  # ready jobs to keep besides those in flight
        self._records: list[tuple[JobState, PollUpdate, JobLog]] = []
        self._waiting = HeldJobs()  # polled, unchanged, not written: due again from memory
        self.holding = True  # off only in tests and figures that show what holding saves
        self._flusher: asyncio.Task[None] | None = None
        self._claiming = False
        self._unknown_logged: set[tuple[str, str]] = set()
        self.key = KeyAlerts(store, self.recipients, clock, lambda: self.on_deliveries())
        self._account_keys: dict[str, KeyAlerts] = {}  # the named accounts' own key states
        self.stuck = StuckWarnings(
            store, warn_after=policy.warn_after, routes=self.routes, recipients=self.recipients,
            default_account=default_account,
        )

    @property
    def outcomes(self) -> dict[str, int]:
        """Final outcomes this engine recorded, by outcome."""
        return self.stats.outcomes

    # --- the loop -------------------------------------------------------------
    #
    # Due jobs are claimed into a ready queue; runner tasks (at most max_concurrency, so
    # at most that many polls in flight) take them one after another. A runner goes
    # straight from one poll to the next: no task per poll, and the next request leaves
    # in the same event-loop turn the previous answer arrived. A reserve of up to twice
    # max_concurrency jobs waits ready besides those in flight, so runners do not run dry
    # while the next claim is on its way. Every claimed job is held and renewed (ClaimLoop)
    # until recorded, so a poll held back by the rate budget never outlives its lease; a
    # ready job that waited half a lease is still given back, not polled, and halves the
    # reserve, so one replica does not sit on work others could do; jobs taken while
    # fresh grow it again.
    #
    # The polls that finish in one event-loop turn queue their (non-final) records; the
    # next turn, one "flush" task writes them with one `record_polls` (one transaction)
    # and, when half the reserve is gone, claims the next round.
    # The loop itself claims when runners end, on `wake`, and at least every second.

    async def _after_run(self) -> None:
        # Runners finish the poll in hand; jobs claimed but not started go back.
        self._stopping = True
        await self._release_ready()

    async def _next_due_at(self) -> float | None:
        stored, held = await self.store.next_job_due_at(), self._waiting.next_due_at()
        return held if stored is None else stored if held is None else min(stored, held)

    async def _renew(self, leases: Sequence[tuple[str, str]]) -> list[bool]:
        return await self.store.renew_jobs(leases, now=self.clock.now(), lease=self.lease)

    @property
    def settled(self) -> bool:
        """No poll in flight, none claimed and waiting to start, no claim under way: what is due
        now has been polled (a test's manual clock may move on)."""
        return not self._inflight and not self._ready and not self._claiming

    def _room(self) -> int:
        """How many more jobs this engine may hold: max_concurrency in flight, plus the reserve."""
        return self.max_concurrency + self._reserve - len(self._inflight) - len(self._ready)

    async def _claim(self) -> int:
        """Move due held jobs into the ready queue, claim due store jobs into the room left
        (at least one, so held jobs cannot starve the store's), and start runners for them."""
        room = self._room()
        if room <= 0 or self._claiming:
            self._start_runners()
            return 0
        now = self.clock.now()
        held = [] if self._stopping else self._waiting.take_due(now, room, self._still_held)
        self._ready.extend((job, now) for job in held)
        self._claiming = True
        try:
            asked = max(room - len(held), 1)
            jobs = await self.store.claim_due_jobs(now=now, limit=asked, owner=self.owner, lease=self.lease)
        finally:
            self._claiming = False
        self._waiting.note_claim(asked, jobs)
        for job in jobs:
            self._hold(job.id, _token(job))
        self._ready.extend((job, now) for job in jobs)
        if self._stopping:
            await self._release_ready()  # stopped while claiming
        self._start_runners()
        return len(jobs) + len(held)

    def _still_held(self, job: JobState) -> bool:
        """False once the renewer found this claim lost (the job stopped, or taken by another)."""
        return self._held.get(job.id) == _token(job)

    def _keeps(self, job: JobState, decision: Reschedule, now: float) -> bool:
        """Whether this poll may go unwritten: nothing but the next poll time changed, and
        that lies within the hold horizon (half a lease)."""
        return (
            self.holding and not self._stopping
            and decision.snapshot == job.snapshot and decision.transient_errors == job.transient_errors
            and decision.next_poll_at - now < self.lease / 2
        )  # fmt: skip

    def _start_runners(self) -> None:
        while self._ready and len(self._inflight) < self.max_concurrency and not self._stopping:
            first = self._ready.popleft()
            task = asyncio.create_task(self._run_polls(first), name=f"poll:{first[0].id}")
            self._start(task)

    async def _run_polls(self, entry: tuple[JobState, float]) -> None:
        """One runner: poll `entry`'s job, then ready jobs one after another while there are any."""
        while True:
            job, claimed_at = entry
            waited = self.clock.now() - claimed_at
            if waited < self.lease / 2:
                if waited < self.lease / 8 and self._reserve < 2 * self.max_concurrency:
                    self._reserve += 1
                await self._poll(job, may_hold=True)
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
        ready = [(job.id, _token(job)) for job, _ in self._ready]
        self._ready.clear()
        await self._give_back_all(ready, self.store.release_job)

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` seconds (or until `hurry`) for in-flight polls, cancel the rest
        and give back every claim left: a restart resumes them at once."""
        self._stopping = True
        try:
            cancelled = await self._finish_tasks(grace)
            await self._within_release_time(self._give_back_after_drain())
        finally:
            await self._stop_renewer()
        return cancelled

    async def _give_back_after_drain(self) -> None:
        await self._release_ready()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)  # polls already made are written
        await self._release_ready()
        for job in self._waiting.take_all(self._still_held):  # held jobs: their planned times and polls
            update = PollUpdate(job.next_poll_at, job.polls, job.transient_errors, job.snapshot)
            self._records.append((job, update, JobLog(_log, job.id)))
        if self._records:
            await self._write_records()
        await self._give_back_all(list(self._held.items()), self.store.release_job)

    # --- one poll ---------------------------------------------------------------

    async def _poll(self, job: JobState, *, may_hold: bool = False) -> None:
        """Poll one claimed job; a non-final result is queued for the next batch (or, `may_hold`,
        held unwritten when it changed nothing: only the loop's runners, as its claims serve them),
        a final one recorded now."""
        bound = JobLog(_log, job.id)
        started = self.clock.now()
        try:
            seen = await self._observe(job, bound)
            now = self.clock.now()
            if self.on_poll is not None:
                self.on_poll(type(seen).__name__.lower(), now - started)
            learned_wait = (
                self.learned.wait_for(job, now, self.policy, seen.snapshot)
                if self.learned is not None and isinstance(seen, Seen) else None
            )
            decision = decide(
                self.policy, job, seen, now, self.rng.random(), terminal=terminal_statuses(job.kind),
                learned_wait=learned_wait,
            )
            if isinstance(decision, Reschedule):
                # SendGrid itself says it still runs: it may be stuck (a held copy must not warn again)
                if isinstance(seen, Seen) and await self._warn_if_stuck(job, decision, now, bound):
                    job = replace(job, stuck_at=now)
                if may_hold and self._keeps(job, decision, now):
                    # Held, not written: the store keeps the last write, the lease fences it (engine_held).
                    self._waiting.hold(job.polled(decision.next_poll_at, decision.polls))
                else:
                    self._queue_record(job, decision.next_poll_at, decision, bound)
            else:
                await self._finish(job, decision, now, bound)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except StoreUnavailable as exc:
            # Not released: the lease runs out and the job is polled again then, not at once.
            self._let_go(job.id, _token(job))
            self.store_health.failed(exc)
            bound.warning("engine.record_failed", error=str(exc))
        except Exception as exc:
            self._crashed(job, exc, bound)

    async def _warn_if_stuck(self, job: JobState, decision: Reschedule, now: float, bound: JobLog) -> bool:
        """One stuck warning once it has been pending warn_after (True: marked now); it is watched
        on until its deadline."""
        if self.stuck.warn_after is None:
            return False  # no warnings configured: not even the copy below
        polled = replace(job, polls=decision.polls, snapshot=decision.snapshot)
        names = await self.stuck.warn(polled, _token(job), now)
        if names is None:
            return False
        bound.warning("job.stuck", pending_for=round(now - job.added_at), batch=job.batch, notify=names)
        if names:
            self.on_deliveries()
        return True

    def _crashed(self, job: JobState, exc: Exception, bound: JobLog) -> None:
        """A bug or an answer we cannot handle: logged with its traceback; the job is not dropped
        but polled again after max_interval (at once would repeat the crash as fast as we can poll)."""
        self.stats.crashes += 1
        bound.error("engine.poll_crashed", error=repr(exc), exc_info=exc)
        retry = Reschedule(
            self.clock.now() + self.policy.max_interval, job.polls, job.transient_errors + 1, job.snapshot
        )
        self._queue_record(job, retry.next_poll_at, retry, bound)

    def _queue_record(self, job: JobState, next_poll_at: float, decision: Reschedule, bound: JobLog) -> None:
        update = PollUpdate(next_poll_at, decision.polls, decision.transient_errors, decision.snapshot)
        self._records.append((job, update, bound))
        self._schedule_flush()

    async def _write_records(self) -> None:
        """Write the queued records with one `record_polls`; each claim ends with it."""
        batch, self._records = self._records, []
        try:
            written = await self.store.record_polls(
                [(job.id, _token(job), update) for job, update, _ in batch], now=self.clock.now()
            )
        except StoreUnavailable as exc:
            self.store_health.failed(exc)
            for job, _, bound in batch:
                self._let_go(job.id, _token(job))  # its lease runs out; polled again then
                bound.warning("engine.record_failed", error=str(exc))
            return
        except Exception as exc:
            self.stats.crashes += 1
            log.error("engine.poll_crashed", error=repr(exc), jobs=len(batch), exc_info=exc)
            for job, _, _ in batch:
                await self._release(job)
            return
        self.store_health.succeeded()
        for (job, _, bound), ok in zip(batch, written, strict=True):
            if ok:
                self._let_go(job.id, _token(job))
            else:
                self._lease_lost(job.id, _token(job), bound)

    async def _finish(self, job: JobState, decision: Finish, now: float, bound: Any) -> None:
        with structlog.contextvars.bound_contextvars(job_id=job.id):  # the download's log lines name the job
            errors = await errors_info(decision, self.errors_fetcher)
        deliveries, names = outcome_deliveries(
            job, decision, now, routes=self.routes, recipients=self.recipients, errors=errors,
            default_account=self.default_account,
        )
        written = await self.store.record_outcome(
            job.id,
            token=_token(job),
            now=self.clock.now(),
            outcome=decision.outcome,
            snapshot=decision.snapshot,
            polls=decision.polls,
            detected_at=now,
            deliveries=deliveries,
            errors=errors.summary if errors else None,
        )
        self.store_health.succeeded()
        if not written:
            self._let_go(job.id, _token(job))
            bound.warning("engine.outcome_not_written", outcome=decision.outcome.value)
            return
        self._let_go(job.id, _token(job))
        self.stats.outcomes[decision.outcome.value] = self.stats.outcomes.get(decision.outcome.value, 0) + 1
        self._unknown_logged.discard((job.id, (decision.snapshot.normalized_status or "") if decision.snapshot else ""))
        bound.info("job.finished", outcome=decision.outcome.value, polls=decision.polls, notify=names)
        done = replace(job, polls=decision.polls, snapshot=decision.snapshot, outcome=decision.outcome, detected_at=now)
        await self._learn(done, now, bound)
        if deliveries:
            self.on_deliveries()
        if job.batch is not None:
            self.on_batch_outcome()

    async def _learn(self, done: JobState, now: float, bound: Any) -> None:
        """Tell the metrics and the learned schedules about a recorded outcome; neither may fail the job."""
        if self.on_outcome is not None:
            self.on_outcome(done)
        if self.learned is not None:
            try:
                await self.learned.observe(done, now)
            except Exception as exc:  # the outcome is recorded; a lost sample only slows the learning
                bound.warning("policy.learn_failed", error=repr(exc))

    async def _release(self, job: JobState) -> None:
        await self._give_back(job.id, _token(job), self.store.release_job)
