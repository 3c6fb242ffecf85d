"""The request budget shared by several processes through Redis: `RedisRateBudget`.

The window rule is `window.py`'s, run by its Lua mirror (`_lua.py`) on one hash.
"""

from __future__ import annotations

import asyncio
import contextlib
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

__all__ = ["PROBE_POLL", "PROBE_TIMEOUT", "RedisRateBudget", "script_args"]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def script_args(
    now: float,
    *,
    interval: float,
    early: float,
    acquire: bool,
    observations: list[Observation],
    finished: list[int | None],
) -> list[str]:
    """ARGV of one call of the Lua script (see `_lua`)."""
    args = [
        _arg(now), _arg(interval), _arg(early), _arg(DEFAULT_WINDOW), _arg(SAME_WINDOW), _arg(PROBE_TIMEOUT),
        str(_STATE_TTL_MS), "1" if acquire else "0", str(len(observations)), str(len(finished)),
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
    ) -> None:
        if max_rate is not None and not max_rate > 0:
            raise ValueError("max_rate must be positive or None")
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
        async with self._gate:
            while True:
                granted, value, probe_out = await self._call(acquire=True)
                if granted:
                    self._in_flight += 1
                    _TICKET.set((id(self), int(value)))
                    return
                # A probe's answer may come from any replica at any moment: ask again soon.
                await self._clock.sleep(min(value, PROBE_POLL if probe_out else WAIT_SLICE))

    def release(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._finished.append(self._seq())

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        now = self._clock.now()
        signal = read_signal(headers, status, now)
        seq = self._seq()
        later = 0 if seq is not None else max(0, self._in_flight - 1)
        self._observations.append(self._bounded.observation(signal, seq, later, now))
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
        """Run the script once: (True, sequence number, False) or (False, seconds to wait, probe out)."""
        observations, self._observations = self._observations, []
        finished, self._finished = self._finished, []
        args = script_args(
            self._clock.now(), interval=self._interval, early=self._early, acquire=acquire,
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
        granted, wait, probe_out, seq, shown = (_text(part) for part in reply)
        self._remaining = float(shown) if shown else None
        if granted == "1":
            return True, float(seq), False
        return False, float(wait), probe_out == "1"
