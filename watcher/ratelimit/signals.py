"""Reading rate-limit headers: `X-RateLimit-*` and `Retry-After` into a `RateSignal`.

Pure functions of the headers, the status and the time; both budgets read every
answer through `read_signal`, and `retry_after_seconds` is the one `Retry-After`
parser of the project (SendGrid and every notifier).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy

#: `X-RateLimit-Reset` above this is a Unix epoch, otherwise seconds from now.
EPOCH_THRESHOLD = 1e9
#: No header can make us wait longer than this: a hostile or broken value must not stall us.
MAX_WAIT = 3600.0
#: Assumed window length when the headers do not tell (Remaining without Reset, bare 429).
DEFAULT_WINDOW = 1.0

# RFC 9110 delay-seconds is digits only; a fraction is tolerated. No sign, exponent,
# underscore, "nan" or "inf": float() would accept all of them.
_DECIMAL = re.compile(r"\d+(?:\.\d+)?")


def _number(value: str | None) -> float | None:
    """A plain non-negative decimal, possibly huge (then inf); None for anything else."""
    if value is None:
        return None
    text = value.strip()
    if not _DECIMAL.fullmatch(text):
        return None
    return float(text)  # a 400-digit value is inf, never an OverflowError


def _count(value: str | None) -> float | None:
    """A request count; an absurdly long one is no count at all."""
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def _ceiling(seconds: float) -> float:
    return min(max(0.0, seconds), MAX_WAIT)


def _reset_raw(value: str | None, now: float) -> float | None:
    number = _number(value)
    if number is None:
        return None
    return number - now if number > EPOCH_THRESHOLD else number


def _retry_after_raw(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # "-0000": RFC 5322 says UTC, not local time
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) else None


def reset_seconds(value: str | None, now: float) -> float | None:
    """Seconds until an `X-RateLimit-Reset` value (an epoch above 10^9, else a delta), at most MAX_WAIT."""
    seconds = _reset_raw(value, now)
    return None if seconds is None else _ceiling(seconds)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds until a `Retry-After` value (delay seconds or an HTTP date), within [0, MAX_WAIT].

    None when absent or not a valid value (garbage, a sign, NaN): the caller's own
    backoff applies. A date in the past is 0; anything huge is MAX_WAIT.
    """
    seconds = _retry_after_raw(value, now)
    return None if seconds is None else _ceiling(seconds)


@dataclass(frozen=True, slots=True)
class RateSignal:
    """What one response says about the budget; absolute times in epoch seconds.

    `asked` is how long the answer asked us to wait before any ceiling (for the
    log of a suspicious wait); None when it asked for no wait.
    """

    limit: float | None = None
    remaining: float | None = None
    reset_at: float | None = None
    blocked_until: float | None = None
    asked: float | None = None


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
    limit = _count(limit_text)
    remaining = _count(remaining_text)
    reset = _reset_raw(reset_text, now)
    reset_at = None if reset is None else now + _ceiling(reset)
    if status in (429, 503):
        retry_after = _retry_after_raw(_last(headers, "retry-after"), now)
        if retry_after is not None:
            # Retry-After wins: the window headers of this answer are not used.
            return RateSignal(limit=limit, blocked_until=now + _ceiling(retry_after), asked=retry_after)
        if status == 429:
            # Over the limit with no hint: wait for the reset, or a short pause.
            if reset_at is not None and reset_at > now:
                return RateSignal(limit=limit, blocked_until=reset_at, asked=reset)
            return RateSignal(limit=limit, blocked_until=now + DEFAULT_WINDOW, asked=DEFAULT_WINDOW)
    asked = reset if remaining is not None and remaining < 1 and reset is not None and reset > 0 else None
    return RateSignal(limit=limit, remaining=remaining, reset_at=reset_at, asked=asked)
