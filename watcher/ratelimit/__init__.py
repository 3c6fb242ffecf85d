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

No header makes anyone wait longer than `max_wait` (the daemon passes
polling.max_interval): a longer Retry-After or reset is clamped, logged once as
`ratelimit.suspicious_wait`, and after the wait one request probes first.

The package holds one module per part: `signals` reads the headers into a
`RateSignal`; `budget` holds the `RateBudget` protocol and the ticket context
variable; `window` is the one window rule (pure functions on a frozen state) and
`_lua` its Lua mirror; `bounded` clamps waits; `local` is `LocalRateBudget`;
`shared` is `RedisRateBudget`, imported when first named (it brings the Redis client library).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from watcher.ratelimit.bounded import DEFAULT_MAX_WAIT
from watcher.ratelimit.budget import MAX_EARLY, SAME_WINDOW, WAIT_SLICE, RateBudget
from watcher.ratelimit.local import LocalRateBudget
from watcher.ratelimit.signals import (
    DEFAULT_WINDOW,
    EPOCH_THRESHOLD,
    MAX_WAIT,
    RateSignal,
    read_signal,
    reset_seconds,
    retry_after_seconds,
)
from watcher.ratelimit.window import PROBE_TIMEOUT

if TYPE_CHECKING:
    from watcher.ratelimit.shared import PROBE_POLL, RedisRateBudget

__all__ = [
    "DEFAULT_MAX_WAIT",
    "DEFAULT_WINDOW",
    "EPOCH_THRESHOLD",
    "MAX_EARLY",
    "MAX_WAIT",
    "PROBE_POLL",
    "PROBE_TIMEOUT",
    "SAME_WINDOW",
    "WAIT_SLICE",
    "LocalRateBudget",
    "RateBudget",
    "RateSignal",
    "RedisRateBudget",
    "read_signal",
    "reset_seconds",
    "retry_after_seconds",
]


def __getattr__(name: str) -> Any:
    """`RedisRateBudget` and `PROBE_POLL`, from `shared` on first use."""
    if name in ("PROBE_POLL", "RedisRateBudget"):
        from watcher.ratelimit import shared

        return getattr(shared, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
