"""Reading an HTTP request's inputs for the API: the error answer, Host and Origin, paging, job bodies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from watcher.errors import InvalidJobId
from watcher.models import JobRef, validate_job_id
from watcher.sources.base import InvalidBatch, parse_batch, parse_job_request
from watcher.status import decode_cursor

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class ApiError(Exception):
    """An answer other than success, rendered as {"error": code, "message": message} by the middleware."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    @classmethod
    def refused(cls) -> ApiError:
        return cls(
            401, "unauthorized", "a valid token is required: Authorization: Bearer <server.token>",
            {"WWW-Authenticate": 'Bearer realm="import-watcher"'},
        )


def authority(value: str, default_port: int | None) -> tuple[str, int | None] | None:
    """(host, port) of a Host header value; None when it is not one."""
    try:
        parts = urlsplit(f"//{value}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.username is not None or parts.password is not None or parts.path:
        return None
    return host, port if port is not None else default_port


def same_origin(origin: str, host_header: str) -> bool:
    """Whether a browser's `Origin` names this server as the request's `Host` does."""
    try:
        parts = urlsplit(origin)
        host, port = parts.hostname, parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host or parts.path:
        return False  # "null" (sandboxed pages, file:) included
    default = 443 if parts.scheme == "https" else 80
    served = authority(host_header, default)  # behind a TLS proxy, Host has no port but Origin says https
    return served is not None and (host, port or default) == served


def page_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE
    # ASCII digits only (str.isdigit() also takes "²"), and the length first: int() of 5000 digits raises.
    if not (text.isascii() and text.isdigit() and len(text) <= 4) or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(text)


def page_after(text: str | None, check: Callable[[str], object] = validate_job_id) -> tuple[float, str] | None:
    """The cursor `after` (its name checked by `check`: job ids for /jobs, batch names for /batches)."""
    if text is None:
        return None
    try:
        return decode_cursor(text, check)
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None


def job_request(message: Any) -> tuple[JobRef, bool]:
    """The job and its `again` flag, with the API's own error codes."""
    if isinstance(message, str) or (isinstance(message, Mapping) and "id" in message):
        try:
            validate_job_id(message if isinstance(message, str) else message["id"])
        except InvalidJobId as exc:
            raise ApiError(400, "invalid_job_id", str(exc)) from None
    if isinstance(message, Mapping) and not isinstance(message.get("labels"), Mapping | None):
        # parse_job (shared with the job file) reads any empty value as "no labels";
        # the API takes only what its document allows: an object, or null for none.
        raise ApiError(400, "invalid_job", "`labels` must be an object of strings or numbers, or null")
    try:
        return parse_job_request(message)
    except InvalidBatch as exc:
        raise ApiError(400, "invalid_batch", f"`batch`: {exc}") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_job", str(exc)) from None


def batch_name(text: str) -> str:
    """A batch name from a path or query, or a 400 `invalid_batch`."""
    try:
        return parse_batch(text)
    except InvalidBatch as exc:
        raise ApiError(400, "invalid_batch", str(exc)) from None
