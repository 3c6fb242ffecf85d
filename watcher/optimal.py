"""The poll schedule that follows from a run-time distribution: fewest polls for a target delay.

Pure: no clock reads, no I/O. With ``S`` the chance the job still runs, minimise
``E[polls] + lam * E[detection delay]`` by dynamic programming over a grid of ages (waits
within ``[min_interval, max_interval]``, nothing past the deadline), and bisect ``lam`` so the
mean delay over the whole distribution meets the target. Because the cost from a poll at
age ``a`` on only involves jobs still running at ``a``, the same solution is the optimal
schedule conditioned on the job having run ``a`` seconds, for every ``a``. Plans are cached
by the histogram's content, so a summary that has not changed is solved once.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

from watcher.learning import FAR_OUT, LOG_RATIO, LOW_S, MIN_SAMPLES, Distribution, Histogram, as_distribution
from watcher.policy import Target


@dataclass(frozen=True, eq=False)
class Problem:
    """A distribution on a grid of ages: 0, then `per_bucket` per histogram bucket, spaced at most
    max_interval/4, up to `horizon`; with each age's CDF, partial mean and window of next polls."""

    dist: Distribution
    grid: tuple[float, ...]
    cdf: tuple[float, ...]
    pmean: tuple[float, ...]
    windows: tuple[tuple[int, int], ...]  # the grid indices a wait within [min, max]_interval reaches
    min_interval: float
    max_interval: float

    @classmethod
    def build(
        cls, dist: Distribution, *, min_interval: float, max_interval: float, horizon: float, per_bucket: int = 4
    ) -> Problem:
        ratio, step = math.exp(LOG_RATIO / per_bucket), max(max_interval / 4, 1e-3)
        points, at = [0.0], LOW_S
        while at < horizon:
            points.append(at)
            at = min(at * ratio, at + step)
        points.append(horizon)
        windows = []
        for x in points:
            lo = min(bisect.bisect_left(points, x + min_interval), len(points) - 1)
            windows.append((lo, max(lo, bisect.bisect_right(points, x + max_interval) - 1)))
        return cls(dist, tuple(points), tuple(dist.cdf(x) for x in points),
                   tuple(dist.partial_mean(x) for x in points), tuple(windows), min_interval, max_interval)


@dataclass(frozen=True, eq=False)
class Plan:
    """The optimal schedule for one `lam`: from any age, where to poll next."""

    problem: Problem
    after: tuple[float, ...]  # lam * E[delay; T <= g_j] + cost-to-go from g_j: the DP's term per next poll
    nxt: tuple[int, ...]  # the best next grid index after a poll at each grid point (-1: the end)
    lam: float
    polls: float  # expected polls per job from age 0
    delay: float  # expected detection delay (s) from age 0

    def next_after(self, age: float) -> float | None:
        """The optimal next poll age after a poll at `age` that saw the job running; None past the grid."""
        p = self.problem
        g = p.grid
        lo = max(bisect.bisect_left(g, age + p.min_interval), bisect.bisect_right(g, age))
        if lo >= len(g):
            return None
        hi = max(lo, bisect.bisect_right(g, age + p.max_interval) - 1)
        slope = self.lam * p.dist.cdf(age)
        return g[min(range(lo, hi + 1), key=lambda j: self.after[j] - slope * g[j])]

    def schedule(self, age: float) -> list[float]:
        """Every poll age after `age` to the end of the grid, for a job still running at `age`."""
        first = self.next_after(age)
        if first is None:
            return []
        times, j = [first], self.problem.grid.index(first)
        while self.nxt[j] >= 0:
            j = self.nxt[j]
            times.append(self.problem.grid[j])
        return times


def solve(problem: Problem, lam: float) -> Plan:
    """Minimise E[polls] + lam * E[delay] over schedules on the grid, by dynamic programming backwards.

    From a poll at g_i that saw the job running, polling next at g_j costs the poll (the mass
    alive at g_i) plus lam times the delay of the jobs ending in (g_i, g_j]; so the cost-to-go
    is ``S_i + lam * M_i + min_j (after_j - lam * F_i * g_j)``."""
    g, cdf, pmean = problem.grid, problem.cdf, problem.pmean
    n = len(g)
    after, nxt = [0.0] * n, [-1] * n
    after[-1] = lam * (g[-1] * cdf[-1] - pmean[-1])
    for i in range(n - 2, -1, -1):
        lo, hi = problem.windows[i]
        lo = max(lo, i + 1)
        hi = max(hi, lo)
        slope = lam * cdf[i]
        values = [a - slope * x for a, x in zip(after[lo : hi + 1], g[lo : hi + 1], strict=True)]
        best = min(values)
        after[i] = lam * g[i] * cdf[i] + (1.0 - cdf[i]) + best
        nxt[i] = lo + values.index(best)
    polls = delay = 0.0
    i = 0
    while nxt[i] >= 0:
        j = nxt[i]
        polls += 1.0 - cdf[i]
        delay += g[j] * (cdf[j] - cdf[i]) - (pmean[j] - pmean[i])
        i = j
    return Plan(problem, tuple(after), tuple(nxt), lam, polls, delay)


def plan_for(problem: Problem, target_s: float, iterations: int = 12) -> Plan:
    """The plan with the fewest expected polls whose mean delay is at most `target_s` (bisecting lam)."""
    low, high = 1e-5, 10.0
    best = solve(problem, high)
    if best.delay > target_s:
        return best  # min_interval alone costs more delay than the target allows
    cheap = solve(problem, low)
    if cheap.delay <= target_s:
        return cheap
    for _ in range(iterations):
        mid = math.sqrt(low * high)
        plan = solve(problem, mid)
        if plan.delay <= target_s:
            high, best = mid, plan
        else:
            low = mid
    return best


@lru_cache(maxsize=64)
def _problem(weights: tuple[float, ...], min_interval: float, max_interval: float, deadline: float) -> Problem:
    """Cached by the histogram's content: a changed summary is never served a stale plan."""
    dist = as_distribution(weights)
    horizon = min(deadline, max(dist.quantile(1 - 1e-4) * 1.5, min_interval * 2, LOW_S * 2))
    return Problem.build(dist, min_interval=min_interval, max_interval=max_interval, horizon=horizon)


@lru_cache(maxsize=128)
def _histogram_plan(
    weights: tuple[float, ...], target: Target, min_interval: float, max_interval: float, deadline: float
) -> Plan:
    problem = _problem(weights, min_interval, max_interval, deadline)
    return plan_for(problem, target.seconds(as_distribution(weights).mean()))


@lru_cache(maxsize=512)
def _priced_plan(weights: tuple[float, ...], lam: float, min_interval: float, max_interval: float,
                 deadline: float) -> Plan:
    return solve(_problem(weights, min_interval, max_interval, deadline), lam)


def target_plan(hist: Histogram, *, target: Target, min_interval: float, max_interval: float, deadline: float) -> Plan:
    """The optimal plan for the target delay (its `lam` is the most a scarce budget may pay; `watcher.stretch`)."""
    return _histogram_plan(hist.weights, target, min_interval, max_interval, deadline)


def priced_plan(hist: Histogram, lam: float, *, min_interval: float, max_interval: float, deadline: float) -> Plan:
    """The optimal plan when a second of delay costs `lam` polls (a scarce budget lowers it)."""
    return _priced_plan(hist.weights, lam, min_interval, max_interval, deadline)


def optimal_schedule(
    hist: Histogram, *, age: float, target: Target, min_interval: float, max_interval: float, deadline: float
) -> list[float]:
    """Poll ages after `age` minimising expected polls at the target mean delay, given it runs at `age`."""
    if hist.total <= 0:
        return []
    return _histogram_plan(hist.weights, target, min_interval, max_interval, deadline).schedule(max(age, 0.0))


def next_poll_after(
    hist: Histogram | None, age: float, *, target: Target, min_interval: float, max_interval: float,
    deadline: float, min_samples: int = MIN_SAMPLES, lam: float | None = None,
) -> float | None:
    """The optimal wait after a poll at `age`; None (use the proportional policy) with fewer than
    `min_samples` samples or for a job older than FAR_OUT of those seen. `lam`, a scarce budget's price
    of delay (`watcher.stretch`), replaces the target's when it is lower (it only ever stretches)."""
    age = max(age, 0.0)
    if hist is None or hist.count < min_samples or hist.total <= 0 or age > hist.quantile(FAR_OUT):
        return None
    plan = _histogram_plan(hist.weights, target, min_interval, max_interval, deadline)
    if lam is not None and lam < plan.lam:
        plan = _priced_plan(hist.weights, lam, min_interval, max_interval, deadline)
    at = plan.next_after(age)
    return None if at is None else at - age
