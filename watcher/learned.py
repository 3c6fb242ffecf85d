"""Learned poll schedules for the engine: the run-time summary kept in the store, and the waits it implies.

The summary lives in the store's meta under `RUNTIMES_KEY`, shared by every replica. A
replica collects finished jobs' run times and writes them at most every `flush_every`
outcomes or `flush_after` seconds: it reads the stored summary, adds its own samples to it
and writes it back with `transition_meta` (compare-and-set), and on a conflict reads and
adds again. So two replicas writing at once lose no sample; the one that writes second adds
its samples as the newest (the only difference to a single writer is that order of decay).
A stored value that cannot be read is logged and replaced, never trusted.

Schedules are computed from the summary as last read or written (not from each new
sample), so a plan is recomputed at most once per flush. `wait_for` is a pure reading:
the engine asks it after a poll that saw the job running and hands the answer to
`watcher.policy.decide`, which jitters and clamps it, and falls back to the proportional
policy when it is None. `expected_finish` is what `status` and the page show.

A job's kind is (its account, the `job_type` SendGrid reports, the size band of
`requested_count`); its run time runs from SendGrid's `started_at` (or when it was added)
to `finished_at` (or when the watcher saw it end).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import structlog

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
from watcher.policy import PollPolicy
from watcher.store.base import StateStore

log = structlog.get_logger("watcher.learned")

RUNTIMES_KEY = "policy.runtimes"
# Timed out or not found says nothing about run times.
_LEARNED = frozenset(TERMINAL_STATUSES.values()) | frozenset(EXPORT_TERMINAL_STATUSES.values())


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


class LearnedSchedules:
    """The run-time summary of one replica, synced with the store, and the waits it implies."""

    def __init__(
        self, store: StateStore, *, min_samples: int = MIN_SAMPLES, half_life: float = HALF_LIFE,
        flush_every: int = 50, flush_after: float = 300.0, attempts: int = 5,
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

    async def load(self) -> None:
        """Read the stored summary (at start, and whenever other replicas' samples should show)."""
        self.summary = self._parse(await self.store.get_meta(RUNTIMES_KEY))

    async def observe(self, job: JobState, outcome_time: float) -> bool:
        """Add a finished job's run time (`job` as recorded: its outcome and last snapshot); written with
        the others when a flush is due. True if it counted."""
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
        `decide(..., learned_wait=)`; None with `learn` off, too few samples or a job far outside them."""
        if not policy.learn:
            return None
        snap = snapshot or job.snapshot
        start = self._start(job, snap, now)
        hist = self.summary.lookup(job_key(job, snap), self.min_samples)
        return next_poll_after(
            hist, now - start, target=policy.target_delay, min_interval=policy.min_interval,
            max_interval=policy.max_interval, deadline=max(job.added_at + policy.deadline - start, policy.min_interval),
            min_samples=self.min_samples,
        )

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
