"""Figure 7, poll policies against the limit: polls per job over the optimum's at the same mean delay.

The limit is the optimal schedule for the very distribution the jobs are drawn from
(log-normal, median 60 s, sigma 1.5: `benchmarks.policy_sim`), computed by
`watcher.learning` (dynamic programming over poll ages, minimising E[polls] + lam * E[delay],
lam swept; points between two lams are reached by mixing the two schedules, so the limit
is the lower convex hull). Each policy is reported as "polls per job / the limit's polls
at the policy's own mean delay".

The learning policy (`watcher.learned.LearnedSchedules` on a real MemoryStore, wired as
the engine does: `wait_for` goes to `decide(..., learned_wait=)` after a poll that saw the job
running, `first_wait` to `first_poll_at`) starts empty and learns online from each
finished job when its outcome is detected (jobs overlap: one is added every `ARRIVAL_S`); measured after
`WARMUP` jobs; timed-out jobs (never detected) are left out of every policy's figures.
Three scenarios:

* **steady**: the distribution above;
* **shift**: after 500 jobs, run times become 5x longer; measured from the 200th longer job
  on, against the limit of the new distribution (and per 100 jobs from the shift);
* **by size**: `requested_count` is one of four sizes and the median run time grows with it;
  the learning policy keys on the size band and is compared with the optimum that ignores
  the size (the unconditional limit) and the one that knows it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from benchmarks._harness import Figure, Mode, percentile
from benchmarks.policy_sim import (
    FIXED_EVERY,
    MEDIAN_S,
    SIGMA,
    airflow_policy,
    durations,
    fixed_policy,
    simulate,
    watcher_policy,
)
from watcher.learned import LearnedSchedules
from watcher.models import JobState, Outcome, Snapshot
from watcher.optimal import Problem, solve
from watcher.policy import Finish, PollPolicy, Seen, decide, first_poll_at
from watcher.store.memory import MemoryStore

WARMUP = 300
SHIFT = 5.0
SETTLE = 200  # jobs after the shift before it is measured
SIZES = (500, 5_000, 50_000, 500_000)
SIZE_MEDIANS = (12.0, 40.0, 140.0, 500.0)
SIZE_SIGMA = 0.6
TARGET_RATIO = 1.2
ARRIVAL_S = 5.0  # one job added every 5 s: a dozen running at once, a flush every 50 outcomes


class LogNormal:
    """A log-normal run time as `watcher.learning.Distribution`."""

    def __init__(self, median: float, sigma: float) -> None:
        self.mu, self.sigma = math.log(median), sigma

    def _phi(self, z: float) -> float:
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def cdf(self, x: float) -> float:
        return 0.0 if x <= 0 else self._phi((math.log(x) - self.mu) / self.sigma)

    def partial_mean(self, x: float) -> float:
        if x <= 0:
            return 0.0
        mean = math.exp(self.mu + self.sigma**2 / 2)
        return mean * self._phi((math.log(x) - self.mu - self.sigma**2) / self.sigma)


class Mixture:
    """Equal parts of several distributions."""

    def __init__(self, parts: Sequence[LogNormal]) -> None:
        self.parts = parts

    def cdf(self, x: float) -> float:
        return sum(p.cdf(x) for p in self.parts) / len(self.parts)

    def partial_mean(self, x: float) -> float:
        return sum(p.partial_mean(x) for p in self.parts) / len(self.parts)


LAMS = tuple(10 ** (k / 6) for k in range(-18, 10))


def frontier(problems: Sequence[Problem]) -> list[tuple[float, float]]:
    """(mean delay, polls) of the optimum over lam; several problems: equal parts, one lam for all."""
    points = []
    for lam in LAMS:
        plans = [solve(p, lam) for p in problems]
        points.append((sum(p.delay for p in plans) / len(plans), sum(p.polls for p in plans) / len(plans)))
    return sorted(points)


def limit_at(curve: Sequence[tuple[float, float]], delay: float) -> float:
    """The limit's polls at `delay`: the lower convex hull of the frontier, interpolated."""
    hull: list[tuple[float, float]] = []
    for point in curve:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) <= 0:
            hull.pop()
        hull.append(point)
    if delay <= hull[0][0]:
        return hull[0][1]
    for (d0, p0), (d1, p1) in itertools.pairwise(hull):
        if d0 <= delay <= d1:
            return p0 + (p1 - p0) * (delay - d0) / (d1 - d0)
    return hull[-1][1]


def _cross(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def limit_problem(dist: Any, policy: PollPolicy) -> Problem:
    return Problem.build(dist, min_interval=policy.min_interval, max_interval=policy.max_interval,
                         horizon=policy.deadline, per_bucket=8)


@dataclass
class Job:
    duration: float
    requested: int = 1000


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _snapshots(job: Job, added: float) -> tuple[Seen, Seen]:
    """What SendGrid answers while the job runs, and once it has ended (started_at, finished_at)."""
    results = {"requested_count": job.requested}
    running = Snapshot(status="pending", job_type="upsert", results=results, started_at=_iso(added))
    done = replace(running, status="completed", finished_at=_iso(added + job.duration))
    return Seen(running), Seen(done)


async def run_learning(
    learned: LearnedSchedules, jobs: Sequence[Job], policy: PollPolicy, seed: int = 7
) -> tuple[list[int], list[float]]:
    """Polls and delays of each job, all running at once (one added every ARRIVAL_S) under decide with
    the learned wait; the learner hears of each outcome when it is detected, as in the engine."""
    rng = random.Random(seed)
    polls, delays = [0] * len(jobs), [0.0] * len(jobs)
    states: dict[int, JobState] = {}
    queue = [(index * ARRIVAL_S, index) for index in range(len(jobs))]
    heapq.heapify(queue)
    while queue:
        at, index = heapq.heappop(queue)
        spec, job = jobs[index], states.get(index)
        if job is None:  # added now
            job = states[index] = JobState(id=f"j{index}", labels={}, notify=None, added_at=at, next_poll_at=at)
            heapq.heappush(queue, (first_poll_at(policy, at, learned.first_wait([None], policy)), index))
            continue
        running, done = _snapshots(spec, job.added_at)
        seen = done if at - job.added_at >= spec.duration else running
        learned_wait = learned.wait_for(job, at, policy, seen.snapshot) if seen is running else None
        decision = decide(policy, job, seen, at, rng.random(), learned_wait=learned_wait)
        if isinstance(decision, Finish):
            # A timed-out job was never detected: no delay to count (row() leaves it out).
            delay = at - job.added_at - spec.duration if decision.outcome is not Outcome.TIMED_OUT else math.nan
            polls[index], delays[index] = decision.polls, delay
            del states[index]
            await learned.observe(replace(job, polls=decision.polls, snapshot=decision.snapshot,
                                          outcome=decision.outcome, detected_at=at), at)
            continue
        states[index] = replace(job, polls=decision.polls, snapshot=decision.snapshot)
        heapq.heappush(queue, (decision.next_poll_at, index))
    return polls, delays


def row(polls: Sequence[int], delays: Sequence[float], curve: Sequence[tuple[float, float]]) -> dict[str, float]:
    """A policy's polls and delays, and its polls over the limit's at its mean delay (timed-out jobs left out)."""
    kept = [(p, d) for p, d in zip(polls, delays, strict=True) if not math.isnan(d)]
    polls, delays = [p for p, _ in kept], [d for _, d in kept]
    mean_delay = sum(delays) / len(delays)
    mean_polls = sum(polls) / len(polls)
    limit = limit_at(curve, mean_delay)
    return {"polls_mean": round(mean_polls, 3), "delay_mean_s": round(mean_delay, 2),
            "delay_p95_s": round(percentile(list(delays), 95), 2), "limit_polls": round(limit, 3),
            "vs_limit": round(mean_polls / limit, 3), "jobs": len(polls)}


async def _learn(jobs: Sequence[Job], policy: PollPolicy) -> tuple[list[int], list[float]]:
    store = MemoryStore()
    await store.open()
    return await run_learning(LearnedSchedules(store), jobs, policy)


async def scenarios(mode: Mode, policy: PollPolicy) -> dict[str, Any]:
    rng = random.Random(20261201)
    measured = mode.pick(500, 5_000)
    base = [Job(d) for d in durations(WARMUP + measured)]
    steady = await _learn(base, policy)
    steady_curve = frontier([limit_problem(LogNormal(MEDIAN_S, SIGMA), policy)])

    longer = base[:WARMUP + 200] + [Job(d * SHIFT) for d in durations(SETTLE + measured, seed=99)]
    polls, delays = await _learn(longer, policy)
    shifted = polls[WARMUP + 200:], delays[WARMUP + 200:]
    shift_curve = frontier([limit_problem(LogNormal(MEDIAN_S * SHIFT, SIGMA), policy)])

    sized = []
    for _ in range(WARMUP + measured):
        k = rng.randrange(len(SIZES))
        sized.append(Job(rng.lognormvariate(math.log(SIZE_MEDIANS[k]), SIZE_SIGMA), SIZES[k]))
    by_size = await _learn(sized, policy)
    parts = [LogNormal(m, SIZE_SIGMA) for m in SIZE_MEDIANS]
    return {
        "steady": (steady, steady_curve, base),
        "shift": (shifted, shift_curve, longer),
        "by_size": (by_size, frontier([limit_problem(Mixture(parts), policy)]),
                    frontier([limit_problem(p, policy) for p in parts]), sized),
    }


def _fixed(name: str, make: Callable[[int, float], tuple[int, float]], jobs: Sequence[float],
           curve: Sequence[tuple[float, float]]) -> tuple[str, dict[str, float]]:
    outcome = simulate(name, make, jobs)
    return name, row(outcome.polls, outcome.delays, curve)


def run(mode: Mode) -> Figure:
    policy = PollPolicy()
    results = asyncio.run(scenarios(mode, policy))
    (steady_polls, steady_delays), curve, base = results["steady"]
    jobs = [j.duration for j in base[WARMUP:]]
    economy = replace(policy, growth=1.0, initial_delay=30.0)
    rows = dict([
        _fixed("watcher (defaults)", watcher_policy(policy), jobs, curve),
        _fixed("fixed 15 s", fixed_policy(FIXED_EVERY, policy.initial_delay), jobs, curve),
        _fixed("Airflow exponential", airflow_policy(policy.initial_delay, policy.max_interval), jobs, curve),
        _fixed("economy (growth 1, initial_delay 30 s)", watcher_policy(economy), jobs, curve),
    ])
    rows["learning (after 300 jobs)"] = row(steady_polls[WARMUP:], steady_delays[WARMUP:], curve)

    (shift_polls, shift_delays), shift_curve, _ = results["shift"]
    shift = row(shift_polls[SETTLE:], shift_delays[SETTLE:], shift_curve)
    windows = [row(shift_polls[k:k + 100], shift_delays[k:k + 100], shift_curve)["vs_limit"]
               for k in range(0, min(len(shift_polls), 600), 100)]

    (size_polls, size_delays), flat_curve, known_curve, sized = results["by_size"]
    by_size = row(size_polls[WARMUP:], size_delays[WARMUP:], flat_curve)
    by_size["known_size_limit_polls"] = round(limit_at(known_curve, by_size["delay_mean_s"]), 3)
    size_default = row(*_polls_delays(watcher_policy(policy), [j.duration for j in sized[WARMUP:]]), flat_curve)
    return _figure(mode, rows, shift, windows, by_size, size_default)


def _figure(mode: Mode, rows: dict[str, dict[str, float]], shift: dict[str, float], windows: list[float],
            by_size: dict[str, float], size_default: dict[str, float]) -> Figure:
    learning, default = rows["learning (after 300 jobs)"], rows["watcher (defaults)"]
    met = (learning["vs_limit"] <= TARGET_RATIO and learning["delay_p95_s"] <= default["delay_p95_s"]
           and shift["vs_limit"] <= TARGET_RATIO and by_size["vs_limit"] < 1.0)
    return Figure(
        key="policy_limit",
        title="Poll policies against the limit (simulated)",
        value=learning["vs_limit"],
        unit="× the limit's polls/job",
        baseline=default["vs_limit"],
        baseline_label="watcher defaults (proportional)",
        ratio=round(learning["vs_limit"] / default["vs_limit"], 2),
        target=f"learning ≤ {TARGET_RATIO}× the limit, p95 delay ≤ the default's; ≤ {TARGET_RATIO}× after"
               f" {SETTLE} jobs of 5× longer runs; < 1× the size-blind limit when run time follows size",
        met=None if mode.quick else met,
        summary=(
            f"limit {learning['limit_polls']:.1f} polls at {learning['delay_mean_s']:.1f} s; learning"
            f" {learning['polls_mean']:.1f} ({learning['vs_limit']:.2f}×, p95 {learning['delay_p95_s']:.0f} s);"
            f" defaults {default['polls_mean']:.1f} at {default['delay_mean_s']:.1f} s ({default['vs_limit']:.2f}×,"
            f" p95 {default['delay_p95_s']:.0f} s); after a 5× shift {shift['vs_limit']:.2f}×;"
            f" by size {by_size['vs_limit']:.2f}× the size-blind limit"
        ),
        details={
            "distribution": {"median_s": MEDIAN_S, "sigma": SIGMA, "warmup_jobs": WARMUP},
            "policies_vs_limit": rows,
            "shift": {**shift, "factor": SHIFT, "settle_jobs": SETTLE, "vs_limit_per_100_jobs": windows},
            "by_size": {**by_size, "sizes": SIZES, "medians_s": SIZE_MEDIANS, "sigma": SIZE_SIGMA,
                        "default": size_default},
            "targets met in this run": met,
            **{f"{name} vs the limit": _line(r) for name, r in rows.items()},
            "learning after 5× longer runs (from the 200th job)": _line(shift),
            "learning per 100 jobs after the shift (× the limit)": " ".join(f"{w:.2f}" for w in windows),
            "learning, run time by size (× the size-blind limit)": _line(by_size),
            "the limit that knows the size, at the same mean delay (polls/job)": by_size["known_size_limit_polls"],
            "watcher defaults, run time by size": _line(size_default),
        },
    )


def _polls_delays(make: Callable[[int, float], tuple[int, float]], jobs: Sequence[float]) -> tuple[list[int],
                                                                                                     list[float]]:
    outcome = simulate("", make, jobs)
    return outcome.polls, outcome.delays


def _line(r: dict[str, Any]) -> str:
    return (f"{r['polls_mean']:.2f} polls/job at {r['delay_mean_s']:.1f} s mean delay (p95 {r['delay_p95_s']:.1f} s);"
            f" the limit {r['limit_polls']:.2f}: {r['vs_limit']:.2f}× ({r['jobs']} jobs)")
