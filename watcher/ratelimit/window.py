"""The one rate-window rule, as pure functions on a frozen `WindowState`.

Both budgets keep this state: `LocalRateBudget` in memory, calling `learn`,
`finish` and `take` as answers, releases and acquires happen; `RedisRateBudget`
in one Redis hash, through the Lua script in `_lua.py`, which mirrors this
module function by function with the same names and applies one `step` per
call. `tests/test_ratelimit_parity.py` holds the two to the same answers.

Rules kept here, once:

* `learn`: an answer's Remaining, less the requests sent after it, is an
  estimate of the window. Within one window the lowest estimate wins (answers
  overtaking each other each miss a request the other counted); a later window
  replaces it and measures the window's length; an earlier one replaces it only
  when it answers a newer request than any seen (our guess of the reset ran long).
  A block (429) keeps the latest end; the newest Limit wins.
* `roll`: when the window ends, the next one holds Limit less the requests sent
  during the window that ended and not finished yet (they may reach the server
  after its reset). A request counts against one next window only: one that never
  finishes (a killed replica) must not shrink every later window.
* `take`: a request leaves when no block, no empty window, no max_rate spacing
  (GCRA) and no probe in flight holds it.
* Probing: until an answer shows the limits, one request at a time finds them
  out. A block that was clamped to `max_wait` (a suspicious header) starts a new
  probe: after it, one request goes first before the others.

Where the three former copies (the local budget, the Lua script, the shared
budget's merge helpers) disagreed, the rule now says:

* A request shrinks the next window while it has not finished: the local budget
  counted every request in flight however old (one slow request shrank every
  window), the script every request sent after the newest answer (one that failed
  at once, without an answer, still shrank the next window). Now: sent during
  the window that ended and not released yet, counted once.
* A probe released without an answer lets the next request probe at once (the
  local rule); the script waited PROBE_TIMEOUT because it never heard of
  releases. Replicas now send their releases; the timeout stays for a replica
  that dies holding the probe.
* `seen` moves only with answers that estimate the window (the local rule): the
  script also moved it on bare answers, which then looked "newer" than an
  estimate they never gave.
* Pending answers are not merged before the script sees them: the merge dropped
  an earlier-window answer to a newer request that `learn` keeps, and took the
  sequence number of one answer with the Limit of another. Each answer is now
  learned in the order it arrived, as the local budget does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from watcher.ratelimit.budget import SAME_WINDOW
from watcher.ratelimit.signals import DEFAULT_WINDOW, RateSignal

#: A probe whose answer never came lets another request probe after this.
PROBE_TIMEOUT = 5.0


class WindowState(NamedTuple):
    """What a budget knows; absolute times in epoch seconds, sequence numbers count requests.

    The three records made per request (this, Observation, Answer) are NamedTuples: as
    immutable as frozen dataclasses, and `_replace` costs a sixth of `dataclasses.replace`,
    which was a tenth of the client CPU of a poll (three copies per request)."""

    tat: float = 0.0  # GCRA theoretical arrival time
    blocked_until: float = 0.0
    limit: float | None = None
    remaining: float | None = None  # set only together with reset_at
    reset_at: float | None = None
    window: float = DEFAULT_WINDOW
    issued: int = 0  # sequence number of the newest request
    seen: int = 0  # newest request whose answer gave a window estimate
    rolled: int = 0  # `issued` when the window last rolled
    open: int = 0  # requests sent since the last roll and not finished
    known: bool = False  # an answer has shown the limits; False: probe
    probe_from: int = 0  # only answers to requests after this one end the probe
    probe_until: float = 0.0  # a probe is in flight until then


class Observation(NamedTuple):
    """One answer as the rule reads it; `seq` None when observed outside the acquiring task."""

    limit: float | None = None
    blocked_until: float | None = None
    remaining: float | None = None
    reset_at: float | None = None
    seq: int | None = None
    later: int = 0  # requests sent after it, when `seq` is None
    probe: bool = False  # the answer asked for a wait that was clamped: probe after it


@dataclass(frozen=True, slots=True)
class Params:
    """The fixed settings of one budget."""

    interval: float = 0.0  # 1 / max_rate, 0 for none
    early: float = 0.0  # GCRA slack
    default_window: float = DEFAULT_WINDOW
    same_window: float = SAME_WINDOW
    probe_timeout: float = PROBE_TIMEOUT


class Answer(NamedTuple):
    """Whether a request may leave now; if not, for how long it must wait."""

    granted: bool
    wait: float  # 0 when granted
    probe_out: bool  # waiting for a probe's answer, not for time
    seq: int  # the request's sequence number when granted (the first of `slots`), else 0
    slots: int = 1  # slots granted, numbered seq .. seq + slots - 1 (0 when not granted)


def observation(
    signal: RateSignal, seq: int | None, later: int, now: float, max_wait: float
) -> tuple[Observation, float | None]:
    """The signal as an observation, no wait longer than `max_wait`; and the wait asked when clamped."""
    bound = now + max_wait
    blocked, reset_at = signal.blocked_until, signal.reset_at
    clamped = signal.asked is not None and signal.asked > max_wait
    if blocked is not None and blocked > bound:
        blocked, clamped = bound, True
    if reset_at is not None and reset_at > bound:
        # A far reset is only a wait when the window is empty; otherwise it is just a guess cut short.
        reset_at = bound
        clamped = clamped or (signal.remaining is not None and signal.remaining < 1)
    seen = Observation(signal.limit, blocked, signal.remaining, reset_at, seq, later, clamped)
    return seen, (signal.asked if clamped else None)


def _position(issued: int, seq: int | None, later: int) -> tuple[int, int]:
    """(sequence number, requests sent after it) of the request an answer belongs to."""
    if seq is None or seq < 0 or seq > issued:
        return issued - later, later  # unknown: the oldest request in flight
    return seq, issued - seq


def learn(s: WindowState, o: Observation, now: float, p: Params) -> WindowState:
    """Fold one answer into the state."""
    limit = o.limit if o.limit is not None else s.limit
    blocked = max(s.blocked_until, o.blocked_until) if o.blocked_until is not None else s.blocked_until
    known, probe_from, probe_until = s.known, s.probe_from, s.probe_until
    if o.seq is None or o.seq > probe_from:
        known = True  # the probe's answer, or a newer one
    if o.probe:
        known, probe_from, probe_until = False, s.issued, 0.0
    remaining, reset_at, window, seen = s.remaining, s.reset_at, s.window, s.seen
    o_reset = o.reset_at
    if o.remaining is not None and o_reset is None:
        o_reset = reset_at if reset_at is not None and reset_at > now else now + p.default_window
    if o.remaining is not None and o_reset is not None and o_reset > now:
        seq, later = _position(s.issued, o.seq, o.later)
        candidate = max(0.0, o.remaining - later)
        if reset_at is None or remaining is None or o_reset - reset_at >= p.same_window:
            if reset_at is not None and o_reset - reset_at >= p.same_window:
                window = o_reset - reset_at  # a later window: measure its length
            remaining, reset_at = candidate, o_reset
        elif reset_at - o_reset < p.same_window:
            remaining = min(remaining, candidate)  # same window: the lowest estimate is the safe one
        elif seq > seen:
            remaining, reset_at = candidate, o_reset  # our guess of the reset ran long
        seen = max(seen, seq)
    return s._replace(
        limit=limit, blocked_until=blocked, known=known, probe_from=probe_from, probe_until=probe_until,
        remaining=remaining, reset_at=reset_at, window=window, seen=seen,
    )  # fmt: skip


def finish(s: WindowState, seq: int | None) -> WindowState:
    """A request ended (answered or failed); `seq` None when released outside the acquiring task."""
    counted = s.open > 0 and (seq is None or seq > s.rolled)
    probe_ended = not s.known and s.probe_until > 0 and (seq is None or seq > s.probe_from)
    if not counted and not probe_ended:
        return s
    return s._replace(open=s.open - 1 if counted else s.open, probe_until=0.0 if probe_ended else s.probe_until)


def roll(s: WindowState, now: float) -> WindowState:
    """Start the next window once the current one has ended."""
    if s.reset_at is None or now < s.reset_at:
        return s
    if s.limit is None:
        # Nothing says how big the next window is: find out again.
        return s._replace(remaining=None, reset_at=None, known=False, probe_from=s.issued, probe_until=0.0)
    reset_at = s.reset_at + s.window
    if reset_at <= now:
        reset_at = now + s.window  # guess the window's end until an answer tells
    return s._replace(remaining=max(0.0, s.limit - s.open), reset_at=reset_at, rolled=s.issued, open=0)


def delay(s: WindowState, now: float, p: Params) -> tuple[float, bool]:
    """Seconds before a request may leave (<= 0: now), and whether a probe in flight holds it."""
    wait = s.blocked_until - now
    if s.remaining is not None and s.remaining < 1 and s.reset_at is not None:
        wait = max(wait, s.reset_at - now)
    if p.interval > 0:
        wait = max(wait, s.tat - p.early - now)
    probe_out = not s.known and s.probe_until > now
    if probe_out:
        wait = max(wait, s.probe_until - now)
    return wait, probe_out


def take(s: WindowState, now: float, p: Params) -> tuple[WindowState, Answer]:
    """Roll the window, then take a slot or say how long to wait."""
    s = roll(s, now)
    wait, probe_out = delay(s, now, p)
    if wait > 0:
        return s, Answer(False, wait, probe_out, 0)
    issued = s.issued + 1
    s = s._replace(
        issued=issued,
        open=s.open + 1,
        tat=max(s.tat, now) + p.interval if p.interval > 0 else s.tat,
        remaining=s.remaining - 1 if s.remaining is not None else None,
        probe_until=now + p.probe_timeout if not s.known else s.probe_until,
    )
    return s, Answer(True, 0.0, False, issued)


def take_many(s: WindowState, now: float, p: Params, want: int) -> tuple[WindowState, Answer]:
    """`take` up to `want` times at `now`, stopping at the first refusal: the slots are exactly
    those `want` requests arriving at once would get one by one (so a probe, the window's
    remaining, a block and max_rate's spacing bound a batch as they bound single requests)."""
    s, first = take(s, now, p)
    count = 1 if first.granted else 0
    while first.granted and count < want:
        s, more = take(s, now, p)
        if not more.granted:
            break
        count += 1
    return s, first._replace(slots=count)


def step(
    s: WindowState,
    now: float,
    p: Params,
    observations: tuple[Observation, ...] = (),
    finished: tuple[int | None, ...] = (),
    *,
    acquire: int,
) -> tuple[WindowState, Answer | None]:
    """What one call of the Lua script does: learn, finish, then take up to `acquire` slots (0: only roll)."""
    for seen in observations:
        s = learn(s, seen, now, p)
    for seq in finished:
        s = finish(s, seq)
    if acquire > 0:
        return take_many(s, now, p, acquire)
    return roll(s, now), None
