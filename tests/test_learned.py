"""Learned schedules kept in a real store (memory and SQLite), shared by replicas, and the waits they give."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from watcher.learned import RUNTIMES_KEY, LearnedSchedules, job_key, origin, run_time
from watcher.learning import ANY, UNKNOWN, RunTimes, bucket_of
from watcher.models import JobKind, JobState, Outcome, Snapshot
from watcher.policy import PollPolicy, Reschedule, Seen, Target, decide, first_poll_at
from watcher.store.base import StateStore
from watcher.store.memory import MemoryStore
from watcher.store.sqlite import SqliteStore

ADDED = 1_800_000_000.0  # 2027-01-15T08:00:00Z
POLICY = PollPolicy(initial_delay=2, min_interval=5, max_interval=300, deadline=86_400, not_found_grace=120)


def iso(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def finished(seconds: float, *, index: int = 0, account: str = "main", count: int = 500,
             started: bool = True) -> JobState:
    """A job that completed `seconds` after it was added, as the engine hands it over."""
    snapshot = Snapshot(status="completed", job_type="upsert", results={"requested_count": count},
                        started_at=iso(ADDED) if started else None,
                        finished_at=iso(ADDED + seconds) if started else None)
    return JobState(id=f"j{index}", labels={}, account=account, notify=None, added_at=ADDED, next_poll_at=ADDED,
                    polls=3, snapshot=snapshot, outcome=Outcome.COMPLETED, detected_at=ADDED + seconds + 4)


def running(age_snapshot: bool = True, count: int = 500, added: float = ADDED) -> JobState:
    snapshot = Snapshot(status="pending", job_type="upsert", results={"requested_count": count},
                        started_at=iso(added)) if age_snapshot else None
    return JobState(id="r", labels={}, account="main", notify=None, added_at=added, next_poll_at=added,
                    snapshot=snapshot)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    backend: StateStore = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "state.db"))
    await backend.open()
    yield backend
    await backend.close()


async def feed(learned: LearnedSchedules, samples: list[float], start: int = 0) -> None:
    for n, seconds in enumerate(samples):
        await learned.observe(finished(seconds, index=start + n), ADDED + seconds + 4)


def lognormal(count: int, median: float = 60.0, seed: int = 5) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), 1.2) for _ in range(count)]


# --- what a finished job teaches ---------------------------------------------------------


def test_kind_of_a_job() -> None:
    """A job's kind is its account, SendGrid's job_type and the band of requested_count."""
    assert ("main", "upsert", "<1k") == job_key(finished(10.0))
    assert ("main", "upsert", "<100k") == job_key(finished(10.0, count=20_000))
    bare = JobState(id="x", labels={}, notify=None, added_at=ADDED, next_poll_at=ADDED)
    assert ("", UNKNOWN, UNKNOWN) == job_key(bare)


def test_run_time_prefers_sendgrids_own_times() -> None:
    """finished_at - started_at when SendGrid gives both; else the outcome time less started_at or added_at."""
    job = finished(90.0)
    assert 90.0 == run_time(job, ADDED + 94)
    no_finish = replace(job, snapshot=replace(job.snapshot, finished_at=None))  # type: ignore[type-var]
    assert 94.0 == run_time(no_finish, ADDED + 94)
    neither = finished(90.0, started=False)
    assert 94.0 == run_time(neither, ADDED + 94)


def test_only_finished_jobs_teach() -> None:
    """Timed-out and not-found jobs, and times that run backwards, add no sample."""
    job = finished(90.0, started=False)
    assert None is run_time(replace(job, outcome=Outcome.TIMED_OUT), ADDED + 94)
    assert None is run_time(replace(job, outcome=Outcome.NOT_FOUND), ADDED + 94)
    assert None is run_time(job, ADDED - 10)


def test_an_unbelievable_started_at_is_ignored() -> None:
    """A started_at days away from when the job was added does not move its clock."""
    job = running()
    assert ADDED == origin(job)
    far = replace(job, snapshot=Snapshot(status="pending", started_at=iso(ADDED - 5 * 86400)))
    assert ADDED == origin(far)
    early = replace(job, snapshot=Snapshot(status="pending", started_at=iso(ADDED - 600)))
    assert ADDED - 600 == origin(early)


# --- kept in the store ---------------------------------------------------------------------


async def test_writes_are_batched(store: StateStore) -> None:
    """Samples are written every flush_every outcomes, not one write per outcome."""
    learned = LearnedSchedules(store, flush_every=10, flush_after=1e9)
    await feed(learned, [30.0] * 9)
    assert None is await store.get_meta(RUNTIMES_KEY)
    await feed(learned, [30.0], start=9)
    stored = RunTimes.from_json(await store.get_meta(RUNTIMES_KEY) or "")
    assert 10 == stored.histograms[(ANY, ANY, ANY)].count
    assert [] == learned.pending


async def test_a_quiet_replica_still_writes_after_flush_after(store: StateStore) -> None:
    """With few outcomes, the samples are written once flush_after seconds have passed."""
    learned = LearnedSchedules(store, flush_every=1000, flush_after=60.0)
    await learned.observe(finished(10.0), ADDED + 14)
    await learned.observe(finished(20.0, index=1), ADDED + 50)
    assert None is await store.get_meta(RUNTIMES_KEY)
    await learned.observe(finished(30.0, index=2), ADDED + 80)
    assert 3 == RunTimes.from_json(await store.get_meta(RUNTIMES_KEY) or "").histograms[(ANY, ANY, ANY)].count


async def test_another_replica_loads_the_summary(store: StateStore) -> None:
    """A replica that loads the stored summary schedules from what the other one learned."""
    first = LearnedSchedules(store, flush_every=25, flush_after=1e9)
    await feed(first, lognormal(100))
    second = LearnedSchedules(store)
    assert None is second.wait_for(running(), ADDED + 10, POLICY)
    await second.load()
    assert first.wait_for(running(), ADDED + 10, POLICY) == second.wait_for(running(), ADDED + 10, POLICY)
    assert None is not second.wait_for(running(), ADDED + 10, POLICY)


async def test_a_corrupt_stored_summary_is_replaced(store: StateStore) -> None:
    """An unreadable stored value is ignored on load and overwritten by the next flush, without a crash."""
    await store.set_meta(RUNTIMES_KEY, '{"format": 1, "kinds": "garbage"')
    learned = LearnedSchedules(store, flush_every=5, flush_after=1e9)
    await learned.load()
    assert {} == learned.summary.histograms
    await feed(learned, [40.0] * 5)
    assert 5 == RunTimes.from_json(await store.get_meta(RUNTIMES_KEY) or "").histograms[(ANY, ANY, ANY)].count


class Racing:
    """A real store whose next get_meta first lets another replica write: the read it returns is stale."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.before_read: Callable[[], Awaitable[object]] | None = None

    async def get_meta(self, key: str) -> str | None:
        value = await self.store.get_meta(key)
        hook, self.before_read = self.before_read, None
        if hook is not None:
            await hook()  # the other replica writes between our read and our compare-and-set
        return value

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


async def test_two_replicas_writing_at_once_lose_no_sample(store: StateStore) -> None:
    """When another replica writes between a read and the compare-and-set, the write is retried on
    the new value: both replicas' samples end up in the store, each counted once."""
    racing = Racing(store)
    a = LearnedSchedules(racing, flush_every=1000, flush_after=1e9)  # type: ignore[arg-type]
    b = LearnedSchedules(store, flush_every=1000, flush_after=1e9)
    await feed(a, [10.0] * 30)
    await feed(b, [1000.0] * 20, start=100)
    racing.before_read = lambda: b.flush(ADDED)
    assert await a.flush(ADDED)
    stored = RunTimes.from_json(await store.get_meta(RUNTIMES_KEY) or "")
    everyone = stored.histograms[(ANY, ANY, ANY)]
    assert 50 == everyone.count
    assert 50 == stored.histograms[("main", "upsert", "<1k")].count
    assert everyone.weights[bucket_of(10.0)] > 0 and everyone.weights[bucket_of(1000.0)] > 0
    assert ([], []) == (a.pending, b.pending)


async def test_contention_keeps_the_samples_for_later(store: StateStore) -> None:
    """A compare-and-set that keeps losing gives up after `attempts` and keeps the samples pending."""
    racing = Racing(store)
    a = LearnedSchedules(racing, flush_every=1000, flush_after=1e9, attempts=1)  # type: ignore[arg-type]
    await feed(a, [10.0] * 3)
    racing.before_read = lambda: store.set_meta(RUNTIMES_KEY, RunTimes().add(("x", "y", "z"), 5.0).to_json())
    assert not await a.flush(ADDED)
    assert 3 == len(a.pending)
    assert await a.flush(ADDED)
    assert 4 == RunTimes.from_json(await store.get_meta(RUNTIMES_KEY) or "").histograms[(ANY, ANY, ANY)].count


# --- the waits ----------------------------------------------------------------------------------


def waited(learned: LearnedSchedules, job: JobState, now: float, policy: PollPolicy = POLICY,
           draw: float = 0.5) -> float:
    """The wait `decide` chooses after a poll at `now` that saw `job` running, given the learned wait."""
    assert job.snapshot is not None
    decision = decide(policy, job, Seen(job.snapshot), now, draw, learned_wait=learned.wait_for(job, now, policy))
    assert isinstance(decision, Reschedule)
    return decision.next_poll_at - now


async def test_falls_back_until_enough_samples() -> None:
    """Before 50 finished jobs of a kind (or its family), there is no learned wait."""
    store = MemoryStore()
    await store.open()
    learned = LearnedSchedules(store, flush_every=10, flush_after=1e9)
    await feed(learned, lognormal(40))
    assert None is learned.wait_for(running(), ADDED + 10, POLICY)
    await feed(learned, lognormal(10, seed=6), start=40)
    assert None is not learned.wait_for(running(), ADDED + 10, POLICY)
    assert None is learned.wait_for(running(), ADDED + 10, replace(POLICY, learn=False))


async def test_waits_are_clamped_to_the_policy() -> None:
    """A learned wait stays within min_interval and max_interval and never passes the deadline."""
    store = MemoryStore()
    await store.open()
    short = LearnedSchedules(store, flush_every=60, flush_after=1e9)
    long = LearnedSchedules(MemoryStore(), flush_every=60, flush_after=1e9)
    await feed(short, [3.0 + n % 3 for n in range(60)])  # jobs of 3-5 s: the optimum would poll at once
    await long.store.open()
    await feed(long, [5000.0 * (1 + n % 7) for n in range(60)])  # hours: the optimum would wait long
    assert 5.0 == waited(short, running(), ADDED + 2, draw=0.0)  # 0.9 x the first wait the grid allows
    tight = replace(POLICY, max_interval=20.0)
    assert 20.0 == waited(long, running(), ADDED + 2, tight, draw=1.0)  # 1.1 x the last wait the grid allows
    near_end = replace(POLICY, deadline=9000.0)
    assert 10.0 == waited(long, running(), ADDED + 8990, near_end)


async def test_jitter_spreads_the_learned_wait() -> None:
    """decide jitters the learned wait by the policy's jitter, as it does the proportional one."""
    store = MemoryStore()
    await store.open()
    learned = LearnedSchedules(store, flush_every=100, flush_after=1e9)
    await feed(learned, lognormal(300))
    plain = learned.wait_for(running(), ADDED + 60, POLICY)
    low, high = (waited(learned, running(), ADDED + 60, draw=d) for d in (0.0, 1.0))
    assert plain is not None
    assert (plain * 0.9, plain * 1.1) == (pytest.approx(low), pytest.approx(high))


async def test_the_wait_follows_the_jobs_kind() -> None:
    """Big imports that run long wait longer than small quick ones of the same account."""
    store = MemoryStore()
    await store.open()
    learned = LearnedSchedules(store, flush_every=200, flush_after=1e9)
    for n, seconds in enumerate(lognormal(200, median=20.0)):
        await learned.observe(finished(seconds, index=n, count=500), ADDED + seconds)
    for n, seconds in enumerate(lognormal(200, median=2000.0, seed=9)):
        await learned.observe(finished(seconds, index=1000 + n, count=500_000), ADDED + seconds)
    small = learned.wait_for(running(count=500), ADDED + 30, POLICY)
    big = learned.wait_for(running(count=500_000), ADDED + 30, POLICY)
    assert small is not None and big is not None
    assert big > 3 * small


async def test_a_tighter_target_polls_sooner() -> None:
    """polling.target_delay reaches the schedule: 5 s asks for shorter waits than a tenth of a minute-long run."""
    store = MemoryStore()
    await store.open()
    learned = LearnedSchedules(store, flush_every=100, flush_after=1e9)
    await feed(learned, lognormal(300))
    share = learned.wait_for(running(), ADDED + 60, POLICY)
    tight = learned.wait_for(running(), ADDED + 60, replace(POLICY, target_delay=Target(2.0, share=False)))
    assert share is not None and tight is not None and tight < share



async def test_one_plan_per_summary_whatever_each_jobs_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs added a fraction of a second after SendGrid's whole-second started_at (as every real one is)
    get their waits from one plan per summary: solving it per job blocked the daemon's event loop and
    made every poll late (1.9x the limit against the fake SendGrid, 1.1x in the simulator)."""
    import watcher.optimal

    solved: list[float] = []
    plan_for = watcher.optimal.plan_for

    def counted(problem: watcher.optimal.Problem, target_s: float, iterations: int = 12) -> watcher.optimal.Plan:
        solved.append(target_s)
        return plan_for(problem, target_s, iterations)

    monkeypatch.setattr(watcher.optimal, "plan_for", counted)
    store = MemoryStore()
    await store.open()
    learned = LearnedSchedules(store, flush_every=100, flush_after=1e9)
    await feed(learned, lognormal(100, median=47.0, seed=17))  # a summary no other test has solved
    waits = []
    for k in range(20):
        job = replace(running(), id=f"r{k}", added_at=ADDED + 0.05 * k)  # started_at: ADDED
        waits.append(learned.wait_for(job, ADDED + 600.0, POLICY))
    assert 1 == len(solved)
    assert all(w is not None and 5.0 <= w <= 300.0 for w in waits)
    assert max(w for w in waits if w is not None) - min(w for w in waits if w is not None) < 5.0

async def test_first_wait_uses_the_account_and_keeps_the_404_grace() -> None:
    """A new job's first poll follows its account's run times, from initial_delay to not_found_grace."""
    store = MemoryStore()
    await store.open()
    learned = LearnedSchedules(store, flush_every=100, flush_after=1e9)
    assert None is learned.first_wait(["main"], POLICY)
    await feed(learned, lognormal(100, median=60.0))
    first = learned.first_wait(["main"], POLICY)
    assert first is not None
    assert ADDED + POLICY.initial_delay < first_poll_at(POLICY, ADDED, first) <= ADDED + POLICY.not_found_grace
    assert first == learned.first_wait(["main", "other"], POLICY)  # a new account borrows from every account
    slow = LearnedSchedules(MemoryStore(), flush_every=50, flush_after=1e9)
    await slow.store.open()
    await feed(slow, lognormal(100, median=5_000.0))
    assert ADDED + POLICY.not_found_grace == first_poll_at(POLICY, ADDED, slow.first_wait(["main"], POLICY))


# --- what status shows ------------------------------------------------------------------------------


async def test_expected_finish_follows_the_age() -> None:
    """A running job's expected finish is the median run time of its kind given how long it has run."""
    store = MemoryStore()
    await store.open()
    learned = LearnedSchedules(store, flush_every=100, flush_after=1e9)
    assert None is learned.expected_finish(running(), ADDED + 10)
    await feed(learned, lognormal(300))  # median 60 s
    young = learned.expected_finish(running(), ADDED + 1)
    older = learned.expected_finish(running(), ADDED + 120)
    assert young is not None and older is not None
    assert ADDED + 40 < young < ADDED + 90  # about the median
    assert older > ADDED + 120 and older - ADDED > 1.5 * (young - ADDED)  # a job that ran long runs longer
    assert None is learned.expected_finish(running(), ADDED + 86_000)  # far outside what was seen


def test_a_ready_export_teaches_too() -> None:
    """An export that ended ready (or failure) has a run time; an import status on an export does not end it."""
    export = replace(finished(30.0), kind=JobKind.EXPORT, outcome=Outcome.READY)
    assert 30.0 == run_time(export, ADDED + 34)
    answered = replace(export, outcome=None, snapshot=replace(export.snapshot, status="completed"))
    assert None is run_time(answered, ADDED + 34)
