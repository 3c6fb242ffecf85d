"""The poll policy is a pure function: checked with numbers, no clock, no network."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.models import JobState, Outcome, Snapshot
from watcher.policy import (
    Finish,
    NotFound,
    Observation,
    PollPolicy,
    Refused,
    Reschedule,
    Seen,
    Target,
    Transient,
    decide,
    first_poll_at,
    parse_target_delay,
    running_interval,
    transient_delay,
)

POLICY = PollPolicy(initial_delay=2, min_interval=5, max_interval=300, deadline=3600, not_found_grace=120)
ADDED = 1_000_000.0


def job(**changes: object) -> JobState:
    base: dict[str, object] = {"id": "j1", "labels": {}, "notify": None, "added_at": ADDED, "next_poll_at": ADDED}
    base.update(changes)
    return JobState(**base)  # type: ignore[arg-type]


def pending() -> Seen:
    return Seen(Snapshot(status="pending"))


def test_first_poll_waits_initial_delay() -> None:
    """The first poll happens initial_delay after the job was added."""
    assert ADDED + 2 == first_poll_at(POLICY, ADDED)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("completed", Outcome.COMPLETED),
        ("errored", Outcome.ERRORED),
        ("failed", Outcome.FAILED),
        ("Completed", Outcome.COMPLETED),
        (" FAILED ", Outcome.FAILED),
    ],
)
def test_terminal_status_finishes(status: str, outcome: Outcome) -> None:
    """A terminal status ends the job, compared case-insensitively, and counts as a poll."""
    decision = decide(POLICY, job(polls=3), Seen(Snapshot(status=status)), ADDED + 50, 0.5)
    assert Finish(outcome, 4, Snapshot(status=status)) == decision


def test_intervals_grow_from_min_to_max() -> None:
    """Without jitter the wait grows with the job's age, clamped to [min_interval, max_interval]."""
    ages = [1, 10, 25, 50, 100, 500, 1000, 1500, 10_000]
    waits = [running_interval(POLICY, age, 0.5) for age in ages]
    assert [5, 5, 5, 10, 20, 100, 200, 300, 300] == pytest.approx(waits)


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999])
def test_jitter_stays_within_bounds(draw: float) -> None:
    """Jitter moves the wait by at most 10% and never outside the configured bounds."""
    wait = running_interval(POLICY, 200, draw)
    assert 36 <= wait <= 44
    assert 5 <= running_interval(POLICY, 1, draw) <= 5.5
    assert running_interval(POLICY, 100_000, draw) <= 300


def test_unknown_status_keeps_polling() -> None:
    """An unknown status is not terminal: the job is polled again."""
    decision = decide(POLICY, job(polls=1), Seen(Snapshot(status="processing")), ADDED + 100, 0.5)
    assert isinstance(decision, Reschedule)
    assert 2 == decision.polls
    assert ADDED + 120 == pytest.approx(decision.next_poll_at)


def test_next_poll_never_past_deadline() -> None:
    """Near the deadline the next poll is scheduled at the deadline itself."""
    decision = decide(POLICY, job(), pending(), ADDED + 3590, 0.5)
    assert isinstance(decision, Reschedule)
    assert ADDED + 3600 == decision.next_poll_at


def test_pending_at_deadline_times_out() -> None:
    """A job still pending at its deadline ends as timed_out."""
    decision = decide(POLICY, job(polls=9), pending(), ADDED + 3600, 0.5)
    assert Finish(Outcome.TIMED_OUT, 10, Snapshot(status="pending")) == decision


def test_not_found_within_grace_is_not_yet() -> None:
    """A 404 inside not_found_grace is polled again, at the latest when the grace ends."""
    decision = decide(POLICY, job(), NotFound(), ADDED + 118, 0.5)
    assert Reschedule(ADDED + 120, 1, 0, None) == decision


def test_not_found_after_grace_is_final() -> None:
    """A 404 once not_found_grace has passed ends the job as not_found."""
    assert Finish(Outcome.NOT_FOUND, 3, None) == decide(POLICY, job(polls=2), NotFound(), ADDED + 120, 0.5)


def test_not_found_after_being_seen_is_transient() -> None:
    """A 404 for a job SendGrid has shown before is retried, not declared missing."""
    seen_before = job(polls=4, snapshot=Snapshot(status="pending"))
    decision = decide(POLICY, seen_before, NotFound(), ADDED + 500, 0.0)
    assert isinstance(decision, Reschedule)
    assert (4, 1) == (decision.polls, decision.transient_errors)


def test_transient_errors_back_off_without_counting_polls() -> None:
    """Transient failures double their delay, do not count as polls and reset on success."""
    delays = []
    state = job(polls=2)
    for _ in range(5):
        decision = decide(POLICY, state, Transient(), ADDED + 100, 0.999999)
        assert isinstance(decision, Reschedule)
        delays.append(decision.next_poll_at - (ADDED + 100))
        state = job(polls=decision.polls, transient_errors=decision.transient_errors)
    assert [1, 2, 4, 8, 16] == pytest.approx(delays, rel=1e-3)
    assert 2 == state.polls
    ok = decide(POLICY, state, pending(), ADDED + 130, 0.5)
    assert isinstance(ok, Reschedule)
    assert 0 == ok.transient_errors


def test_retry_after_wins() -> None:
    """The server's Retry-After is never undercut by our own backoff."""
    decision = decide(POLICY, job(), Transient(retry_after=42.0), ADDED + 10, 0.0)
    assert isinstance(decision, Reschedule)
    assert ADDED + 52 == decision.next_poll_at


def test_transient_delay_is_capped() -> None:
    """The transient backoff never exceeds max_interval, even after many failures."""
    assert 300 >= transient_delay(POLICY, 200, 0.999)


def test_refused_key_slows_down() -> None:
    """A refused key waits about max_interval and does not count polls."""
    decision = decide(POLICY, job(polls=1), Refused(), ADDED + 10, 0.5)
    assert Reschedule(ADDED + 310, 1, 0, None) == decision


def test_transient_past_deadline_times_out() -> None:
    """When the deadline passes during an outage the job times out with its last snapshot."""
    last = Snapshot(status="pending")
    decision = decide(POLICY, job(polls=5, snapshot=last), Transient(), ADDED + 3601, 0.5)
    assert Finish(Outcome.TIMED_OUT, 5, last) == decision


def test_retry_after_is_clamped_to_max_interval() -> None:
    """A Retry-After longer than max_interval waits max_interval: no header leaves a job unwatched for hours."""
    decision = decide(POLICY, job(), Transient(retry_after=99_999.0), ADDED + 10, 0.0)
    assert isinstance(decision, Reschedule)
    assert ADDED + 310 == decision.next_poll_at


def test_retry_after_never_past_deadline() -> None:
    """A Retry-After reaching past the deadline polls at the deadline."""
    decision = decide(POLICY, job(), Transient(retry_after=200.0), ADDED + 3500, 0.0)
    assert isinstance(decision, Reschedule)
    assert ADDED + 3600 == decision.next_poll_at


def test_refused_key_waits_at_most_max_interval() -> None:
    """The refused-key wait jitters below max_interval, never above it."""
    decision = decide(POLICY, job(), Refused(), ADDED + 10, 0.999)
    assert isinstance(decision, Reschedule)
    assert ADDED + 310 == decision.next_poll_at


def test_not_found_grace_longer_than_deadline_stops_at_deadline() -> None:
    """With a grace longer than the deadline, a 404 is polled at the deadline and then timed out."""
    policy = PollPolicy(min_interval=5, max_interval=300, deadline=100, not_found_grace=1000)
    decision = decide(policy, job(), NotFound(), ADDED + 98, 0.5)
    assert Reschedule(ADDED + 100, 1, 0, None) == decision
    assert Finish(Outcome.TIMED_OUT, 2, None) == decide(policy, job(polls=1), NotFound(), ADDED + 100, 0.5)


observations = st.one_of(
    st.sampled_from(["pending", "processing", "completed"]).map(lambda status: Seen(Snapshot(status=status))),
    st.just(NotFound()),
    st.just(Refused()),
    st.builds(Transient, st.none() | st.just(math.nan) | st.floats(min_value=-10, max_value=1e9)),
)


@settings(max_examples=500)
@given(
    seen=observations,
    age=st.floats(min_value=0, max_value=4000),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
    streak=st.integers(0, 60),
    shown=st.booleans(),
    learned=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_every_wait_is_bounded(
    seen: Observation, age: float, draw: float, streak: int, shown: bool, learned: float | None
) -> None:
    """Every reschedule is ahead of now, at most max_interval ahead, never past the deadline; a running job waits at least min_interval unless the deadline comes first; whatever the learned wait."""
    now = ADDED + age
    state = job(transient_errors=streak, snapshot=Snapshot(status="pending") if shown else None)
    decision = decide(POLICY, state, seen, now, draw, learned_wait=learned)
    if isinstance(decision, Finish):
        return
    deadline_at = ADDED + POLICY.deadline
    wait = decision.next_poll_at - now
    assert 0 < wait <= POLICY.max_interval
    assert decision.next_poll_at <= deadline_at
    if isinstance(seen, Seen | Refused):
        assert wait >= POLICY.min_interval or decision.next_poll_at == deadline_at


# --- a learned wait ---------------------------------------------------------------------------------


def test_a_learned_wait_replaces_the_proportional_one() -> None:
    """After an answer that says running, the learned wait (jittered) is the wait; without one, growth x age."""
    assert ADDED + 100 + 42 == decide(POLICY, job(), pending(), ADDED + 100, 0.5, learned_wait=42.0).next_poll_at
    assert ADDED + 100 + 42 * 1.1 == pytest.approx(
        decide(POLICY, job(), pending(), ADDED + 100, 1.0, learned_wait=42.0).next_poll_at)
    assert ADDED + 100 + 20 == decide(POLICY, job(), pending(), ADDED + 100, 0.5).next_poll_at


def test_learn_off_ignores_the_learned_wait() -> None:
    """polling.learn: false keeps today's proportional policy even when a learned wait is offered."""
    policy = replace(POLICY, learn=False)
    assert ADDED + 120 == decide(policy, job(), pending(), ADDED + 100, 0.5, learned_wait=42.0).next_poll_at
    assert ADDED + 2 == first_poll_at(policy, ADDED, 30.0)


@pytest.mark.parametrize(("learned", "wait"), [(0.5, 5.0), (10_000.0, 300.0), (math.nan, 20.0), (-3.0, 5.0)])
def test_a_learned_wait_is_clamped(learned: float, wait: float) -> None:
    """min_interval and max_interval bound a learned wait; one that is no number falls back to growth x age."""
    assert ADDED + 100 + wait == decide(POLICY, job(), pending(), ADDED + 100, 0.5, learned_wait=learned).next_poll_at


def test_a_learned_wait_keeps_the_deadline_and_the_404_grace() -> None:
    """A long learned wait stops at the deadline, and before SendGrid shows the job, at the end of the grace."""
    near_end = decide(POLICY, job(), pending(), ADDED + 3500, 0.5, learned_wait=250.0)
    assert ADDED + 3600 == near_end.next_poll_at
    grace = decide(POLICY, job(), NotFound(), ADDED + 30, 0.5, learned_wait=250.0)
    assert Reschedule(ADDED + 120, 1, 0, None) == grace


def test_retry_after_still_wins_over_a_learned_wait() -> None:
    """A transient failure keeps its own backoff and the server's Retry-After; the learned wait does not apply."""
    decision = decide(POLICY, job(), Transient(retry_after=90.0), ADDED + 100, 0.5, learned_wait=7.0)
    assert Reschedule(ADDED + 190, 0, 1, None) == decision
    refused = decide(POLICY, job(), Refused(), ADDED + 100, 1.0, learned_wait=7.0)
    assert ADDED + 400 == refused.next_poll_at


def test_first_poll_with_a_learned_wait() -> None:
    """A learned first wait is used between initial_delay and the end of the 404 grace (and max_interval)."""
    assert ADDED + 30 == first_poll_at(POLICY, ADDED, 30.0)
    assert ADDED + 2 == first_poll_at(POLICY, ADDED, 0.5)
    assert ADDED + 120 == first_poll_at(POLICY, ADDED, 1000.0)
    assert ADDED + 2 == first_poll_at(POLICY, ADDED, math.nan)


def test_terminal_statuses_of_another_kind_of_job() -> None:
    """decide ends a job on the statuses its caller names: an export's "ready" is terminal, "completed" is not."""
    export_ends = {"ready": Outcome.COMPLETED, "failure": Outcome.FAILED}
    ready = Seen(Snapshot(status="Ready"))
    assert Finish(Outcome.COMPLETED, 1, ready.snapshot) == decide(POLICY, job(), ready, ADDED + 50, 0.5,
                                                                  terminal=export_ends)
    assert isinstance(decide(POLICY, job(), ready, ADDED + 50, 0.5), Reschedule)
    done = Seen(Snapshot(status="completed"))
    assert isinstance(decide(POLICY, job(), done, ADDED + 50, 0.5, terminal=export_ends), Reschedule)


@pytest.mark.parametrize(
    ("raw", "target"),
    [(0.1, Target(0.1)), (1, Target(1.0)), ("30s", Target(30.0, share=False)), ("2m", Target(120.0, share=False)),
     ("250ms", Target(0.25, share=False)), (" 1.5 h ", Target(5400.0, share=False))],
)
def test_target_delay_setting(raw: object, target: Target) -> None:
    """A bare number up to 1 is a share of the run time; a string with a unit is seconds."""
    assert target == parse_target_delay(raw)


@pytest.mark.parametrize("raw", [0, -0.1, 1.5, 30, math.nan, math.inf, True, "30", "0s", "2d", "fast", None, [0.1],
                                 "x" * 500])
def test_target_delay_refuses_the_ambiguous(raw: object) -> None:
    """30 (a share of 3000%? 30 s?) is refused with a hint, as is any other non-setting, in one short line."""
    with pytest.raises(ValueError, match=r"share in \(0, 1\]|must be in") as caught:
        parse_target_delay(raw)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 160
