"""The budget-aware stretch: one price of delay for every job, spending no more than the rate."""

from __future__ import annotations

import math

import pytest

from watcher.learning import RunTimes
from watcher.optimal import priced_plan, target_plan
from watcher.policy import Target
from watcher.stretch import LAMS, demand, fitting_lam, multiplier, scale_free_hazard, stretched

BOUNDS = {"min_interval": 5.0, "max_interval": 300.0, "deadline": 86_400.0}
AGES = [float(a) for a in range(1, 200)]  # 199 running jobs of every age up to their kind's longest


def learned_waits() -> tuple[object, float]:
    summary = RunTimes()
    for k in range(400):
        summary = summary.add(("", "upsert", "?"), 60.0 * math.exp(1.5 * math.sin(k * 1.7)))  # spread around 60 s
    hist = summary.histograms[("", "upsert", "?")]
    most = target_plan(hist, target=Target(), **BOUNDS).lam

    def wait_at(lam: float, age: float) -> float:
        at = priced_plan(hist, lam, **BOUNDS).next_after(age)
        return 300.0 if at is None else max(at - age, 5.0)  # as decide clamps it

    return wait_at, most


def test_an_ample_budget_keeps_the_targets_price() -> None:
    """When the schedules fit the rate, nothing is stretched."""
    wait_at, most = learned_waits()
    assert most == fitting_lam(AGES, wait_at, 1e6, most)  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [0.8, 0.5, 0.25])
def test_a_scarce_budget_lowers_the_price_until_the_demand_fits(share: float) -> None:
    """The price chosen is the largest of LAMS whose waits ask at most the rate; the next one up asks more."""
    wait_at, most = learned_waits()
    free = demand([wait_at(most, a) for a in AGES])  # type: ignore[operator]
    rate = free * share
    lam = fitting_lam(AGES, wait_at, rate, most)  # type: ignore[arg-type]
    assert lam < most
    assert demand([wait_at(lam, a) for a in AGES]) <= rate  # type: ignore[operator]
    above = LAMS[LAMS.index(lam) + 1]
    assert above >= most or demand([wait_at(above, a) for a in AGES]) > rate  # type: ignore[operator]


def test_an_unreachable_rate_pays_the_least() -> None:
    """When even the cheapest schedules ask more than the rate, the cheapest are used (the budget queues the rest)."""
    wait_at, most = learned_waits()
    assert LAMS[0] == fitting_lam(AGES, wait_at, 0.01, most)  # type: ignore[arg-type]


def test_the_square_root_rule_spends_the_rate() -> None:
    """The multiplier makes the stretched waits ask the rate; old jobs (low hazard) are stretched more."""
    waits = [max(5.0, 0.2 * a) for a in AGES]
    hazards = [scale_free_hazard(a) for a in AGES]
    rate = demand(waits) / 2
    c = multiplier(waits, hazards, rate, low=5.0, high=300.0)
    new = [stretched(w, h, c, 5.0, 300.0) for w, h in zip(waits, hazards, strict=True)]
    assert demand(new) == pytest.approx(rate, rel=1e-6)
    assert all(5.0 <= w <= 300.0 for w in new)
    assert new == sorted(new)  # the older, the longer
    free = [w for w in new if 5.0 < w < 300.0]
    assert len(free) > 50  # most are within the bounds, where the rule is w = c * sqrt(age):
    assert stretched(1.0, scale_free_hazard(400.0), c, 0.0, 1e9) == pytest.approx(
        2 * stretched(1.0, scale_free_hazard(100.0), c, 0.0, 1e9))
    assert 0.0 == multiplier(waits, hazards, demand(waits) * 1.01, low=5.0, high=300.0)
    assert 42.0 == stretched(42.0, 0.1, 0.0, 5.0, 300.0)  # no stretch: the wait as decided


def test_an_unreachable_rate_stretches_everyone_to_the_cap() -> None:
    """Below len/max_interval polls per second the rate cannot be met: every wait is max_interval."""
    waits = [10.0] * 100
    hazards = [scale_free_hazard(a) for a in range(100)]
    c = multiplier(waits, hazards, 0.1, low=5.0, high=300.0)
    assert {300.0} == {stretched(w, h, c, 5.0, 300.0) for w, h in zip(waits, hazards, strict=True)}
