"""What finished jobs teach about run times, and the poll schedule that follows from it.

Pure: no clock reads, no I/O. A `RunTimes` summary keeps, per kind of job (account,
`job_type`, size band of `requested_count`), a log-scale histogram of run times: 64
buckets from 1 s to 2 days, every weight multiplied by ``2**(-1/half_life)`` when a
sample joins its histogram, so old samples fade and the total stays below about
``1.44 * half_life``. A sample also joins the coarser kinds (the account and type over
every size, the account, everyone) so a new kind borrows from its family until it has
`MIN_SAMPLES` of its own. At most `MAX_KEYS` kinds are kept; the stalest goes first.

The schedule: with ``S`` the chance the job still runs, minimise
``E[polls] + lam * E[detection delay]`` by dynamic programming over a grid of ages (waits
within ``[min_interval, max_interval]``, nothing past the deadline), and bisect ``lam`` so the
mean delay over the whole distribution meets the target. Because the cost from a poll at
age ``a`` on only involves jobs still running at ``a``, the same solution is the optimal
schedule conditioned on the job having run ``a`` seconds, for every ``a``.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Protocol

from watcher.strictjson import strict_json

BUCKETS = 64
LOW_S = 1.0
HIGH_S = 2 * 86400.0
LOG_RATIO = math.log(HIGH_S / LOW_S) / BUCKETS
EDGES = tuple(LOW_S * math.exp(LOG_RATIO * k) for k in range(BUCKETS + 1))
HALF_LIFE = 500.0
MIN_SAMPLES = 50
MAX_KEYS = 64
ANY = "*"
UNKNOWN = "?"
FORMAT = 1
_MAX_TEXT = 200
_DUST = 1e-3  # weights below this are dropped: a sample 5000 additions old

Key = tuple[str, str, str]  # (account, job_type, size band)


def size_band(requested_count: object) -> str:
    """The size band of `requested_count` ("<1k", "<10k", "<100k", ">=100k"; "?" unknown)."""
    if isinstance(requested_count, bool) or not isinstance(requested_count, int | float):
        return UNKNOWN
    if not math.isfinite(requested_count) or requested_count < 0:
        return UNKNOWN
    for bound, band in ((1_000, "<1k"), (10_000, "<10k"), (100_000, "<100k")):
        if requested_count < bound:
            return band
    return ">=100k"


def levels(key: Key) -> list[Key]:
    """`key` and its coarser kinds, most specific first."""
    account, job_type, _ = key
    chain = [key, (account, job_type, ANY), (account, ANY, ANY), (ANY, ANY, ANY)]
    return list(dict.fromkeys(chain))


def bucket_of(seconds: float) -> int:
    """The bucket of a run time; below 1 s is the first, beyond 2 days the last."""
    if not seconds > LOW_S:  # NaN too
        return 0
    return min(BUCKETS - 1, int(math.log(seconds / LOW_S) / LOG_RATIO))


@dataclass(frozen=True, slots=True)
class Histogram:
    """Decayed bucket weights of one kind of job; `count` samples were ever added."""

    weights: tuple[float, ...] = (0.0,) * BUCKETS
    count: int = 0
    touched: int = 0  # the summary's sequence number at its last sample: the stalest is evicted

    @property
    def total(self) -> float:
        return math.fsum(self.weights)

    def add(self, seconds: float, decay: float, seq: int) -> Histogram:
        k = bucket_of(seconds)
        weights = [w * decay if w * decay >= _DUST else 0.0 for w in self.weights]
        weights[k] += 1.0
        return Histogram(tuple(weights), self.count + 1, seq)

    def merge(self, other: Histogram) -> Histogram:
        weights = tuple(a + b for a, b in zip(self.weights, other.weights, strict=True))
        return Histogram(weights, self.count + other.count, max(self.touched, other.touched))

    def quantile(self, q: float) -> float:
        """The run time below which a share `q` of the weight lies (log-uniform within a bucket)."""
        return _dist(self.weights).quantile(q)

    def mean(self) -> float:
        return _dist(self.weights).mean()


@dataclass(frozen=True, slots=True)
class RunTimes:
    """Histograms of run times by kind of job; immutable, every change returns a new summary."""

    histograms: Mapping[Key, Histogram] = field(default_factory=dict)
    seq: int = 0
    half_life: float = HALF_LIFE

    def add(self, key: Key, seconds: float) -> RunTimes:
        """One finished job's run time, added to its kind and the coarser ones."""
        if not math.isfinite(seconds) or seconds < 0:
            return self
        decay = 0.5 ** (1.0 / self.half_life)
        seq = self.seq + 1
        histograms = dict(self.histograms)
        for level in levels(key):
            histograms[level] = histograms.get(level, Histogram()).add(seconds, decay, seq)
        return replace(self, histograms=_bounded(histograms), seq=seq)

    def merge(self, other: RunTimes) -> RunTimes:
        """Both summaries' samples (weights add: for summaries that hold disjoint samples)."""
        histograms = dict(self.histograms)
        for key, hist in other.histograms.items():
            histograms[key] = histograms[key].merge(hist) if key in histograms else hist
        return replace(self, histograms=_bounded(histograms), seq=max(self.seq, other.seq))

    def lookup(self, key: Key, min_samples: int = MIN_SAMPLES) -> Histogram | None:
        """The most specific histogram of `key`'s kinds with `min_samples`; None if none has."""
        for level in levels(key):
            hist = self.histograms.get(level)
            if hist is not None and hist.count >= min_samples:
                return hist
        return None

    def to_json(self) -> str:
        kinds = [
            {"k": list(key), "n": h.count, "t": h.touched,
             "w": [[i, r] for i, w in enumerate(h.weights) if (r := round(w, 4)) > 0]}
            for key, h in sorted(self.histograms.items())
        ]
        body = {"format": FORMAT, "half_life": self.half_life, "seq": self.seq, "kinds": kinds}
        return json.dumps(body, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RunTimes:
        """Parse a stored summary; ValueError on anything but what `to_json` writes."""
        data = strict_json(text)
        if not isinstance(data, dict) or set(data) != {"format", "half_life", "seq", "kinds"}:
            raise ValueError("not a run-time summary")
        if data["format"] != FORMAT:
            raise ValueError(f"unknown summary format {data['format']!r}")
        half_life, seq, kinds = data["half_life"], _count(data["seq"]), data["kinds"]
        if isinstance(half_life, bool) or not isinstance(half_life, int | float) or not 1 <= half_life <= 1e6:
            raise ValueError("bad half_life")
        if not isinstance(kinds, list) or len(kinds) > MAX_KEYS:
            raise ValueError("bad kinds")
        histograms = dict(_kind(item, float(half_life)) for item in kinds)
        if len(histograms) != len(kinds):
            raise ValueError("a kind appears twice")
        return cls(histograms, seq, float(half_life))

    @classmethod
    def load(cls, text: str | None, half_life: float = HALF_LIFE) -> RunTimes:
        """A stored summary, or an empty one if there is none or it cannot be read."""
        try:
            return cls.from_json(text) if text is not None else cls(half_life=half_life)
        except ValueError:
            return cls(half_life=half_life)


def _bounded(histograms: dict[Key, Histogram]) -> dict[Key, Histogram]:
    if len(histograms) <= MAX_KEYS:
        return histograms
    keep = sorted(histograms, key=lambda k: (k == (ANY, ANY, ANY), histograms[k].touched))[-MAX_KEYS:]
    return {k: histograms[k] for k in keep}


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("not a count")
    return value


def _kind(item: Any, half_life: float) -> tuple[Key, Histogram]:
    if not isinstance(item, dict) or set(item) != {"k", "n", "t", "w"}:
        raise ValueError("bad kind")
    key, pairs = item["k"], item["w"]
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(p, str) and len(p) <= _MAX_TEXT for p in key)):
        raise ValueError("bad key")
    if not isinstance(pairs, list) or len(pairs) > BUCKETS:
        raise ValueError("bad weights")
    weights = [0.0] * BUCKETS
    ceiling = 1.5 * half_life + 2  # the decayed total never exceeds 1/(1 - decay) < 1.45 * half_life + 1
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("bad weight")
        index, weight = _count(pair[0]), pair[1]
        if index >= BUCKETS or weights[index] or isinstance(weight, bool) or not isinstance(weight, int | float) \
                or not 0 < weight <= ceiling:
            raise ValueError("bad weight")
        weights[index] = float(weight)
    return (key[0], key[1], key[2]), Histogram(tuple(weights), _count(item["n"]), _count(item["t"]))


# --- distributions the schedule is computed for ------------------------------------


class Distribution(Protocol):
    """A run-time distribution: its CDF and partial mean ``E[T; T <= x]``, total mass 1."""

    def cdf(self, x: float) -> float: ...
    def partial_mean(self, x: float) -> float: ...


class _Dist:
    """A histogram as a distribution: smoothed over neighbouring buckets, log-uniform inside one."""

    def __init__(self, weights: tuple[float, ...]) -> None:
        kernel = (1.0, 4.0, 6.0, 4.0, 1.0)  # a few hundred samples are lumpy; a fifth of a decade is not
        smooth = [0.0] * BUCKETS
        for k, w in enumerate(weights):
            for d, c in zip(range(-2, 3), kernel, strict=True):
                smooth[min(max(k + d, 0), BUCKETS - 1)] += w * c / 16
        total = math.fsum(smooth) or 1.0
        self.mass = [w / total for w in smooth]
        self.cum, self.cum_mean = [0.0], [0.0]
        for k, m in enumerate(self.mass):
            self.cum.append(self.cum[-1] + m)
            self.cum_mean.append(self.cum_mean[-1] + m * (EDGES[k + 1] - EDGES[k]) / LOG_RATIO)

    def _split(self, x: float) -> tuple[int, float]:
        k = bucket_of(x)
        return k, (math.log(min(max(x, EDGES[k]), EDGES[k + 1]) / EDGES[k]) / LOG_RATIO)

    def cdf(self, x: float) -> float:
        k, share = self._split(x)
        return 0.0 if x <= LOW_S else min(1.0, self.cum[k] + self.mass[k] * share)

    def partial_mean(self, x: float) -> float:
        k, _ = self._split(x)
        return 0.0 if x <= LOW_S else self.cum_mean[k] + self.mass[k] * (min(x, EDGES[k + 1]) - EDGES[k]) / LOG_RATIO

    def mean(self) -> float:
        return self.cum_mean[-1]

    def quantile(self, q: float) -> float:
        k = min(max(bisect.bisect_left(self.cum, q) - 1, 0), BUCKETS - 1)
        share = min(max((q - self.cum[k]) / self.mass[k], 0.0), 1.0) if self.mass[k] > 0 else 0.0
        return EDGES[k] * math.exp(share * LOG_RATIO)


_dist = lru_cache(maxsize=256)(_Dist)  # one per summary content: quantiles are asked on every poll


# --- the optimal schedule ---------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Target:
    """`polling.target_delay`: a share of the expected run time, or seconds."""

    value: float = 0.1
    share: bool = True

    def seconds(self, mean_run_time: float) -> float:
        return self.value * mean_run_time if self.share else self.value


@lru_cache(maxsize=128)
def _histogram_plan(
    weights: tuple[float, ...], target: Target, min_interval: float, max_interval: float, deadline: float
) -> Plan:
    """Cached by the histogram's content: a changed summary is never served a stale plan."""
    dist = _dist(weights)
    horizon = min(deadline, max(dist.quantile(1 - 1e-4) * 1.5, min_interval * 2, LOW_S * 2))
    problem = Problem.build(dist, min_interval=min_interval, max_interval=max_interval, horizon=horizon)
    return plan_for(problem, target.seconds(dist.mean()))


def optimal_schedule(
    hist: Histogram, *, age: float, target: Target, min_interval: float, max_interval: float, deadline: float
) -> list[float]:
    """Poll ages after `age` minimising expected polls at the target mean delay, given it runs at `age`."""
    if hist.total <= 0:
        return []
    return _histogram_plan(hist.weights, target, min_interval, max_interval, deadline).schedule(max(age, 0.0))


def next_poll_after(
    hist: Histogram | None, age: float, *, target: Target, min_interval: float, max_interval: float,
    deadline: float, min_samples: int = MIN_SAMPLES,
) -> float | None:
    """The optimal wait after a poll at `age`; None (use the proportional policy) with fewer than
    `min_samples` samples or for a job older than 99% of those seen."""
    age = max(age, 0.0)
    if hist is None or hist.count < min_samples or hist.total <= 0 or age > hist.quantile(0.99):
        return None
    at = _histogram_plan(hist.weights, target, min_interval, max_interval, deadline).next_after(age)
    return None if at is None else at - age
