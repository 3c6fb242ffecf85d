"""A contact export's answer (`ContactExport`, GET /v3/marketing/contacts/exports/{id}) as a Snapshot.

The spec's fields map onto the Snapshot every job has: `status` as is, `export_type` (listed
exports carry it) as `job_type`, `created_at` as `started_at`, `completed_at` (else `updated_at`)
as `finished_at` once the export ended, and `contact_count`, `urls`, `expires_at`, `message` in
`results`. It is checked as strictly as an import's answer: wrong types and out-of-range counts
are a malformed answer (retried, then reported), never a crash.

`urls` are answered URLs: each is judged by the outbound policy here, and one that policy
refuses is left out (counted in `results.urls_refused`), so no event hands on a link the watcher
itself would not follow; the refusals come back masked, for one log line.
"""

from __future__ import annotations

from typing import Any

from watcher.models import EXPORT_TERMINAL_STATUSES, Snapshot
from watcher.net import OutboundPolicy, shown_url
from watcher.strictjson import MAX_INT, check_text

#: An export is split into a few files; more URLs than this is not an answer we believe.
MAX_URLS = 100
#: A presigned download URL is a few hundred bytes to a few KiB.
MAX_URL_CHARS = 8192
#: A failure's `message` is kept to this length.
MAX_MESSAGE_CHARS = 500

_TEXT_FIELDS = ("id", "status", "export_type", "created_at", "updated_at", "completed_at", "expires_at", "message")


def parse_export(data: Any, policy: OutboundPolicy) -> tuple[Snapshot, list[str]]:
    """A decoded 200 body as a Snapshot, with the refused URLs (masked, with why) to log;
    ValueError names what is malformed."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    for name in _TEXT_FIELDS:
        value = data.get(name)
        if not isinstance(value, str | None):
            raise ValueError(f"{name} is {type(value).__name__}, expected a string")
        if value is not None:
            check_text(value)
    results: dict[str, Any] = {}
    if (count := _count(data.get("contact_count"))) is not None:
        results["contact_count"] = count
    refused: list[str] = []
    if (urls := data.get("urls")) is not None:
        results["urls"], refused = _urls(urls, policy)
        if refused:
            results["urls_refused"] = len(refused)
    if data.get("expires_at") is not None:
        results["expires_at"] = data["expires_at"]
    if data.get("message") is not None:
        results["message"] = data["message"][:MAX_MESSAGE_CHARS]
    status = data.get("status")
    ended = isinstance(status, str) and status.strip().lower() in EXPORT_TERMINAL_STATUSES
    snapshot = Snapshot(
        status=status,
        job_type=data.get("export_type"),
        results=results,
        started_at=data.get("created_at"),
        finished_at=(data.get("completed_at") or data.get("updated_at")) if ended else None,
    )
    return snapshot, refused


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"contact_count is {type(value).__name__}, expected a number")
    if not 0 <= value <= MAX_INT or (isinstance(value, float) and not value.is_integer()):  # also NaN
        raise ValueError(f"contact_count is out of range ({str(value)[:20]})")
    return int(value)


def _urls(urls: Any, policy: OutboundPolicy) -> tuple[list[str], list[str]]:
    """(the URLs the policy lets be read, in order; the others masked with the reason)."""
    if not isinstance(urls, list):
        raise ValueError(f"urls is {type(urls).__name__}, expected a list")
    if len(urls) > MAX_URLS:
        raise ValueError(f"urls has {len(urls)} entries (at most {MAX_URLS})")
    kept: list[str] = []
    refused: list[str] = []
    for url in urls:
        if not isinstance(url, str):
            raise ValueError(f"urls holds a {type(url).__name__}, expected strings")
        if len(url) > MAX_URL_CHARS:
            raise ValueError(f"a URL is {len(url)} characters long (at most {MAX_URL_CHARS})")
        check_text(url)
        problem = policy.answered_url_problem(url)
        if problem is None:
            kept.append(url)
        else:
            refused.append(f"{shown_url(url, path=True)}: {problem}")
    return kept, refused

