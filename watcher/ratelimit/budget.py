"""What both request budgets share: the `RateBudget` protocol, the request ticket and the window constants."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Protocol

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
