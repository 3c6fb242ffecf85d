"""No header makes a budget wait longer than `max_wait`: the clamp, and its one log line per episode."""

from __future__ import annotations

import structlog

from watcher.ratelimit.signals import MAX_WAIT, RateSignal
from watcher.ratelimit.window import Observation, observation

log = structlog.get_logger("watcher.ratelimit")

#: The default of `max_wait`: polling.max_interval's default.
DEFAULT_MAX_WAIT = 300.0


class BoundedWaits:
    """Turns signals into observations, clamping waits; logs a suspicious wait once until it ends."""

    def __init__(self, max_wait: float, *, key: str) -> None:
        if not max_wait > 0:
            raise ValueError("max_wait must be positive")
        self.max_wait = max_wait
        self._key = key
        # Every answer of a burst may carry the same bogus header: one line says it.
        self._quiet_until = float("-inf")

    def observation(self, signal: RateSignal, seq: int | None, later: int, now: float) -> Observation:
        """The signal as the window rule reads it."""
        seen, asked = observation(signal, seq, later, now, self.max_wait)
        if asked is not None and now >= self._quiet_until:
            self._quiet_until = now + self.max_wait
            log.warning(
                "ratelimit.suspicious_wait",
                budget=self._key,
                asked_seconds=asked,
                clamped_seconds=min(self.max_wait, MAX_WAIT),
            )
        return seen
