"""Learned poll schedules for the engine: the run-time summary kept in the store, and the waits it implies.

The summary lives in the store's meta under `RUNTIMES_KEY`, shared by every replica. A
replica collects finished jobs' run times and writes them at most every `flush_every`
outcomes or `flush_after` seconds: it reads the stored summary, adds its own samples to it
and writes it back with `transition_meta` (compare-and-set), and on a conflict reads and
adds again. So two replicas writing at once lose no sample; the one that writes second adds
its samples as the newest (the only difference to a single writer is that order of decay).
A stored value that cannot be read is logged and replaced, never trusted.

Schedules are computed from the summary as last read or written (not from each new
sample), so a plan is recomputed at most once per flush. The engine asks `wait_for` after
a poll that saw the job running and hands the answer to `watcher.policy.decide`, which
jitters and clamps it, and falls back to the proportional policy when it is None.
`expected_finish` is what `status` and the page show.

A scarce rate budget (`max_rate`) stretches the schedules by one price of delay per account
(`watcher.stretch`): `wait_for` also notes each running job it saw (its kind, start and
wait; forgotten at its outcome or once overdue long), and `update_price`, run periodically
by the daemon, prices a random sample of them so that what they would ask at that price
fits the rate (times this replica's share of the running jobs when replicas share the
budget). So the engine stays as it is, the estimate costs no store read but one count, and
a job stops being stretched the moment the price falls back to None (the budget suffices).

A job's kind is (its account, the `job_type` SendGrid reports, the size band of
`requested_count`); its run time runs from SendGrid's `started_at` (or when it was added)
to `finished_at` (or when the watcher saw it end).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace

import structlog

from watcher.clock import Clock, SystemClock
from watcher.errors import StoreUnavailable
from watcher.events import parse_iso
from watcher.learning import (
    ANY,
    FAR_OUT,
    HALF_LIFE,
    HIGH_S,
    MIN_SAMPLES,
    UNKNOWN,
    Key,
    RunTimes,
    size_band,
)
from watcher.models import EXPORT_TERMINAL_STATUSES, TERMINAL_STATUSES, JobState, Snapshot, terminal_statuses
from watcher.optimal import next_poll_after
from watcher.policy import PollPolicy, base_interval
from watcher.store.base import StateStore
from watcher.stretch import demand, price_for, priced_wait, scale_free_hazard

log = structlog.get_logger("watcher.learned")

RUNTIMES_KEY = "policy.runtimes"
# Timed out or not found says nothing about run times.
_LEARNED = frozenset(TERMINAL_STATUSES.values()) | frozenset(EXPORT_TERMINAL_STATUSES.values())
HEADROOM = 0.9  # the share of the rate schedules may ask for: first polls and retries need the rest
SAMPLE = 400  # running jobs priced per account and update
MAX_RUNNING = 250_000  # running jobs remembered (about 200 B each); the longest unseen go first


def account_of(job: JobState) -> str:
    """The job's account as a summary key ("": the default account)."""
    return job.account or ""


def job_key(job: JobState, snapshot: Snapshot | None = None) -> Key:
    """The kind of `job`, from its account and what SendGrid said last."""
    snap = snapshot or job.snapshot
    account = account_of(job)
    job_type = snap.job_type.strip().lower()[:200] if snap and isinstance(snap.job_type, str) else UNKNOWN
    band = size_band(snap.results.get("requested_count")) if snap else UNKNOWN
    return account, job_type, band


def _epoch(value: object) -> float | None:
    parsed = parse_iso(value)
    return None if parsed is None else parsed.timestamp()


def origin(job: JobState, snapshot: Snapshot | None = None) -> float:
    """When the job's run began: SendGrid's started_at when it is believable, else when it was added."""
    snap = snapshot or job.snapshot
    started = _epoch(snap.started_at) if snap else None
    if started is None or not job.added_at - HIGH_S <= started <= job.added_at + HIGH_S:
        return job.added_at
    return started


def run_time(job: JobState, outcome_time: float) -> float | None:
    """How long a finished job ran; None if it did not finish (timed out, not found) or the times disagree."""
    snap = job.snapshot
    status = snap.normalized_status if snap else None
    if job.outcome not in _LEARNED and not (job.outcome is None and status in terminal_statuses(job.kind)):
        return None
    start = origin(job)
    started, finished = (_epoch(snap.started_at), _epoch(snap.finished_at)) if snap else (None, None)
    # SendGrid's own pair needs no clock of ours and leaves out our detection delay.
    seconds = finished - started if started is not None and finished is not None else outcome_time - start
    return seconds if math.isfinite(seconds) and 0 <= seconds <= HIGH_S else None


@dataclass(frozen=True, slots=True)
class Running:
    """A job `wait_for` saw running: its kind, when its run began, when it was seen and the wait it got."""

    key: Key
    start: float
    added_at: float
    seen_at: float
    wait: float


class LearnedSchedules:
    """The run-time summary of one replica, synced with the store, the waits it implies, and the price
    of delay a scarce rate budget sets."""

    def __init__(
        self, store: StateStore, *, min_samples: int = MIN_SAMPLES, half_life: float = HALF_LIFE,
        flush_every: int = 50, flush_after: float = 300.0, attempts: int = 5,
        policy: PollPolicy | None = None, max_rate: float | None = None, shared_rate: bool = False,
        clock: Clock | None = None, rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.min_samples = min_samples
        self.flush_every = flush_every
        self.flush_after = flush_after
        self.attempts = attempts
        self.summary = RunTimes(half_life=half_life)
        self.pending: list[tuple[Key, float]] = []
        self._last_flush: float | None = None
        self._max_pending = max(1000, 10 * flush_every)
        self.policy = policy or PollPolicy()  # what update_price prices (wait_for is handed the engine's)
        self.max_rate = max_rate  # each account's budget, polls per second (None: no limit, no price)
        self.shared_rate = shared_rate  # every replica spends the same budget (Redis): price our share
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - sampling, not cryptography
        self.running: dict[str, Running] = {}  # job id -> last seen running; oldest sighting first
        self.prices: dict[str, float] = {}  # account -> price of a second of delay, in polls (absent: none)
        self._first_polls: dict[str, int] = {}  # account -> first polls seen since the last update
        self._priced_at: float | None = None

    async def load(self) -> None:
        """Read the stored summary (at start, and whenever other replicas' samples should show)."""
        self.summary = self._parse(await self.store.get_meta(RUNTIMES_KEY))

    async def observe(self, job: JobState, outcome_time: float) -> bool:
        """Add a finished job's run time (`job` as recorded: its outcome and last snapshot); written with
        the others when a flush is due. True if it counted."""
        self.running.pop(job.id, None)
        seconds = run_time(job, outcome_time)
        if seconds is None:
            return False
        self.pending.append((job_key(job), seconds))
        del self.pending[: -self._max_pending]  # a store down for long: keep the newest
        if self._last_flush is None:
            self._last_flush = outcome_time
        if len(self.pending) >= self.flush_every or outcome_time - self._last_flush >= self.flush_after:
            try:
                await self.flush(outcome_time)
            except StoreUnavailable as exc:
                log.warning("policy.runtimes_unsaved", pending=len(self.pending), error=str(exc))
        return True

    async def flush(self, now: float) -> bool:
        """Add the pending samples to the stored summary (compare-and-set, retried); True once written."""
        for _ in range(self.attempts):
            current = await self.store.get_meta(RUNTIMES_KEY)
            summary = self._parse(current)
            for key, seconds in self.pending:
                summary = summary.add(key, seconds)
            if await self.store.transition_meta(RUNTIMES_KEY, expected=current, value=summary.to_json()):
                self.pending.clear()
                self.summary, self._last_flush = summary, now
                return True
        log.info("policy.runtimes_contended", attempts=self.attempts, pending=len(self.pending))
        return False

    def wait_for(self, job: JobState, now: float, policy: PollPolicy, snapshot: Snapshot | None = None) -> float | None:
        """The learned wait after a poll at `now` that saw `job` running (`snapshot`: that answer), for
        `decide(..., learned_wait=)`, stretched by its account's price of delay when there is one; None
        (the proportional wait) with `learn` off, or with too few samples or a job far outside them and
        no price. With a `max_rate`, notes the job as running, for `update_price`."""
        if not policy.learn:
            return None
        snap = snapshot or job.snapshot
        key = job_key(job, snap)
        seen = Running(key, self._start(job, snap, now), job.added_at, now, 0.0)
        wait = self._wait(seen, now, policy, self.prices.get(key[0]))
        if self.max_rate is None:  # no rate to fit, never a price: nothing to note for update_price
            return wait
        if job.polls == 0:  # new jobs' first polls come out of the rate before any schedule
            self._first_polls[key[0]] = self._first_polls.get(key[0], 0) + 1
        self.running.pop(job.id, None)
        self.running[job.id] = replace(seen, wait=base_interval(policy, now - job.added_at, wait))
        while len(self.running) > MAX_RUNNING:
            del self.running[next(iter(self.running))]
        return wait

    def _wait(self, job: Running, now: float, policy: PollPolicy, lam: float | None) -> float | None:
        """The learned wait of a running job at price `lam` (None: the target's); else, with a price, the
        proportional wait stretched by the square-root rule; else None."""
        hist = self.summary.lookup(job.key, self.min_samples)
        # One plan per summary, never per job: its horizon is the policy's deadline, not this job's
        # (its start differs from its add by SendGrid's whole-second started_at), which `decide` keeps.
        wait = next_poll_after(
            hist, now - job.start, target=policy.target_delay, min_interval=policy.min_interval,
            max_interval=policy.max_interval, deadline=policy.deadline, min_samples=self.min_samples, lam=lam,
        )
        if wait is not None or lam is None:
            return wait
        age = now - job.added_at
        return max(policy.growth * age, priced_wait(scale_free_hazard(age), lam))

    async def update_price(self) -> None:
        """Set each account's price of delay from a sample of the running jobs seen (see the module doc):
        the largest whose schedules fit `HEADROOM` of the rate, less the new jobs' first polls; none while
        the unstretched ones fit."""
        now, policy = self.clock.now(), self.policy
        since, self._priced_at = self._priced_at, now
        first_polls, self._first_polls = self._first_polls, {}
        if self.max_rate is None or not policy.learn:
            self.prices = {}
            return
        self.forget_overdue(now)
        share = 1.0
        if self.shared_rate and self.running:
            watching = (await self.store.counts()).watching
            share = min(1.0, len(self.running) / watching) if watching > 0 else 1.0
        by_account: dict[str, list[Running]] = {}
        for job in self.running.values():
            by_account.setdefault(job.key[0], []).append(job)
        prices = {}
        for account, jobs in by_account.items():
            sample = jobs if len(jobs) <= SAMPLE else self.rng.sample(jobs, SAMPLE)
            arriving = first_polls.get(account, 0) / (now - since) if since is not None and now > since else 0.0
            rate = max(self.max_rate * HEADROOM * share - arriving, 0.0) * len(sample) / len(jobs)
            lam = price_for(functools.partial(self._demand, sample, now, policy), rate)
            if lam is not None:
                prices[account] = lam
        if prices != self.prices:
            log.info("policy.price", prices={a or "default": round(p, 6) for a, p in prices.items()},
                     running=len(self.running), share=round(share, 3))
        self.prices = prices

    def forget_overdue(self, now: float) -> None:
        """Drop the jobs not seen again long after their wait (ended elsewhere, removed, or another replica's)."""
        slack = 2 * self.policy.max_interval
        for job_id in [i for i, j in self.running.items() if now > j.seen_at + 3 * j.wait + slack]:
            del self.running[job_id]

    def _demand(self, jobs: list[Running], now: float, policy: PollPolicy, lam: float) -> float:
        """Polls per second `jobs` ask for at price `lam` (inf: unstretched), each wait as decide clamps it."""
        waits = []
        for job in jobs:
            wait = self._wait(job, now, policy, None if math.isinf(lam) else lam)
            waits.append(base_interval(policy, now - job.added_at, wait))
        return demand(waits)

    def first_wait(self, accounts: Iterable[str | None], policy: PollPolicy) -> float | None:
        """The learned wait before new jobs' first poll (only their accounts are known yet), for
        `first_poll_at(..., learned_wait=)`: the shortest over `accounts`; None if any has none."""
        if not policy.learn:
            return None
        waits = []
        for account in set(accounts) or {None}:
            hist = self.summary.lookup(((account or "")[:200], ANY, ANY), self.min_samples)
            wait = next_poll_after(
                hist, 0.0, target=policy.target_delay, min_interval=policy.min_interval,
                max_interval=policy.max_interval, deadline=policy.deadline, min_samples=self.min_samples,
            )
            if wait is None:
                return None
            waits.append(wait)
        return min(waits)

    def expected_finish(self, job: JobState, now: float) -> float | None:
        """When `job`, still running at `now`, is likely to have ended (epoch seconds: half the jobs of its
        kind that ran this long had ended by then); None below enough samples or far outside them."""
        start = self._start(job, job.snapshot, now)
        hist = self.summary.lookup(job_key(job), self.min_samples)
        age = now - start
        if hist is None or hist.total <= 0 or age > hist.quantile(FAR_OUT):
            return None
        return start + hist.median_after(age)

    @staticmethod
    def _start(job: JobState, snapshot: Snapshot | None, now: float) -> float:
        start = origin(job, snapshot)
        return job.added_at if start > now else start  # SendGrid's clock ahead of ours: count from the add

    def _parse(self, text: str | None) -> RunTimes:
        if text is None:
            return RunTimes(half_life=self.summary.half_life)
        try:
            return RunTimes.from_json(text)
        except ValueError as exc:
            log.warning("policy.runtimes_unreadable", chars=len(text), error=str(exc)[:200])
            return RunTimes(half_life=self.summary.half_life)
