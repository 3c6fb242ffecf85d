"""The request budget shared by several processes through Redis: `RedisRateBudget`.

The window rule is `window.py`'s, run by its Lua mirror (`_lua.py`) on one hash.

Slots are taken in batches: one script call takes up to `want` slots (`take_many`:
exactly what `want` requests arriving at once would get one by one) and this replica
hands them out locally, so a busy replica makes one round trip per batch, not per
request. The batch grows while its slots are used up before they lapse and shrinks
to what was used when some lapse.

Invariant: a request leaves only on a slot the script took from the shared state, in
the window (`reset_at`) that the script counted it in, and at most SLOT_HOLD seconds
after it was taken; unused slots lapse then and are sent back as finished requests.
So every replica's requests together never exceed what the single-request rule would
grant (the window's remaining, a block, max_rate's spacing, one probe at a time): a
batch only moves the same grants earlier, to one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from watcher.clock import Clock
from watcher.errors import StoreUnavailable
from watcher.ratelimit import _lua
from watcher.ratelimit.bounded import DEFAULT_MAX_WAIT, BoundedWaits
from watcher.ratelimit.budget import _TICKET, MAX_EARLY, SAME_WINDOW, WAIT_SLICE
from watcher.ratelimit.signals import DEFAULT_WINDOW, read_signal
from watcher.ratelimit.window import PROBE_TIMEOUT, Observation

log = structlog.get_logger("watcher.ratelimit")

#: The shared state expires a day after its last use.
_STATE_TTL_MS = 86_400_000
#: While another replica probes, ask again this often.
PROBE_POLL = 0.05
#: A batch of slots lapses this long after it was taken (or at its window's end, if sooner):
#: short, so that a block another replica learns stops this one's requests soon too.
SLOT_HOLD = 0.25
#: The most slots one script call takes (by default).
MAX_BATCH = 32

__all__ = ["MAX_BATCH", "PROBE_POLL", "PROBE_TIMEOUT", "SLOT_HOLD", "RedisRateBudget", "script_args"]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def script_args(
    now: float,
    *,
    interval: float,
    early: float,
    acquire: int,
    observations: list[Observation],
    finished: list[int | None],
) -> list[str]:
    """ARGV of one call of the Lua script (see `_lua`)."""
    args = [
        _arg(now), _arg(interval), _arg(early), _arg(DEFAULT_WINDOW), _arg(SAME_WINDOW), _arg(PROBE_TIMEOUT),
        str(_STATE_TTL_MS), str(int(acquire)), str(len(observations)), str(len(finished)),
    ]  # fmt: skip
    for seen in observations:
        args += [
            _arg(seen.limit), _arg(seen.blocked_until), _arg(seen.remaining), _arg(seen.reset_at),
            "" if seen.seq is None else str(seen.seq), str(seen.later), "1" if seen.probe else "0",
        ]  # fmt: skip
    args += ["" if seq is None else str(seq) for seq in finished]
    return args


class RedisRateBudget:
    """The budget shared by every replica through one Redis hash and one Lua script.

    `observe` and `release` are synchronous, so what they learn is written with
    this replica's next `acquire` (or `flush`); a block (429) and the first answer
    are written at once by a short-lived task. Times come from `clock`: replicas
    are assumed to keep NTP time, as SendGrid's epoch resets require anyway.
    """

    def __init__(
        self,
        client_or_url: aioredis.Redis | str,
        *,
        key: str,
        max_rate: float | None,
        clock: Clock,
        max_wait: float = DEFAULT_MAX_WAIT,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be positive or None")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._max_batch = max_batch
        self._bounded = BoundedWaits(max_wait, key=key)
        if isinstance(client_or_url, str):
            self._redis = aioredis.Redis.from_url(client_or_url, socket_connect_timeout=2.0, socket_timeout=2.0)
            self._owns_client = True
        else:
            self._redis = client_or_url
            self._owns_client = False
        self._script = self._redis.register_script(_lua.SCRIPT)
        self._key = key
        self._clock = clock
        self._interval = 1.0 / max_rate if max_rate else 0.0
        self._early = min(self._interval, MAX_EARLY)
        self._gate = asyncio.Lock()
        # What this replica learned since Redis last heard, in the order it happened.
        self._observations: list[Observation] = []
        self._finished: list[int | None] = []
        self._remaining: float | None = None
        self._in_flight = 0
        self._ever_answered = False
        self._flush_task: asyncio.Task[None] | None = None
        # Slots taken and not handed out yet (sequence numbers), usable until `_slots_until`.
        self._slots: deque[int] = deque()
        self._slots_until = 0.0
        self._handed = 0  # slots of the current batch handed out
        self._lapsed = False  # some slots of the current batch lapsed unused

    def __repr__(self) -> str:
        return f"RedisRateBudget(key={self._key!r}, remaining={self._remaining})"

    @property
    def remaining(self) -> float | None:
        return self._remaining

    @property
    def max_wait(self) -> float:
        """The longest wait any header can impose."""
        return self._bounded.max_wait

    async def acquire(self) -> None:
        if self._hand_out(self._clock.now()):
            return
        async with self._gate:
            while True:
                now = self._clock.now()
                if self._hand_out(now):
                    return
                granted, value, probe_out = await self._call(acquire=True)
                if granted:
                    self._hand_out(self._clock.now())
                    return
                # A probe's answer may come from any replica at any moment: ask again soon.
                await self._clock.sleep(min(value, PROBE_POLL if probe_out else WAIT_SLICE))

    def _hand_out(self, now: float) -> bool:
        """Take the next slot of the batch held, if one is left and has not lapsed."""
        if self._slots and now >= self._slots_until:
            self._drop_slots()
        if not self._slots:
            return False
        seq = self._slots.popleft()
        self._handed += 1
        self._in_flight += 1
        _TICKET.set((id(self), seq))
        return True

    def _drop_slots(self) -> None:
        """Let the unused slots lapse: each is sent back as a request that finished unsent."""
        if self._slots:
            self._lapsed = True
            self._finished.extend(self._slots)
            self._slots.clear()

    def _next_want(self) -> int:
        """A used-up batch doubles the next; one whose slots lapsed asks for what was used."""
        want = self._handed if self._lapsed else min(self._max_batch, 2 * self._handed)
        if self._remaining is not None:
            want = min(want, int(self._remaining // 2))  # leave the other replicas their share
        return max(1, want)

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._finished.append(self._seq())

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        now = self._clock.now()
        signal = read_signal(headers, status, now)
        seq = self._seq()
        later = 0 if seq is not None else max(0, self._in_flight - 1)
        seen = self._bounded.observation(signal, seq, later, now)
        self._observations.append(seen)
        if seen.blocked_until is not None or seen.probe:
            self._drop_slots()  # blocked, or probing again: no request may leave on an earlier grant
        if not self._ever_answered or signal.blocked_until is not None:
            self._ever_answered = True
            self._start_flush()  # ends the probe, or holds every replica, at once

    async def flush(self) -> None:
        """Write what this replica observed to Redis now; raises StoreUnavailable."""
        if self._observations or self._finished:
            await self._call(acquire=False)

    async def aclose(self) -> None:
        """Stop the background flush and close the Redis client if this budget made it."""
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        if self._owns_client:
            await self._redis.aclose()

    def _seq(self) -> int | None:
        ticket = _TICKET.get()
        return ticket[1] if ticket is not None and ticket[0] == id(self) else None

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

    async def _call(self, *, acquire: bool) -> tuple[bool, float, bool]:
        """Run the script once: (True, first slot, False) or (False, seconds to wait, probe out).

        Granted slots wait in `_slots` for `_hand_out`; what was learned goes with the call."""
        want = 0
        if acquire:
            self._drop_slots()
            want = self._next_want()
            self._handed, self._lapsed = 0, False
        observations, self._observations = self._observations, []
        finished, self._finished = self._finished, []
        now = self._clock.now()
        args = script_args(
            now, interval=self._interval, early=self._early, acquire=want,
            observations=observations, finished=finished,
        )  # fmt: skip
        try:
            reply = await self._script(keys=[self._key], args=args)
        except BaseException as exc:
            # Keep what we learned for the next attempt, before anything learned since.
            self._observations[:0] = observations
            self._finished[:0] = finished
            if isinstance(exc, redis.exceptions.RedisError | OSError):
                name = type(exc).__name__
                raise StoreUnavailable(f"rate budget store unreachable ({name})") from exc
            raise
        granted, wait, probe_out, seq, shown, count, reset_at = (_text(part) for part in reply)
        self._remaining = float(shown) if shown else None
        if granted == "1":
            first = int(float(seq))
            self._slots.extend(range(first, first + int(count)))
            self._slots_until = min(now + SLOT_HOLD, float(reset_at)) if reset_at else now + SLOT_HOLD
            return True, float(first), False
        return False, float(wait), probe_out == "1"
