"""What a test can set about the fake's import and export life, and the S3-style answers of its links.

`LifecycleSettings` is what `FakeSendGrid.set_lifecycle` (or `POST
/_control/lifecycle`) asked for: how long an uploaded import and a requested
export take, a forced outcome for each, how long export URLs live and how big
an export file may grow. The upload and download links stand in for S3
pre-signed URLs, so they refuse the way S3 does: an XML `<Error>` body.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, fields, replace
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from watcher.testing.jobs import OUTCOMES, iso

EXPORT_OUTCOMES = ("ready", "failure")
DEFAULT_EXPORT_TTL = 72 * 3600.0


@dataclass(frozen=True, slots=True)
class LifecycleSettings:
    """Timings and forced outcomes of CSV imports and exports; the defaults behave like SendGrid, only faster."""

    import_seconds: float = 0.5  # after the upload ends
    import_outcome: str | None = None  # None: judged from the file
    export_seconds: float = 0.5
    export_outcome: str = "ready"
    export_message: str = "export failed: an internal error occurred"
    export_url_ttl: float = DEFAULT_EXPORT_TTL  # seconds from ready to expires_at
    export_file_bytes: int | None = None  # split files past this many CSV bytes; None: max_file_size MB

    def __post_init__(self) -> None:
        if self.import_seconds < 0 or self.export_seconds < 0 or self.export_url_ttl <= 0:
            raise ValueError("times must be >= 0 and export_url_ttl > 0")
        if self.import_outcome is not None and self.import_outcome not in OUTCOMES[:3]:
            raise ValueError(f"import_outcome must be one of {OUTCOMES[:3]} or null")
        if self.export_outcome not in EXPORT_OUTCOMES:
            raise ValueError(f"export_outcome must be one of {EXPORT_OUTCOMES}")
        if self.export_file_bytes is not None and self.export_file_bytes < 1:
            raise ValueError("export_file_bytes must be >= 1")

    def changed(self, **changes: Any) -> LifecycleSettings:
        """A copy with `changes`; TypeError names an unknown setting."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown lifecycle settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(self, **changes)

    def document(self) -> dict[str, Any]:
        """The settings as JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def signature() -> str:
    """A signature-looking token for a pre-signed link."""
    return secrets.token_hex(32)


def s3_error(status: int, code: str, message: str, **extra: str) -> web.Response:
    """An S3 error document: <Error><Code>…</Code><Message>…</Message>…</Error>."""
    parts = [f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"]
    parts += [f"<{name}>{escape(value)}</{name}>" for name, value in extra.items()]
    parts.append(f"<RequestId>{secrets.token_hex(8).upper()}</RequestId>")
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{"".join(parts)}</Error>'
    return web.Response(status=status, text=body, content_type="application/xml")


def signature_mismatch(detail: str) -> web.Response:
    """403 SignatureDoesNotMatch, S3's answer to a pre-signed URL used with other headers or method."""
    return s3_error(403, "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided. "
                    "Check your key and signing method.", Detail=detail)


def expired(expires_at: float, now: float) -> web.Response:
    """403 AccessDenied "Request has expired", S3's answer to a pre-signed URL past its time."""
    return s3_error(403, "AccessDenied", "Request has expired", Expires=iso(expires_at), ServerTime=iso(now))


def no_such_key() -> web.Response:
    """404 NoSuchKey."""
    return s3_error(404, "NoSuchKey", "The specified key does not exist.")
