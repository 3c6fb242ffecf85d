"""Reading SendGrid's rate-limit headers: `X-RateLimit-*` and `Retry-After` into a `RateSignal`.

Pure functions of the headers, the status and the time; both budgets read every
answer through `read_signal`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy

#: `X-RateLimit-Reset` above this is a Unix epoch, otherwise seconds from now.
EPOCH_THRESHOLD = 1e9
#: No header can make us wait longer than this: a hostile or broken value must not stall us.
MAX_WAIT = 3600.0
#: Assumed window length when the headers do not tell (Remaining without Reset, bare 429).
DEFAULT_WINDOW = 1.0


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
    if not isinstance(headers, _CASE_INSENSITIVE):
        headers = CIMultiDict(headers)  # aiohttp's headers are already case-insensitive: no copy
    limit_text = _last(headers, "x-ratelimit-limit")
    remaining_text = _last(headers, "x-ratelimit-remaining")
    reset_text = _last(headers, "x-ratelimit-reset")
    if limit_text is None and remaining_text is None and reset_text is None and status not in (429, 503):
        return _NO_SIGNAL
    retry_text = _last(headers, "retry-after")
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
