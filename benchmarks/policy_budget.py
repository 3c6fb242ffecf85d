"""Figure 8, a scarce rate budget: stretching schedules (`watcher.stretch`) against letting due polls queue up.

Jobs are added one every `ARRIVAL_S` seconds with run times from the benchmark's
distribution (log-normal, median 60 s, sigma 1.5: `benchmarks.policy_sim`) and polled under
`watcher.policy.decide` with the default settings, which would want about twice the
`RATE` polls per second the budget allows. The budget serves at most `RATE` polls per
second, the earliest due first (a late poll goes out when the budget lets it: what the
watcher does today). Three ways to live with it, on the same jobs:

* **queue**: every wait as decided; due polls queue at the budget;
* **uniform**: every wait scaled by one factor so the demand fits the rate;
* **square-root rule**, knowing nothing (`watcher.stretch.multiplier`: ``w = c / sqrt(1 / age)``,
  one ``c`` per `WINDOW_S` seconds over the running jobs);
* **learned, one price**: the optimal schedule of a summary learned from `LEARNED` earlier
  jobs of the same distribution (`watcher.optimal`), at the largest price of delay ``lam``
  (`watcher.stretch.fitting_lam`, per window) whose schedules fit the rate;
* and, for reference, the learned target schedule without a budget (what it spends freely).

Every policy spends the whole budget, so they are compared at the same request count;
reported: detection delay (mean, p95) of the jobs added after `WARMUP_S`, polls per job and
requests per second from then until the last job is added (the steady state).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks._harness import Figure, Mode, percentile
from benchmarks.policy_sim import MEDIAN_S, SIGMA, durations
from watcher.learning import Histogram, RunTimes
from watcher.models import JobState, Snapshot
from watcher.optimal import priced_plan, target_plan
from watcher.policy import Finish, PollPolicy, Seen, decide, first_poll_at
from watcher.stretch import fitting_lam, multiplier, scale_free_hazard, stretched

ARRIVAL_S = 1.0
RATE = 5.0  # polls per second the budget serves: about half what the default policy wants here
WINDOW_S = 5.0  # how often the common multiplier is recomputed
HEADROOM = 0.95  # stretch to this share of the rate, so bursts do not queue
WARMUP_S = 600.0
LEARNED = 1000

_PENDING = Seen(Snapshot(status="pending"))
_DONE = Seen(Snapshot(status="completed"))

Wait = Callable[[float, float], float]  # (lam, age) -> the learned wait


@dataclass
class _Job:
    added: float
    duration: float
    state: JobState
    wait: float = 0.0  # the wait decide chose last (before any stretch)


@dataclass(frozen=True)
class Result:
    delays: list[float]
    polls: list[int]
    requests: int
    seconds: float

    def row(self) -> dict[str, float]:
        return {"delay_mean_s": round(sum(self.delays) / len(self.delays), 2),
                "delay_p95_s": round(percentile(self.delays, 95), 2),
                "polls_per_job": round(sum(self.polls) / len(self.polls), 2),
                "requests_per_s": round(self.requests / self.seconds, 3), "jobs": len(self.delays)}


def simulate(runs: list[float], policy: PollPolicy, mode: str, learned: Histogram | None = None,
             rate: float = RATE, seed: int = 3) -> Result:
    """Every job of `runs` (added one every ARRIVAL_S) polled through a budget of `rate` polls per second."""
    rng = random.Random(seed)
    jobs: dict[int, _Job] = {}
    wait_at, most = _learned_waits(learned, policy) if learned is not None else (None, 0.0)
    events = [(i * ARRIVAL_S, i) for i in range(len(runs))]  # (due, job): an unknown job is added then
    heapq.heapify(events)
    free_at, c, next_window, requests = 0.0, 0.0, 0.0, 0
    end = len(runs) * ARRIVAL_S
    delays: list[float] = []
    polls: list[int] = []
    while events:
        due, index = heapq.heappop(events)
        job = jobs.get(index)
        if job is None:
            state = JobState(id=f"j{index}", labels={}, notify=None, added_at=due, next_poll_at=due)
            jobs[index] = _Job(due, runs[index], state)
            heapq.heappush(events, (first_poll_at(policy, due), index))
            continue
        now = max(due, free_at)  # the budget lets it out
        free_at = now + 1.0 / rate
        requests += WARMUP_S <= now < end  # counted while jobs keep arriving: the steady state
        if mode != "queue" and now >= next_window:
            c, next_window = _window(jobs, now, mode, wait_at, rate * HEADROOM, most, policy), now + WINDOW_S
        age = now - job.added
        learned_wait = wait_at(c, age) if wait_at is not None else None
        seen = _DONE if age >= job.duration else _PENDING
        decision = decide(policy, job.state, seen, now, rng.random(), learned_wait=learned_wait)
        if isinstance(decision, Finish):
            if job.added >= WARMUP_S:
                delays.append(now - job.added - job.duration)
                polls.append(decision.polls)
            del jobs[index]
            continue
        job.wait = decision.next_poll_at - now
        at = decision.next_poll_at
        if mode == "uniform":
            at = now + min(job.wait * max(c, 1.0), policy.max_interval)
        elif mode == "sqrt":
            at = now + stretched(job.wait, scale_free_hazard(age), c, policy.min_interval, policy.max_interval)
        job.state = JobState(id=job.state.id, labels={}, notify=None, added_at=job.added, next_poll_at=at,
                             polls=decision.polls)
        heapq.heappush(events, (min(at, job.added + policy.deadline), index))
    return Result(delays, polls, requests, end - WARMUP_S)


def _learned_waits(hist: Histogram, policy: PollPolicy) -> tuple[Wait, float]:
    """The learned wait at a price of delay, and the target's price (the most a window pays)."""
    bounds = {"min_interval": policy.min_interval, "max_interval": policy.max_interval, "deadline": policy.deadline}
    most = target_plan(hist, target=policy.target_delay, **bounds).lam

    def wait_at(lam: float, age: float) -> float:
        at = priced_plan(hist, min(lam or most, most), **bounds).next_after(age)
        return policy.max_interval if at is None else at - age

    return wait_at, most


def _window(jobs: dict[int, _Job], now: float, mode: str, wait_at: Wait | None, rate: float, most: float,
            policy: PollPolicy) -> float:
    """The window's multiplier: uniform, the factor that fits the demand; the square-root rule's c; or the
    learned schedules' price of delay."""
    waits = [j.wait or policy.initial_delay for j in jobs.values()]
    if mode == "uniform":
        return sum(1.0 / w for w in waits) / rate
    if mode == "sqrt":
        hazards = [scale_free_hazard(now - j.added) for j in jobs.values()]
        return multiplier(waits, hazards, rate, low=policy.min_interval, high=policy.max_interval)
    assert wait_at is not None
    return fitting_lam([now - j.added for j in jobs.values()], wait_at, rate, most)


def run(mode: Mode) -> Figure:
    policy = PollPolicy()
    runs = durations(mode.pick(1_500, 6_000), seed=424242)
    summary = RunTimes()
    for seconds in durations(LEARNED, seed=77):
        summary = summary.add(("", "upsert", "?"), seconds)
    hist = summary.histograms[("", "upsert", "?")]
    results = {
        "queue (today)": simulate(runs, policy, "queue"),
        "uniform scale": simulate(runs, policy, "uniform"),
        "square-root rule (nothing learned)": simulate(runs, policy, "sqrt"),
        "learned, one price of delay": simulate(runs, policy, "learned", hist),
    }
    unlimited = simulate(runs, policy, "queue", rate=1e6).row()
    free = simulate(runs, policy, "learned", hist, rate=1e6).row()
    rows = {name: r.row() for name, r in results.items()}
    best, queue = rows["learned, one price of delay"], rows["queue (today)"]
    met = best["delay_mean_s"] < queue["delay_mean_s"] and best["delay_p95_s"] <= queue["delay_p95_s"] \
        and best["requests_per_s"] <= queue["requests_per_s"] * 1.01
    return Figure(
        key="policy_budget",
        title="A scarce rate budget: stretched schedules vs queued polls (simulated)",
        value=best["delay_mean_s"],
        unit="s mean detection delay",
        baseline=queue["delay_mean_s"],
        baseline_label="due polls queue at the budget (today)",
        ratio=round(best["delay_mean_s"] / queue["delay_mean_s"], 2),
        target="stretching beats queueing: lower mean and p95 delay at no more requests",
        met=None if mode.quick else met,
        summary=(
            f"budget {RATE:g} polls/s for jobs that want {unlimited['requests_per_s']:.1f}/s: queueing"
            f" {queue['delay_mean_s']:.0f} s mean (p95 {queue['delay_p95_s']:.0f} s), stretched"
            f" {best['delay_mean_s']:.0f} s (p95 {best['delay_p95_s']:.0f} s) at"
            f" {best['requests_per_s']:.2f} vs {queue['requests_per_s']:.2f} requests/s"
        ),
        details={
            "setup": {"median_s": MEDIAN_S, "sigma": SIGMA, "arrival_s": ARRIVAL_S, "rate_per_s": RATE,
                      "window_s": WINDOW_S, "headroom": HEADROOM, "warmup_s": WARMUP_S},
            "without a budget": unlimited,
            "learned, without a budget": free,
            "policies": rows,
            "targets met in this run": met,
            **{name: _line(r) for name, r in rows.items()},
        },
    )


def _line(r: dict[str, float]) -> str:
    return (f"{r['delay_mean_s']:.1f} s mean delay (p95 {r['delay_p95_s']:.0f} s), {r['polls_per_job']:.2f} polls/job,"
            f" {r['requests_per_s']:.2f} requests/s ({r['jobs']:.0f} jobs)")

