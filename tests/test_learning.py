"""The run-time summary and the optimal schedule: pure, checked with numbers and a brute-force search."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.learning import (
    ANY,
    BUCKETS,
    EDGES,
    HALF_LIFE,
    MAX_KEYS,
    UNKNOWN,
    Histogram,
    Key,
    RunTimes,
    bucket_of,
    levels,
    size_band,
)
from watcher.optimal import Plan, Problem, next_poll_after, optimal_schedule, plan_for, solve
from watcher.policy import Target

KEY: Key = ("main", "upsert", "<1k")


class LogNormal:
    """A log-normal run time with its exact CDF and partial mean."""

    def __init__(self, median: float, sigma: float) -> None:
        self.mu, self.sigma = math.log(median), sigma

    def cdf(self, x: float) -> float:
        return 0.0 if x <= 0 else 0.5 * (1 + math.erf((math.log(x) - self.mu) / (self.sigma * math.sqrt(2))))

    def partial_mean(self, x: float) -> float:
        if x <= 0:
            return 0.0
        z = (math.log(x) - self.mu - self.sigma**2) / (self.sigma * math.sqrt(2))
        return math.exp(self.mu + self.sigma**2 / 2) * 0.5 * (1 + math.erf(z))


def learned(samples: list[float], key: Key = KEY) -> RunTimes:
    summary = RunTimes()
    for seconds in samples:
        summary = summary.add(key, seconds)
    return summary


def lognormal_samples(count: int, median: float = 60.0, sigma: float = 1.5, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(count)]


# --- the summary ------------------------------------------------------------------------


def test_buckets_cover_one_second_to_two_days() -> None:
    """Run times map to 64 log-scale buckets; below 1 s, beyond 2 days and NaN land in the end buckets."""
    assert (BUCKETS, 1.0, 172_800.0) == (len(EDGES) - 1, EDGES[0], pytest.approx(EDGES[-1]))
    assert (0, 0, BUCKETS - 1, 0) == (bucket_of(0.2), bucket_of(1.0), bucket_of(1e9), bucket_of(math.nan))
    assert EDGES[bucket_of(60.0)] <= 60.0 < EDGES[bucket_of(60.0) + 1]


def test_a_sample_fades_to_half_after_half_life_more() -> None:
    """A sample's weight halves after `half_life` more samples join its histogram."""
    summary = learned([10.0] + [1000.0] * int(HALF_LIFE))
    hist = summary.histograms[KEY]
    assert 0.5 == pytest.approx(hist.weights[bucket_of(10.0)], rel=1e-3)


def test_total_weight_stays_bounded() -> None:
    """However many samples join, the decayed total stays below 1 / (1 - decay)."""
    hist = learned([30.0] * 5000).histograms[KEY]
    bound = 1 / (1 - 0.5 ** (1 / HALF_LIFE))
    assert 5000 == hist.count
    assert bound * 0.99 < hist.total <= bound


def test_a_sample_joins_its_coarser_kinds() -> None:
    """A sample counts for its kind, the account and type over every size, the account, and everyone."""
    summary = learned([42.0])
    assert [KEY, ("main", "upsert", ANY), ("main", ANY, ANY), (ANY, ANY, ANY)] == levels(KEY)
    assert {k: 1 for k in levels(KEY)} == {k: h.count for k, h in summary.histograms.items()}


def test_lookup_takes_the_most_specific_kind_with_enough_samples() -> None:
    """A kind with too few samples of its own borrows its family's histogram."""
    summary = learned([60.0] * 60, ("main", "upsert", "<10k"))
    for seconds in [5.0] * 10:
        summary = summary.add(KEY, seconds)
    assert summary.histograms[("main", "upsert", ANY)] is summary.lookup(KEY)
    assert summary.histograms[("main", "upsert", "<10k")] is summary.lookup(("main", "upsert", "<10k"))
    assert None is summary.lookup(KEY, min_samples=1000)


def test_kinds_are_bounded_and_the_stalest_go() -> None:
    """At most MAX_KEYS kinds are kept: the least recently fed go first, everyone's never."""
    summary = RunTimes()
    for n in range(MAX_KEYS):
        summary = summary.add((f"acct{n}", UNKNOWN, UNKNOWN), 10.0)
    assert MAX_KEYS == len(summary.histograms)
    assert (ANY, ANY, ANY) in summary.histograms
    assert ("acct63", UNKNOWN, UNKNOWN) in summary.histograms
    assert ("acct0", UNKNOWN, UNKNOWN) not in summary.histograms


def test_size_bands() -> None:
    """requested_count falls in one of four bands; anything but a count is unknown."""
    cases = [(0, "<1k"), (999, "<1k"), (1000, "<10k"), (99_999, "<100k"), (100_000, ">=100k"),
             (None, UNKNOWN), ("12", UNKNOWN), (True, UNKNOWN), (-1, UNKNOWN), (math.inf, UNKNOWN)]
    assert [band for _, band in cases] == [size_band(value) for value, _ in cases]


def test_json_round_trip() -> None:
    """A summary written and read back has the same kinds, counts and weights."""
    summary = learned(lognormal_samples(300))
    back = RunTimes.from_json(summary.to_json())
    assert summary.seq == back.seq
    assert set(summary.histograms) == set(back.histograms)
    for key, hist in summary.histograms.items():
        assert hist.count == back.histograms[key].count
        assert hist.weights == pytest.approx(back.histograms[key].weights, abs=1e-4)


def _valid() -> dict[str, object]:
    data: dict[str, object] = json.loads(learned([10.0, 20.0]).to_json())
    return data


CORRUPT = [
    "not json", "[]", "{}", '{"format": 1}', "NaN",
    json.dumps({**_valid(), "format": 2}),
    json.dumps({**_valid(), "extra": 1}),
    json.dumps({**_valid(), "half_life": 0}),
    json.dumps({**_valid(), "seq": -1}),
    json.dumps({**_valid(), "seq": True}),
    json.dumps({**_valid(), "kinds": [{"k": ["a", "b"], "n": 1, "t": 1, "w": [[0, 1.0]]}]}),
    json.dumps({**_valid(), "kinds": [{"k": ["a", "b", "c"], "n": 1, "t": 1, "w": [[64, 1.0]]}]}),
    json.dumps({**_valid(), "kinds": [{"k": ["a", "b", "c"], "n": 1, "t": 1, "w": [[3, -1.0]]}]}),
    json.dumps({**_valid(), "kinds": [{"k": ["a", "b", "c"], "n": 1, "t": 1, "w": [[3, 1e9]]}]}),
    json.dumps({**_valid(), "kinds": [{"k": ["a", "b", "c"], "n": 1, "t": 1, "w": [[3, 1.0], [3, 1.0]]}]}),
    json.dumps({**_valid(), "kinds": [{"k": ["a", "b", "c"], "n": 1.5, "t": 1, "w": []}]}),
    json.dumps({**_valid(), "kinds": [{"k": ["a", "b", "c"], "n": 1, "t": 1, "w": []}] * 2}),
    json.dumps({**_valid(), "kinds": [{"k": [str(n), "b", "c"], "n": 1, "t": 1, "w": []} for n in range(65)]}),
    json.dumps({**_valid(), "kinds": [{"k": ["a" * 201, "b", "c"], "n": 1, "t": 1, "w": []}]}),
    '{"format": 1, "format": 1, "half_life": 500, "seq": 0, "kinds": []}',
]


@pytest.mark.parametrize("text", CORRUPT)
def test_corrupt_stored_summary_is_refused(text: str) -> None:
    """Anything but what to_json writes is a ValueError, and `load` makes it an empty summary."""
    with pytest.raises(ValueError):
        RunTimes.from_json(text)
    assert {} == RunTimes.load(text).histograms


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.recursive(st.none() | st.integers() | st.floats() | st.text(max_size=5),
                                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                               max_size=4)).map(
    lambda v: json.dumps(v, allow_nan=True)))
def test_any_stored_text_loads_without_crashing(text: str) -> None:
    """`load` turns any text at all into a summary (empty when unreadable), never an exception."""
    assert isinstance(RunTimes.load(text), RunTimes)


def test_merge_adds_both_summaries() -> None:
    """Merging replicas' disjoint summaries adds their counts and weights, kind by kind."""
    a, b = learned([10.0] * 30), learned([1000.0] * 20, ("other", UNKNOWN, UNKNOWN))
    merged = a.merge(b)
    everyone = merged.histograms[(ANY, ANY, ANY)]
    assert 50 == everyone.count
    assert a.histograms[KEY] == merged.histograms[KEY]
    assert b.histograms[("other", UNKNOWN, UNKNOWN)] == merged.histograms[("other", UNKNOWN, UNKNOWN)]
    assert everyone.weights == pytest.approx(
        [x + y for x, y in zip(a.histograms[(ANY, ANY, ANY)].weights, b.histograms[(ANY, ANY, ANY)].weights,
                               strict=True)])
    assert a.histograms == a.merge(RunTimes()).histograms


# --- the optimal schedule ------------------------------------------------------------------


class Steps:
    """A small discrete-ish distribution: mass spread evenly over a few intervals."""

    def __init__(self, parts: list[tuple[float, float, float]]) -> None:
        self.parts = parts  # (start, end, mass)

    def cdf(self, x: float) -> float:
        return sum(m * min(max((x - a) / (b - a), 0.0), 1.0) for a, b, m in self.parts)

    def partial_mean(self, x: float) -> float:
        total = 0.0
        for a, b, m in self.parts:
            hi = min(max(x, a), b)
            total += m * (hi * hi - a * a) / (2 * (b - a))
        return total


BIMODAL = Steps([(5.0, 15.0, 0.6), (300.0, 400.0, 0.4)])
SMALL_GRID = (0.0, 4.0, 8.0, 12.0, 16.0, 30.0, 100.0, 200.0, 300.0, 330.0, 360.0, 400.0)


def small_problem(dist: Steps) -> Problem:
    g = SMALL_GRID
    return Problem(dist, g, tuple(dist.cdf(x) for x in g), tuple(dist.partial_mean(x) for x in g),
                   tuple((min(i + 1, len(g) - 1), len(g) - 1) for i in range(len(g))), 0.0, math.inf)


def brute_force(dist: Steps, age: float, lam: float) -> tuple[float, list[float]]:
    """Every increasing schedule from `age` that ends at the grid's end: the cheapest one and its cost."""
    later = [x for x in SMALL_GRID if x > age]
    best: tuple[float, list[float]] = (math.inf, [])
    for r in range(len(later)):
        for middle in itertools.combinations(later[:-1], r):
            times = [*middle, later[-1]]
            cost, last = 0.0, age
            for at in times:
                cost += 1 - dist.cdf(last)
                cost += lam * (at * (dist.cdf(at) - dist.cdf(last)) - (dist.partial_mean(at) - dist.partial_mean(last)))
                last = at
            best = min(best, (cost, times))
    return best


@pytest.mark.parametrize("lam", [0.001, 0.01, 0.05, 0.5])
def test_dynamic_programming_matches_brute_force(lam: float) -> None:
    """On a small grid the DP's schedule from age 0 is the cheapest of all schedules, cost and times."""
    plan = solve(small_problem(BIMODAL), lam)
    cost, times = brute_force(BIMODAL, 0.0, lam)
    assert cost == pytest.approx(plan.polls + lam * plan.delay)
    assert times == plan.schedule(0.0)


@pytest.mark.parametrize("age", [0.0, 6.0, 14.0, 20.0, 250.0, 310.0])
def test_schedule_is_conditioned_on_the_age(age: float) -> None:
    """From any age, also between grid points, the next poll is the brute-force optimum for a job
    known to run that long: past the first mode the next poll jumps to the second."""
    plan: Plan = solve(small_problem(BIMODAL), 0.05)
    _, times = brute_force(BIMODAL, age, 0.05)
    assert times[0] == plan.next_after(age)


def test_conditioning_moves_the_next_poll() -> None:
    """A job past the short mode waits for the long one; a young job is polled soon."""
    plan = solve(small_problem(BIMODAL), 0.05)
    young, old = plan.next_after(0.0), plan.next_after(20.0)
    assert young is not None and old is not None
    assert young <= 16.0 and old >= 300.0


def test_matches_the_known_limit_of_the_benchmark_distribution() -> None:
    """For log-normal(median 60 s, sigma 1.5) the optimum spends about 5.6 polls at a 16.3 s mean delay."""
    problem = Problem.build(LogNormal(60.0, 1.5), min_interval=5.0, max_interval=300.0, horizon=86_400.0)
    plan = plan_for(problem, 16.3)
    assert plan.delay <= 16.3
    assert 5.6 == pytest.approx(plan.polls, abs=0.1)


def test_a_looser_target_costs_fewer_polls() -> None:
    """The bisection meets each target, and a looser one never needs more polls."""
    problem = Problem.build(LogNormal(60.0, 1.5), min_interval=5.0, max_interval=300.0, horizon=86_400.0)
    plans = [plan_for(problem, target) for target in (8.0, 16.0, 40.0)]
    assert all(p.delay <= t for p, t in zip(plans, (8.0, 16.0, 40.0), strict=True))
    assert plans[0].polls > plans[1].polls > plans[2].polls
    assert plans[2].delay > 35.0  # close to the target, not far below it


def test_waits_stay_within_min_and_max_interval() -> None:
    """Consecutive polls of a learned schedule are min_interval to max_interval apart."""
    hist = learned(lognormal_samples(400)).histograms[KEY]
    times = optimal_schedule(hist, age=2.0, target=Target(), min_interval=5.0, max_interval=120.0, deadline=86_400)
    gaps = [b - a for a, b in itertools.pairwise([2.0, *times])]
    assert len(times) > 5
    assert all(5.0 <= gap <= 120.0 + 1e-9 for gap in gaps)


def test_schedule_stops_at_the_deadline() -> None:
    """No poll is planned past the deadline."""
    hist = learned(lognormal_samples(400)).histograms[KEY]
    times = optimal_schedule(hist, age=2.0, target=Target(), min_interval=5.0, max_interval=300.0, deadline=600)
    assert 600.0 == times[-1]


def test_falls_back_with_too_few_samples_or_an_unusually_old_job() -> None:
    """Below 50 samples, or past the 99th percentile of those seen, there is no learned wait."""
    hist = learned(lognormal_samples(400)).histograms[KEY]
    few = learned(lognormal_samples(49)).histograms[KEY]
    bounds = {"target": Target(), "min_interval": 5.0, "max_interval": 300.0, "deadline": 86_400.0}
    p99 = hist.quantile(0.99)
    assert None is next_poll_after(few, 10.0, **bounds)  # type: ignore[arg-type]
    assert None is next_poll_after(None, 10.0, **bounds)  # type: ignore[arg-type]
    assert None is next_poll_after(hist, p99 + 1, **bounds)  # type: ignore[arg-type]
    assert None is not next_poll_after(hist, p99 - 1, **bounds)  # type: ignore[arg-type]


def test_target_in_seconds_or_as_a_share() -> None:
    """A share of the mean run time and the same number of seconds give the same schedule."""
    hist = learned(lognormal_samples(400)).histograms[KEY]
    share = next_poll_after(hist, 30.0, target=Target(0.1), min_interval=5, max_interval=300, deadline=86_400)
    seconds = next_poll_after(hist, 30.0, target=Target(0.1 * hist.mean(), share=False), min_interval=5,
                              max_interval=300, deadline=86_400)
    assert share == seconds
    assert 0.1 * 200 == Target(0.1).seconds(200) and 7 == Target(7, share=False).seconds(200)


def test_histogram_quantiles_follow_the_samples() -> None:
    """The smoothed histogram's median and mean are close to the samples'."""
    samples = lognormal_samples(2000, median=60.0, sigma=1.0)
    hist = Histogram()
    for s in samples:
        hist = hist.add(s, 1.0, 0)
    assert 60.0 == pytest.approx(hist.quantile(0.5), rel=0.1)
    assert sum(samples) / len(samples) == pytest.approx(hist.mean(), rel=0.1)
