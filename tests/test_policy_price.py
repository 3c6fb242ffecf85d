"""The price of delay a scarce rate budget sets on the running daemon's schedules (watcher.learned.update_price)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator

import pytest

from tests.test_learned import ADDED, feed
from watcher.clock import ManualClock
from watcher.learned import HEADROOM, LearnedSchedules
from watcher.models import JobRef, JobState, Snapshot
from watcher.policy import PollPolicy
from watcher.store.memory import MemoryStore
from watcher.stretch import LAMS

POLICY = PollPolicy(initial_delay=2, min_interval=5, max_interval=300, deadline=86_400, not_found_grace=120, jitter=0)
NOW = ADDED + 4000


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    backend = MemoryStore()
    await backend.open()
    yield backend
    await backend.close()


def job(index: int, age: float, *, account: str | None = "main", learned_kind: bool = False) -> JobState:
    """A job running for `age` seconds at NOW (of the learned kind: an upsert of 500 contacts)."""
    snapshot = Snapshot(status="pending", job_type="upsert", results={"requested_count": 500}) if learned_kind else None
    return JobState(id=f"r{index}", labels={}, account=account, notify=None, added_at=NOW - age, next_poll_at=NOW,
                    snapshot=snapshot)


def schedules(store: MemoryStore, max_rate: float | None, **kw: object) -> LearnedSchedules:
    return LearnedSchedules(store, policy=POLICY, max_rate=max_rate, clock=ManualClock(NOW), rng=random.Random(5),
                            **kw)  # type: ignore[arg-type]


def demand(learned: LearnedSchedules, jobs: list[JobState]) -> float:
    """Polls per second the jobs ask for as the engine schedules them now (wait_for, then decide's clamp)."""
    total = 0.0
    for j in jobs:
        wait = learned.wait_for(j, NOW, POLICY)
        base = POLICY.growth * (NOW - j.added_at) if wait is None else wait
        total += 1.0 / min(max(base, POLICY.min_interval), POLICY.max_interval)
    return total


AGES = [10.0 + 15 * k for k in range(200)]  # 10 s to 50 min: about 2 polls/s unstretched


async def test_an_ample_budget_sets_no_price(store: MemoryStore) -> None:
    """With more rate than the jobs want, nothing is priced and every wait stays the proportional one."""
    learned = schedules(store, max_rate=10.0)
    jobs = [job(k, age) for k, age in enumerate(AGES)]
    assert demand(learned, jobs) < 10.0 * HEADROOM
    await learned.update_price()
    assert {} == learned.prices
    assert all(learned.wait_for(j, NOW, POLICY) is None for j in jobs)


async def test_without_a_max_rate_nothing_is_priced(store: MemoryStore) -> None:
    learned = schedules(store, max_rate=None)
    jobs = [job(k, age) for k, age in enumerate(AGES)]
    demand(learned, jobs)
    await learned.update_price()
    assert {} == learned.prices


async def test_a_scarce_budget_stretches_to_fit_the_rate(store: MemoryStore) -> None:
    """At 1 poll/s for jobs that want 2, the price is the largest whose waits fit 90 % of the rate;
    the older a job, the more its wait grows (square-root rule), and no wait gets shorter."""
    learned = schedules(store, max_rate=1.0)
    jobs = [job(k, age) for k, age in enumerate(AGES)]
    before = {j.id: min(max(POLICY.growth * (NOW - j.added_at), POLICY.min_interval), POLICY.max_interval)
              for j in jobs}
    assert demand(learned, jobs) > 1.8
    await learned.update_price()
    lam = learned.prices["main"]
    after = demand(learned, jobs)
    assert after <= HEADROOM * 1.0
    bigger = next(p for p in LAMS if p > lam)
    learned.prices["main"] = bigger
    assert demand(learned, jobs) > HEADROOM  # the next price up would not fit: the least stretch that does
    learned.prices["main"] = lam
    waits = {j.id: learned.wait_for(j, NOW, POLICY) for j in jobs}
    assert all(w is not None and w >= before[i] for i, w in waits.items())
    young, old = waits["r0"], waits["r100"]
    assert young is not None and old is not None
    assert young / before["r0"] > old / before["r100"]  # the young (likelier to end now) keep more of their polls


async def test_each_account_is_priced_against_its_own_budget(store: MemoryStore) -> None:
    """A busy account is stretched; a quiet one beside it is not."""
    learned = schedules(store, max_rate=1.0)
    busy = [job(k, age, account="busy") for k, age in enumerate(AGES)]
    quiet = [job(1000 + k, age, account="quiet") for k, age in enumerate(AGES[:5])]
    demand(learned, busy + quiet)
    await learned.update_price()
    assert {"busy"} == set(learned.prices)


async def test_learned_kinds_pay_the_same_price(store: MemoryStore) -> None:
    """Jobs of a learned kind are stretched from their optimal schedule, and the whole still fits the rate."""
    learned = schedules(store, max_rate=0.55, min_samples=50)
    rng = random.Random(3)
    await feed(learned, [rng.lognormvariate(math.log(600), 1.0) for _ in range(200)])
    await learned.flush(NOW)
    jobs = [job(k, age, learned_kind=True) for k, age in enumerate(AGES[:120])]
    targets = {j.id: learned.wait_for(j, NOW, POLICY) for j in jobs}
    assert all(w is not None for w in targets.values())
    assert demand(learned, jobs) > 0.55  # at the target's price: more than the budget has
    await learned.update_price()
    assert demand(learned, jobs) <= 0.55 * HEADROOM
    stretched = {j.id: learned.wait_for(j, NOW, POLICY) for j in jobs}
    longer = sum(1 for i, w in stretched.items() if w is not None and w > (targets[i] or 0) + 1e-9)
    assert longer > len(jobs) // 2


async def test_jobs_leave_the_estimate(store: MemoryStore) -> None:
    """A finished job is forgotten at once; one not seen again long after its wait, at the next update."""
    clock = ManualClock(NOW)
    learned = LearnedSchedules(store, policy=POLICY, max_rate=1.0, clock=clock)
    jobs = [job(k, age) for k, age in enumerate(AGES)]
    demand(learned, jobs)
    await learned.observe(jobs[0], NOW)  # still running (no outcome): not a sample, but no longer watched here
    assert "r0" not in learned.running and len(AGES) - 1 == len(learned.running)
    clock.advance(3 * POLICY.max_interval + 2 * POLICY.max_interval + 1)  # past every wait, three times over
    await learned.update_price()
    assert {} == learned.running and {} == learned.prices


async def test_replicas_sharing_a_budget_price_their_share(store: MemoryStore) -> None:
    """With a shared (Redis) budget, a replica that sees half the running jobs fits them into half the rate."""
    jobs = [job(k, age) for k, age in enumerate(AGES)]
    for k in range(2 * len(jobs)):
        await store.add_job(JobRef(f"w{k}"), now=NOW, first_poll_at=NOW)
    alone = schedules(store, max_rate=2.0)
    shared = schedules(store, max_rate=2.0, shared_rate=True)
    demand(alone, jobs)
    demand(shared, jobs)
    await alone.update_price()
    await shared.update_price()
    assert shared.prices["main"] < alone.prices["main"]
    assert demand(shared, jobs) <= HEADROOM * 2.0 * len(jobs) / (2 * len(jobs))


async def test_a_hundred_thousand_running_jobs_are_priced_from_a_sample(store: MemoryStore) -> None:
    """The update prices a sample, in well under a second, and the whole still fits closely."""
    learned = schedules(store, max_rate=500.0)
    rng = random.Random(1)
    jobs = [job(k, rng.uniform(10, 3_000)) for k in range(100_000)]
    for j in jobs:
        learned.wait_for(j, NOW, POLICY)
    assert demand(learned, rng.sample(jobs, 2000)) * len(jobs) / 2000 > 600  # the floor: 100,000 / 300 s = 333
    began = time.perf_counter()
    await learned.update_price()
    assert time.perf_counter() - began < 1.0
    assert "main" in learned.prices
    sample = rng.sample(jobs, 2000)
    assert demand(learned, sample) * len(jobs) / len(sample) <= 500.0 * HEADROOM * 1.05
