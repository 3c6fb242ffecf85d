"""The SendGrid request budget: one process (`LocalRateBudget`) or several sharing Redis.

Two limits apply at once. `max_rate` is our own ceiling, kept as GCRA (an evenly
spaced schedule with a little slack). SendGrid's `X-RateLimit-*` headers are the
server's: a local estimate of the requests left in the current window is
decremented on every acquire, so requests already in flight count before their
answers arrive. A 429's `Retry-After` blocks everyone until then.

Every answer is tied to the request that produced it through a sequence number
kept in a context variable set by `acquire` (the client acquires and observes in
one task). An answer's `Remaining` then means "Remaining minus the requests sent
after this one"; within one window the lowest such estimate wins, whatever order
the responses arrive in, and an answer from a later window starts afresh. Until
a first answer arrives, one request at a time probes, so a cold start does not
fire max_concurrency requests into an unknown limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from watcher.clock import Clock
from watcher.errors import StoreUnavailable

log = structlog.get_logger("watcher.ratelimit")

#: `X-RateLimit-Reset` above this is a Unix epoch, otherwise seconds from now.
EPOCH_THRESHOLD = 1e9
#: No header can make us wait longer than this: a hostile or broken value must not stall us.
MAX_WAIT = 3600.0
#: Assumed window length when the headers do not tell (Remaining without Reset, bare 429).
DEFAULT_WINDOW = 1.0
#: GCRA slack: a request may leave this early, so timer overshoot does not lower the rate.
MAX_EARLY = 0.05
#: Resets closer than this belong to one window (a delta Reset moves by up to 1 s).
SAME_WINDOW = 0.999
#: A sleeping waiter wakes at least this often to see what newer answers taught us.
WAIT_SLICE = 0.25

# (budget id, sequence number) of the request the current task acquired last.
_TICKET: ContextVar[tuple[int, int] | None] = ContextVar("watcher_rate_ticket", default=None)


class RateBudget(Protocol):
    """The request budget every SendGrid request goes through."""

    async def acquire(self) -> None:
        """Wait until one request may leave."""

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        """Learn from the headers and status of a response (any status)."""

    def release(self) -> None:
        """Called once after the response (or failure) of an acquired request."""

    @property
    def remaining(self) -> float | None:
        """Requests left in the current window as last known; None when unknown."""


# --- reading the headers ----------------------------------------------------------


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def reset_seconds(value: str | None, now: float) -> float | None:
    """Seconds until an `X-RateLimit-Reset` value: an epoch above 10^9, else a delta."""
    number = _number(value)
    if number is None:
        return None
    seconds = number - now if number > EPOCH_THRESHOLD else number
    return min(max(0.0, seconds), MAX_WAIT)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds until a `Retry-After` value: delta seconds or an HTTP date."""
    if value is None:
        return None
    seconds = _number(value)
    if seconds is None:
        try:
            seconds = parsedate_to_datetime(value.strip()).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(0.0, seconds), MAX_WAIT)


@dataclass(frozen=True, slots=True)
class RateSignal:
    """What one response says about the budget; absolute times in epoch seconds."""

    limit: float | None = None
    remaining: float | None = None
    reset_at: float | None = None
    blocked_until: float | None = None


#: What an answer without rate-limit headers says (most answers of a server that sends none).
_NO_SIGNAL = RateSignal()
_CASE_INSENSITIVE = (CIMultiDictProxy, CIMultiDict)


def _last(headers: CIMultiDictProxy[str] | CIMultiDict[str], name: str) -> str | None:
    """The last value of a header, as a {lower-cased name: value} dict of the headers keeps it."""
    values = headers.getall(name, None)
    return values[-1] if values else None


def read_signal(headers: Mapping[str, str], status: int, now: float) -> RateSignal:
    """Turn rate-limit headers (any case) into a RateSignal."""
    if isinstance(headers, _CASE_INSENSITIVE):
        # aiohttp's headers: case-insensitive lookups, no lower-cased copy of every header.
        limit_text = _last(headers, "x-ratelimit-limit")
        remaining_text = _last(headers, "x-ratelimit-remaining")
        reset_text = _last(headers, "x-ratelimit-reset")
        if limit_text is None and remaining_text is None and reset_text is None and status not in (429, 503):
            return _NO_SIGNAL
        retry_text = _last(headers, "retry-after") if status in (429, 503) else None
    else:
        lowered = {name.lower(): value for name, value in headers.items()}
        limit_text = lowered.get("x-ratelimit-limit")
        remaining_text = lowered.get("x-ratelimit-remaining")
        reset_text = lowered.get("x-ratelimit-reset")
        retry_text = lowered.get("retry-after")
    limit = _number(limit_text)
    remaining = _number(remaining_text)
    reset = reset_seconds(reset_text, now)
    reset_at = None if reset is None else now + reset
    if status in (429, 503):
        retry_after = retry_after_seconds(retry_text, now)
        if retry_after is not None:
            # Retry-After wins: the window headers of this answer are not used.
            return RateSignal(limit=limit, blocked_until=now + retry_after)
        if status == 429:
            # Over the limit with no hint: wait for the reset, or a short pause.
            blocked = reset_at if reset_at is not None and reset_at > now else now + DEFAULT_WINDOW
            return RateSignal(limit=limit, blocked_until=blocked)
    return RateSignal(limit=limit, remaining=remaining, reset_at=reset_at)


# --- one process -------------------------------------------------------------------


class LocalRateBudget:
    """The budget of one process: O(1) per request, FIFO waiters, no tasks."""

    def __init__(self, *, max_rate: float | None, clock: Clock) -> None:
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be positive or None")
        self._clock = clock
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._early = min(self._interval, MAX_EARLY)
        # asyncio.Lock wakes waiters in FIFO order and survives cancellation.
        self._gate = asyncio.Lock()
        self._next_at = 0.0  # GCRA theoretical arrival time
        self._blocked_until = 0.0
        self._limit: float | None = None
        self._remaining: float | None = None  # set only together with _reset_at
        self._reset_at: float | None = None
        self._window = DEFAULT_WINDOW
        self._issued = 0
        self._seen = 0  # newest request whose answer gave a window estimate
        self._in_flight = 0
        # Until a first answer shows whether and how SendGrid limits us, one request
        # at a time finds out: a blind burst of max_concurrency would earn 429s.
        self._probing = True
        self._answered = asyncio.Event()
        self._queued = 0  # callers holding or waiting for the gate
        self._id = id(self)

    def __repr__(self) -> str:
        return f"LocalRateBudget(remaining={self._remaining}, in_flight={self._in_flight})"

    @property
    def remaining(self) -> float | None:
        return self._remaining

    @property
    def in_flight(self) -> int:
        """Requests acquired and not released yet."""
        return self._in_flight

    async def acquire(self) -> None:
        now = self._clock.now()
        if self._may_skip_gate(now):
            self._take(now)
            return
        self._queued += 1
        try:
            async with self._gate:
                while True:
                    if self._probing and self._in_flight:
                        self._answered.clear()  # only the gate holder waits on it
                        await self._answered.wait()
                        continue
                    delay = self._delay(self._clock.now())
                    if delay <= 0:
                        break
                    await self._clock.sleep(min(delay, WAIT_SLICE))
                self._take(self._clock.now())
        finally:
            self._queued -= 1

    def _may_skip_gate(self, now: float) -> bool:
        """Whether a caller may leave at once, without queueing on the gate.

        The gate (asyncio.Lock) hands itself on to one waiter per event-loop iteration,
        so once callers had queued (behind the first probe, say), every later caller
        joined the queue and requests left one per iteration for as long as the load
        lasted. A caller that may leave now, and leaves enough budget for every queued
        caller, goes straight out: it never takes a slot a queued caller could use, so
        callers waiting for budget still leave in the order they arrived.
        """
        if self._probing:
            return not self._queued and not self._in_flight and self._delay(now) <= 0
        if self._delay(now) > 0:
            return False
        if not self._queued:
            return True
        if self._interval:
            return False  # max_rate spaces every request: a queued caller is owed the next slot
        return self._remaining is None or self._remaining - self._queued >= 1

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._answered.set()  # a probe that failed lets the next caller probe

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        now = self._clock.now()
        signal = read_signal(headers, status, now)
        self._probing = False
        self._answered.set()
        if signal.limit is not None:
            self._limit = signal.limit
        if signal.blocked_until is not None:
            self._blocked_until = max(self._blocked_until, signal.blocked_until)
        if signal.remaining is None:
            return
        reset_at = signal.reset_at
        if reset_at is None:
            known = self._reset_at
            reset_at = known if known is not None and known > now else now + DEFAULT_WINDOW
        if reset_at <= now:
            return  # an answer from a window that is already over
        seq, later = self._position()
        self._learn(reset_at, max(0.0, signal.remaining - later), seq)

    def _learn(self, reset_at: float, remaining: float, seq: int) -> None:
        """Fold one answer's estimate of the window into ours."""
        current = self._reset_at
        if current is None or self._remaining is None or reset_at - current >= SAME_WINDOW:
            if current is not None and reset_at - current >= SAME_WINDOW:
                self._window = reset_at - current  # a later window: measure its length
            self._remaining, self._reset_at = remaining, reset_at
        elif current - reset_at < SAME_WINDOW:
            # Same window: answers overtaking each other can each miss a request the
            # other counted, so the lowest estimate is the safe one.
            self._remaining = min(self._remaining, remaining)
        elif seq > self._seen:
            self._remaining, self._reset_at = remaining, reset_at  # our guess ran long
        self._seen = max(self._seen, seq)

    def _position(self) -> tuple[int, int]:
        """(sequence number, requests sent after it) of the request this task answers."""
        ticket = _TICKET.get()
        if ticket is not None and ticket[0] == id(self) and ticket[1] <= self._issued:
            return ticket[1], self._issued - ticket[1]
        # Observed outside the acquiring task: assume the oldest request in flight.
        later = max(0, self._in_flight - 1)
        return self._issued - later, later

    def _delay(self, now: float) -> float:
        """Seconds before the next request may leave (<= 0: now)."""
        self._roll_window(now)
        delay = self._blocked_until - now
        if self._remaining is not None and self._remaining < 1 and self._reset_at is not None:
            delay = max(delay, self._reset_at - now)
        if self._interval:
            delay = max(delay, self._next_at - self._early - now)
        return delay

    def _roll_window(self, now: float) -> None:
        if self._reset_at is None or now < self._reset_at:
            return
        if self._limit is None:
            self._remaining = self._reset_at = None
            self._probing = True
            return
        # A fresh window holds `limit`, less the requests still in flight: those that
        # reach SendGrid after its reset count there. Guess the window's end until told.
        self._remaining = max(0.0, self._limit - self._in_flight)
        self._reset_at += self._window
        if self._reset_at <= now:
            self._reset_at = now + self._window

    def _take(self, now: float) -> None:
        self._issued += 1
        self._in_flight += 1
        _TICKET.set((self._id, self._issued))
        if self._interval:
            self._next_at = max(self._next_at, now) + self._interval
        if self._remaining is not None:
            self._remaining -= 1


# --- several processes -------------------------------------------------------------

# One atomic step: learn what this replica observed, roll the window, then take a
# slot or say how long to wait. Same rules as LocalRateBudget, state in one hash.
_ACQUIRE_LUA = """
local key = KEYS[1]
local function num(v)
  if v == nil or v == false or v == '' then return nil end
  return tonumber(v)
end
local function fmt(x) return string.format('%.6f', x) end
local now, interval, early = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, default_window = tonumber(ARGV[4]), tonumber(ARGV[5])
local s = redis.call('HMGET', key, 'tat', 'blocked_until', 'limit', 'remaining', 'reset_at',
                     'window', 'issued', 'seen', 'known', 'probe_until', 'rolled')
local tat, blocked, limit = num(s[1]) or 0, num(s[2]) or 0, num(s[3])
local rolled = num(s[11]) or 0
local remaining, reset_at, window = num(s[4]), num(s[5]), num(s[6]) or default_window
local issued, seen, known, probe_until = num(s[7]) or 0, num(s[8]) or 0, num(s[9]), num(s[10]) or 0
local answered = num(ARGV[13])
if answered then known = 1 end

local o_limit, o_blocked = num(ARGV[6]), num(ARGV[7])
if o_limit then limit = o_limit end
if o_blocked and o_blocked > blocked then blocked = o_blocked end
local o_remaining, o_reset = num(ARGV[8]), num(ARGV[9])
if o_remaining and not o_reset then
  if reset_at and reset_at > now then o_reset = reset_at else o_reset = now + default_window end
end
if o_remaining and o_reset > now then
  local seq, later = num(ARGV[10]), num(ARGV[11]) or 0
  if seq == nil or seq < 0 or seq > issued then seq = issued - later else later = issued - seq end
  local candidate, same = math.max(0, o_remaining - later), tonumber(ARGV[16])
  if not reset_at or not remaining or o_reset - reset_at >= same then
    if reset_at and o_reset - reset_at >= same then window = o_reset - reset_at end
    remaining, reset_at = candidate, o_reset
  elseif reset_at - o_reset < same then
    remaining = math.min(remaining, candidate)
  elseif seq > seen then
    remaining, reset_at = candidate, o_reset
  end
  if seq > seen then seen = seq end
end
-- `seen` ends up as the newest request answered, even from an ended window.
if answered and answered > seen then seen = answered end

if reset_at and now >= reset_at then
  if limit then
    -- Requests sent after the freshest answer may land in the new window, but only
    -- those sent during the window that just ended: an older request that never got
    -- an answer (a timeout, a killed replica) must not shrink every later window.
    remaining = math.max(0, limit - (issued - math.max(seen, rolled)))
    rolled = issued
    reset_at = reset_at + window
    if reset_at <= now then reset_at = now + window end
  else
    remaining, reset_at, known = nil, nil, nil
  end
end
-- Nothing known: one probe at a time until an answer arrives (or the probe times out).
local probing = not known and not remaining

local wait = blocked - now
if remaining and remaining < 1 and reset_at then wait = math.max(wait, reset_at - now) end
if interval > 0 then wait = math.max(wait, tat - early - now) end
if probing and probe_until > now then wait = math.max(wait, tonumber(ARGV[14])) end
local granted, value = 0, ''
if ARGV[12] == '1' then
  if wait > 0 then
    value = fmt(wait)
  else
    granted = 1
    issued = issued + 1
    value = tostring(issued)
    if interval > 0 then tat = math.max(tat, now) + interval end
    if remaining then remaining = remaining - 1 end
    if probing then probe_until = now + tonumber(ARGV[15]) end
  end
end

redis.call('HSET', key, 'tat', fmt(tat), 'blocked_until', fmt(blocked), 'window', fmt(window),
           'issued', tostring(issued), 'seen', tostring(seen), 'probe_until', fmt(probe_until),
           'rolled', tostring(rolled))
if limit then redis.call('HSET', key, 'limit', fmt(limit)) end
if known then redis.call('HSET', key, 'known', '1') else redis.call('HDEL', key, 'known') end
if remaining and reset_at then
  redis.call('HSET', key, 'remaining', fmt(remaining), 'reset_at', fmt(reset_at))
else
  redis.call('HDEL', key, 'remaining', 'reset_at')
end
redis.call('PEXPIRE', key, ttl)
local shown = ''
if remaining then shown = fmt(remaining) end
return {granted, value, shown}
"""

#: The shared state expires a day after its last use.
_STATE_TTL_MS = 86_400_000
#: While another replica probes, ask again this often.
PROBE_POLL = 0.05
#: A probe whose answer never reached Redis lets another replica probe after this.
PROBE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class _Pending:
    """Observations not yet written to Redis, merged into one."""

    signal: RateSignal
    seq: int | None  # None: observed outside the acquiring task
    later: int


def _merge(old: _Pending | None, new: _Pending) -> _Pending:
    """Two observations as one: the longest block, the newest limit, the tighter window."""
    if old is None:
        return new
    blocked = [b for b in (old.signal.blocked_until, new.signal.blocked_until) if b is not None]
    keep = new if _tighter(new, old) else old
    signal = replace(
        keep.signal,
        limit=new.signal.limit if new.signal.limit is not None else old.signal.limit,
        blocked_until=max(blocked) if blocked else None,
    )
    return _Pending(signal, keep.seq, keep.later)


def _tighter(new: _Pending, old: _Pending) -> bool:
    """Whether `new` says more about the window than `old`, by the rules of _learn."""
    a, b = new.signal, old.signal
    if a.remaining is None or b.remaining is None:
        return b.remaining is None
    if a.reset_at is None or b.reset_at is None or new.seq is None or old.seq is None:
        return True  # not comparable: the newer one
    if abs(a.reset_at - b.reset_at) >= SAME_WINDOW:
        return a.reset_at > b.reset_at  # a later window
    # One window: Remaining less the requests sent after it, compared at one moment.
    return a.remaining + new.seq <= b.remaining + old.seq


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class RedisRateBudget:
    """The budget shared by every replica through one Redis hash and one Lua script.

    `observe` is synchronous, so what it learns is written with this replica's
    next `acquire`; a block (429) is written at once by a short-lived task.
    Times come from `clock`: replicas are assumed to keep NTP time, as SendGrid's
    epoch resets require anyway.
    """

    def __init__(
        self,
        client_or_url: aioredis.Redis | str,
        *,
        key: str,
        max_rate: float | None,
        clock: Clock,
    ) -> None:
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be positive or None")
        if isinstance(client_or_url, str):
            self._redis = aioredis.Redis.from_url(client_or_url, socket_connect_timeout=2.0, socket_timeout=2.0)
            self._owns_client = True
        else:
            self._redis = client_or_url
            self._owns_client = False
        self._script = self._redis.register_script(_ACQUIRE_LUA)
        self._key = key
        self._clock = clock
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._early = min(self._interval, MAX_EARLY)
        self._gate = asyncio.Lock()
        self._pending: _Pending | None = None
        self._remaining: float | None = None
        self._in_flight = 0
        # Newest request answered since Redis last heard (0: an answer outside acquire).
        self._answered: int | None = None
        self._ever_answered = False
        self._flush_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RedisRateBudget(key={self._key!r}, remaining={self._remaining})"

    @property
    def remaining(self) -> float | None:
        return self._remaining

    async def acquire(self) -> None:
        async with self._gate:
            while True:
                granted, value = await self._call(take=True)
                if granted:
                    self._in_flight += 1
                    _TICKET.set((id(self), int(value)))
                    return
                await self._clock.sleep(min(value, WAIT_SLICE))

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        signal = read_signal(headers, status, self._clock.now())
        ticket = _TICKET.get()
        seq = ticket[1] if ticket is not None and ticket[0] == id(self) else None
        self._answered = max(self._answered or 0, seq or 0)
        if not self._ever_answered:
            self._ever_answered = True
            self._start_flush()  # ends the probe for every replica
        if signal == RateSignal():
            return
        if seq is not None:
            pending = _Pending(signal, seq, 0)
        else:
            pending = _Pending(signal, None, max(0, self._in_flight - 1))
        self._pending = _merge(self._pending, pending)
        if signal.blocked_until is not None:
            self._start_flush()

    async def flush(self) -> None:
        """Write what this replica observed to Redis now; raises StoreUnavailable."""
        if self._pending is not None or self._answered is not None:
            await self._call(take=False)

    async def aclose(self) -> None:
        """Stop the background flush and close the Redis client if this budget made it."""
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        if self._owns_client:
            await self._redis.aclose()

    def _start_flush(self) -> None:
        if self._flush_task is not None and not self._flush_task.done():
            return  # the running flush or the next acquire carries it
        try:
            self._flush_task = asyncio.get_running_loop().create_task(self._quiet_flush())
        except RuntimeError:
            self._flush_task = None  # no loop: the next acquire carries it

    async def _quiet_flush(self) -> None:
        try:
            await self.flush()
        except StoreUnavailable:
            log.debug("ratelimit.flush_failed", key=self._key)

    async def _call(self, *, take: bool) -> tuple[bool, float]:
        """Run the script once; (True, sequence number) or (False, seconds to wait)."""
        pending, self._pending = self._pending, None
        answered, self._answered = self._answered, None
        signal = pending.signal if pending is not None else RateSignal()
        seq = "" if pending is None or pending.seq is None else str(pending.seq)
        args = [
            _arg(self._clock.now()), _arg(self._interval), _arg(self._early),
            str(_STATE_TTL_MS), _arg(DEFAULT_WINDOW),
            _arg(signal.limit), _arg(signal.blocked_until),
            _arg(signal.remaining), _arg(signal.reset_at),
            seq, str(pending.later if pending else 0), "1" if take else "0",
            "" if answered is None else str(answered),
            _arg(PROBE_POLL), _arg(PROBE_TIMEOUT), _arg(SAME_WINDOW),
        ]  # fmt: skip
        try:
            reply = await self._script(keys=[self._key], args=args)
        except BaseException as exc:
            if answered is not None:
                self._answered = max(self._answered or 0, answered)
            if pending is not None:
                # Keep what we learned for the next attempt, merged under newer news;
                # applying one observation twice changes nothing.
                self._pending = _merge(pending, self._pending) if self._pending else pending
            if isinstance(exc, redis.exceptions.RedisError | OSError):
                name = type(exc).__name__
                raise StoreUnavailable(f"rate budget store unreachable ({name})") from exc
            raise
        granted, value, shown = (_text(part) for part in reply)
        self._remaining = float(shown) if shown else None
        return granted == "1", float(value) if value else 0.0
