"""Exceptions with their own message: never bool or None returns."""

from __future__ import annotations


class WatcherError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidJobId(WatcherError, ValueError):
    """A job id that is not 1 to 64 characters of A-Z a-z 0-9 - _."""

    def __init__(self, job_id: object) -> None:
        shown = repr(job_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(
            f"invalid job id {shown}: expected 1 to 64 characters of A-Z a-z 0-9 - _"
        )
        self.job_id = job_id


class ConfigError(WatcherError):
    """Configuration problems; `problems` holds every one, already located."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreUnavailable(WatcherError):
    """The state store cannot be used right now (locked, busy, full, read-only, unreachable,
    its file replaced); the caller retries later and readiness says so meanwhile."""


class StoreBroken(WatcherError):
    """The state store cannot be used as it is (corrupt file, unknown schema): retrying
    cannot help; commands print one line and exit 1, the daemon reports it as not ready."""


# --- SendGrid client outcomes that are not a snapshot -------------------------


class SendGridError(WatcherError):
    """A SendGrid answer that is not an import snapshot."""


class ImportNotFound(SendGridError):
    """404: SendGrid does not know this job id (yet)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"SendGrid has no import job {job_id}")
        self.job_id = job_id


class KeyRefused(SendGridError):
    """401/403: the API key is missing, wrong or lacks the marketing scope."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"SendGrid refused the API key (HTTP {status}): {message}")
        self.status = status
        self.message = message


class TryLater(SendGridError):
    """429, 5xx, timeouts, broken connections, malformed bodies: ask again later."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


# --- Notifier outcomes --------------------------------------------------------


class DeliveryError(WatcherError):
    """A notification could not be delivered."""


class RetryableDeliveryError(DeliveryError):
    """Worth trying again: 429, 5xx, a network error. `retry_after` overrides the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: 410, other 4xx, a rejected payload."""
