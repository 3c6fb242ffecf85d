"""Spending a scarce rate budget where it pays: stretch poll schedules so the expected delay grows least.

When the running jobs want more polls per second (the sum of 1/wait over them) than the
rate budget allows, some polls must come later. Letting due polls queue up delays every
job alike, also the ones most likely to have just ended. Instead, every job is scheduled
with one price of delay in polls, ``lam``, shared by all (a Lagrange multiplier): each poll
then buys about the same delay wherever it goes, which is what minimises the total delay
for the requests spent.

* With a learned distribution, `fitting_lam` picks the largest ``lam`` (of `LAMS`) whose
  optimal schedules (`watcher.optimal.solve`) ask no more than the rate over the running
  jobs' ages; the target's own ``lam`` when that fits already (no stretch).
* Knowing nothing, the square-root rule: a job that ends at hazard rate ``h`` (the chance
  per second that it ends now, given it ran this long) polled every ``w`` costs about
  ``h * w / 2`` seconds of delay per second and ``1 / w`` polls per second; minimising the
  delay for ``sum(1 / w) = rate`` gives ``w = c / sqrt(h)`` with one ``c`` for all (`multiplier`),
  with ``h = 1 / age`` (`scale_free_hazard`) when nothing is known.

Both are one rule: a job ending at hazard ``h`` costs ``1 / w + lam * h * w / 2`` per second, least
at ``w = sqrt(2 / (lam * h))`` (`priced_wait`), so the square-root rule's ``c`` is ``sqrt(2 / lam)``
and one price serves jobs with and without a learned distribution (`price_for`; the running
daemon keeps it in `LearnedSchedules.prices`, watcher.learned).

Pure: the caller supplies waits, ages, hazards and the rate; the multiplier is computed once
per window over every running job and applied to each wait decided in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

LAMS = tuple(10 ** (k / 8) for k in range(-40, 25))  # the prices of a second of delay tried, 1e-5 to 1000 polls
_FLOOR = 1e-9  # a hazard of zero (a job that cannot end now) is stretched to the cap, not divided by


def fitting_lam(ages: Sequence[float], wait_at: Callable[[float, float], float], rate: float, most: float) -> float:
    """The largest price of delay up to `most` (the target's) whose waits ``wait_at(lam, age)`` over the
    running jobs' `ages` ask at most `rate` polls per second; the smallest of `LAMS` if none does."""
    lam = price_for(lambda lam: demand([wait_at(lam, a) for a in ages]), rate, most)
    return most if lam is None else lam


def price_for(demand_at: Callable[[float], float], rate: float, most: float = math.inf) -> float | None:
    """The largest price of delay below `most` whose schedules ask at most `rate` polls per second
    (``demand_at(lam)``, growing with ``lam``); None when the schedules at `most` (unstretched) fit
    already or there is no rate, the smallest of `LAMS` when none fits."""
    if rate <= 0 or demand_at(most) <= rate:
        return None
    fitting = [lam for lam in LAMS if lam < most]
    if not fitting:
        return None
    low, high = 0, len(fitting) - 1
    while low < high:  # demand grows with lam: the last lam that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if demand_at(fitting[mid]) <= rate else (low, mid - 1)
    return fitting[low]


def priced_wait(hazard_rate: float, lam: float) -> float:
    """The wait that costs least when a second of delay costs `lam` polls, for a job ending at `hazard_rate`."""
    return math.sqrt(2.0 / (max(lam, _FLOOR) * max(hazard_rate, _FLOOR)))


def scale_free_hazard(age: float, floor: float = 1.0) -> float:
    """The hazard when nothing is known: a job that ran `age` seconds is as likely to run as long again."""
    return 1.0 / max(age, floor)


def demand(waits: Sequence[float]) -> float:
    """Polls per second the running jobs want, each polled every its wait."""
    return math.fsum(1.0 / w for w in waits if w > 0)


def multiplier(waits: Sequence[float], hazards: Sequence[float], rate: float, *, low: float, high: float) -> float:
    """The square-root rule's ``c``: the waits ``stretched(h, c, low, high)`` spend `rate` polls per second;
    0 when the `waits` as they are fit the rate (no stretch). Waits stay within [low, high] (min and
    max_interval), so below ``len(waits) / high`` the rate is out of reach: every wait is `high` then."""
    if rate <= 0 or demand(waits) <= rate:
        return 0.0
    c_low, c_high = 0.0, high * max(math.sqrt(max(h, _FLOOR)) for h in hazards)
    for _ in range(60):
        mid = (c_low + c_high) / 2
        spent = demand([stretched(w, h, mid, low, high) for w, h in zip(waits, hazards, strict=True)])
        c_low, c_high = (mid, c_high) if spent > rate else (c_low, mid)
    return c_high


def stretched(wait: float, hazard_rate: float, c: float, low: float, high: float) -> float:
    """`wait` as it is when `c` is 0 (the budget suffices), else ``c / sqrt(hazard_rate)`` within [low, high]."""
    if c <= 0:
        return wait
    return min(max(c / math.sqrt(max(hazard_rate, _FLOOR)), low), high)
