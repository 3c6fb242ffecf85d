"""The request budget shared by several processes through Redis: `RedisRateBudget` and its Lua script."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from watcher.clock import Clock
from watcher.errors import StoreUnavailable
from watcher.ratelimit.budget import _TICKET, MAX_EARLY, SAME_WINDOW, WAIT_SLICE
from watcher.ratelimit.signals import DEFAULT_WINDOW, RateSignal, read_signal

log = structlog.get_logger("watcher.ratelimit")

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
