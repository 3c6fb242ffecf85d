"""When to poll next: a pure function of the job, what SendGrid said, the time and a random draw.

The formula (also in the README):

* first poll at ``added_at + initial_delay``;
* after a poll that shows the job still running, wait
  ``clamp(growth * age, min_interval, max_interval)`` scaled by a jitter factor
  in ``[1 - jitter, 1 + jitter]``, where ``age = now - added_at``. Waiting in
  proportion to the job's age keeps the detection delay a bounded share of the
  job's run time (about ``growth``), so short jobs are seen quickly and long
  ones cost few polls;
* never past ``added_at + deadline``: the poll at the deadline that still sees
  the job pending ends it as ``timed_out``;
* a 404 within ``not_found_grace`` of the job being added is "not yet" (polled
  again, at the latest when the grace ends); after it, ``not_found``;
* transient failures (429, 5xx, timeouts, malformed answers) retry on their own
  schedule, ``min(max_interval, transient_base * 2**(k-1))`` with full jitter
  over its upper half (it may start below ``min_interval``: a blip should cost
  seconds, not a poll interval), never sooner than the server's ``Retry-After``
  up to ``max_interval``; they are not counted as polls;
* a refused key (401/403) waits about ``max_interval`` (jittered downwards only)
  between attempts;
* with ``learn`` on, a learned wait (the optimal schedule for the run times seen
  so far, `watcher.learned`) replaces ``growth * age`` when the caller has one; it
  is jittered and clamped like the proportional wait, and the caller passes None
  (falling back to the proportional wait) below enough samples or for a job older
  than nearly all of those seen. ``target_delay`` is the detection delay that
  schedule aims at: a share of the expected run time, or seconds.

Every wait is at most ``max_interval`` and no poll is scheduled past the
deadline: a ``Retry-After`` asking for more is suspicious, and the rate budget,
which every request goes through, clamps it to the same bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watcher.models import TERMINAL_STATUSES, JobState, Outcome, Snapshot


@dataclass(frozen=True, slots=True)
class Target:
    """`polling.target_delay`: a share of the expected run time, or seconds."""

    value: float = 0.1
    share: bool = True

    def seconds(self, mean_run_time: float) -> float:
        return self.value * mean_run_time if self.share else self.value


_SECONDS = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)\s*")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_target_delay(value: Any) -> Target:
    """`polling.target_delay`: a bare number in (0, 1] is a share of the run time (0.1: a tenth);
    a string with a unit (`250ms`, `30s`, `2m`, `1h`) is seconds. Anything else is a ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a share in (0, 1] like 0.1 or a duration like 30s, got a boolean")
    if isinstance(value, int | float):
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"a share of the run time must be in (0, 1], got {value!r} (for seconds write '30s')")
        return Target(float(value), share=True)
    if isinstance(value, str) and (match := _SECONDS.fullmatch(value)):
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
        if not 0 < seconds <= 86400:
            raise ValueError(f"a target delay in seconds must be in (0, 1d], got {value!r}")
        return Target(seconds, share=False)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ValueError(f"expected a share in (0, 1] like 0.1 or a duration like 30s, got {shown}")


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """The `polling:` settings plus the shape constants of the backoff."""

    initial_delay: float = 2.0
    min_interval: float = 5.0
    max_interval: float = 300.0
    deadline: float = 86400.0
    not_found_grace: float = 120.0
    growth: float = 0.2
    jitter: float = 0.1
    transient_base: float = 1.0
    warn_after: float | None = None  # pending this long: one contact_import.stuck warning (None: never)
    target_delay: Target = Target()  # the learned schedule's aim
    learn: bool = True  # schedule from learned run times once there are enough


# --- what a poll observed ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """SendGrid answered with a snapshot."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class NotFound:
    """SendGrid answered 404."""


@dataclass(frozen=True, slots=True)
class Refused:
    """SendGrid refused the API key (401/403)."""


@dataclass(frozen=True, slots=True)
class Transient:
    """No usable answer; try again, not before `retry_after` seconds if given."""

    retry_after: float | None = None


Observation = Seen | NotFound | Refused | Transient


# --- what to do about it ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reschedule:
    next_poll_at: float
    polls: int
    transient_errors: int
    snapshot: Snapshot | None


@dataclass(frozen=True, slots=True)
class Finish:
    outcome: Outcome
    polls: int
    snapshot: Snapshot | None


Decision = Reschedule | Finish


def first_poll_at(policy: PollPolicy, added_at: float, learned_wait: float | None = None) -> float:
    """When a new job is polled first: after `initial_delay`, or the learned wait (never sooner than
    initial_delay, never later than max_interval or the end of the 404 grace)."""
    if learned_wait is None or not policy.learn or not learned_wait > policy.initial_delay:  # NaN too
        return added_at + policy.initial_delay
    grace = policy.not_found_grace or math.inf
    return added_at + min(learned_wait, policy.max_interval, grace, policy.deadline)


def decide(
    policy: PollPolicy, job: JobState, seen: Observation, now: float, draw: float, *,
    terminal: Mapping[str, Outcome] = TERMINAL_STATUSES, learned_wait: float | None = None,
) -> Decision:
    """The next step for `job` after observing `seen` at `now`; `draw` is uniform in [0, 1).

    `terminal` maps the statuses that end this kind of job to outcomes; `learned_wait`, when
    given (and `learn` is on), replaces the proportional wait after an answer that says "running"."""
    deadline_at = job.added_at + policy.deadline
    age = now - job.added_at
    if isinstance(seen, Seen):
        polls = job.polls + 1
        status = seen.snapshot.normalized_status
        if status is not None and status in terminal:
            return Finish(terminal[status], polls, seen.snapshot)
        if now >= deadline_at:
            return Finish(Outcome.TIMED_OUT, polls, seen.snapshot)
        at = min(now + running_interval(policy, age, draw, learned_wait), deadline_at)
        return Reschedule(at, polls, 0, seen.snapshot)
    if isinstance(seen, NotFound) and job.snapshot is None:
        polls = job.polls + 1
        grace_end = job.added_at + policy.not_found_grace
        if now >= grace_end:
            return Finish(Outcome.NOT_FOUND, polls, None)
        if now >= deadline_at:
            return Finish(Outcome.TIMED_OUT, polls, None)
        at = min(now + running_interval(policy, age, draw, learned_wait), grace_end, deadline_at)
        return Reschedule(at, polls, 0, None)
    if now >= deadline_at:
        return Finish(Outcome.TIMED_OUT, job.polls, job.snapshot)
    if isinstance(seen, Refused):
        wait = min(policy.max_interval * _jitter(policy, draw), policy.max_interval)
        return Reschedule(min(now + wait, deadline_at), job.polls, job.transient_errors, job.snapshot)
    # Transient, or a 404 for a job SendGrid has shown us before (a lagging replica on their side).
    streak = job.transient_errors + 1
    delay = transient_delay(policy, streak, draw)
    retry_after = seen.retry_after if isinstance(seen, Transient) else None
    if retry_after is not None and retry_after > delay:  # False for NaN
        # The server's word wins over our backoff, up to max_interval: an hour-long
        # Retry-After would leave the job unwatched past any sane bound.
        delay = min(retry_after, policy.max_interval)
    return Reschedule(min(now + delay, deadline_at), job.polls, streak, job.snapshot)


def base_interval(policy: PollPolicy, age: float, learned_wait: float | None = None) -> float:
    """The wait, before jitter, after a poll that saw the job still running `age` seconds after it was
    added: the learned wait when there is one (and `learn` is on), else ``growth * age``; within
    [min, max]_interval. The price of delay (watcher.learned) sums these, so it prices what is polled."""
    learned = policy.learn and learned_wait is not None and math.isfinite(learned_wait)
    base = learned_wait if learned and learned_wait is not None else policy.growth * age
    return min(max(base, policy.min_interval), policy.max_interval)


def running_interval(policy: PollPolicy, age: float, draw: float, learned_wait: float | None = None) -> float:
    """Wait after a poll that saw the job still running: `base_interval`, jittered, within [min, max]_interval."""
    base = base_interval(policy, age, learned_wait)
    return min(max(base * _jitter(policy, draw), policy.min_interval), policy.max_interval)


def transient_delay(policy: PollPolicy, streak: int, draw: float) -> float:
    """Backoff after `streak` consecutive failures, jittered over the upper half."""
    cap = min(policy.max_interval, policy.transient_base * 2 ** min(streak - 1, 30))
    return float(cap * (0.5 + draw / 2))


def _jitter(policy: PollPolicy, draw: float) -> float:
    return 1.0 - policy.jitter + 2 * policy.jitter * draw
