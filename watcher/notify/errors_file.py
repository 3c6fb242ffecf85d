"""Read SendGrid's errors CSV once, right after a job ends, and summarise it.

`errors_url` is a short-lived link, so the watcher reads it when it detects
the outcome and stores the summary in the event: every notifier (and every
retry) then shows the same numbers. Nothing here raises: a file that cannot be
read becomes `{"unavailable": "<why>"}` and the notification still goes out.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from watcher.net import AnswerStatus, BodyTooLarge, OutboundPolicy, OutboundRefused, shown_url

MiB = 1024 * 1024
REASON_COLUMNS = ("error", "errors", "reason", "error_message", "message")
NO_REASON = "(no reason given)"
_MAX_REASON_CHARS = 200
# The sample travels inside the stored event (and e-mails): keep it small.
_MAX_SAMPLE_CHARS = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"

_log = structlog.get_logger("watcher.notify")


@dataclass(frozen=True)
class ErrorsSummary:
    """`summary` goes into the event's `data.errors`; `sample_csv` is attached to e-mails."""

    summary: dict[str, Any]
    sample_csv: str | None = None


class _Unavailable(Exception):
    """Why the file cannot be summarised, already fit to show."""


#: The whole download (every redirect and the body) never takes longer than this.
DEFAULT_TIMEOUT = 10.0


async def summarize_errors_file(
    session: aiohttp.ClientSession | None,
    url: str,
    *,
    policy: OutboundPolicy | None = None,
    max_bytes: int = 10 * MiB,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a total budget, applied with asyncio.timeout
    top: int = 5,
    sample_rows: int = 20,
    job_id: str | None = None,
) -> ErrorsSummary:
    """Rows and top reasons of the CSV at `url`, or why it could not be read; never raises.

    `url` arrives in SendGrid's answer, so it is fetched under the answered-URL `policy`
    (default: https to public addresses only). `session` should come from
    `policy.make_session()`; None (or another session) makes one for this download.
    `job_id` only names the job in the log line of a failure.
    """
    rules = policy or OutboundPolicy()
    try:
        if not url:
            raise _Unavailable("no errors file URL")
        body = await rules.fetch_answered(session, url, max_bytes=max_bytes, total_timeout=timeout)
        return _summarize(_gunzip(body, max_bytes), top=top, sample_rows=sample_rows)
    except (_Unavailable, OutboundRefused, AnswerStatus) as exc:
        why = str(exc)
    except BodyTooLarge:
        why = f"errors file larger than {_size(max_bytes)}"
    except TimeoutError:
        why = f"download timed out after {timeout:g}s"
    except aiohttp.ClientError as exc:
        why = f"download failed: {_client_error(exc, url)}"
    except Exception as exc:  # the contract is "never raises": report the kind, not a traceback
        why = f"unexpected error: {type(exc).__name__}"
    context = {} if job_id is None else {"job_id": job_id}
    _log.warning("notify.errors_file_unavailable", **context, url=_shown(url), reason=why)
    return ErrorsSummary({"unavailable": why}, None)


def _shown(url: str) -> str:
    # Signed download links carry their token in the query: show scheme, host and path only.
    return shown_url(url, path=True) if url else "(no URL)"


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    # aiohttp already decodes Content-Encoding: gzip; a .gz file served as-is still starts
    # with the magic bytes. The output cap keeps a small bomb from filling memory.
    if not body.startswith(_GZIP_MAGIC):
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise _Unavailable(f"errors file is not valid gzip: {exc}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise _Unavailable(f"errors file larger than {_size(max_bytes)}")
    return out


def reason_column(header: list[str]) -> int:
    """The index of the reason column: a known name (any case), else the last column."""
    names = [name.strip().lower() for name in header]
    for candidate in REASON_COLUMNS:
        if candidate in names:
            return names.index(candidate)
    return max(0, len(header) - 1)


def _summarize(body: bytes, *, top: int, sample_rows: int) -> ErrorsSummary:
    text = body.decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return ErrorsSummary({"rows": 0, "top_reasons": []}, None)
        column = reason_column(header)
        reasons: Counter[str] = Counter()
        sample: list[list[str]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            reason = row[column].strip() if column < len(row) else ""
            reasons[reason[:_MAX_REASON_CHARS] or NO_REASON] += 1
            if len(sample) < sample_rows:
                sample.append(row)
    except csv.Error as exc:
        raise _Unavailable(f"errors file is not valid CSV: {exc}") from None
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[: max(0, top)]
    summary = {
        "rows": sum(reasons.values()),
        "top_reasons": [{"reason": reason, "count": count} for reason, count in ranked],
    }
    return ErrorsSummary(summary, _sample_csv(header, sample))


def _sample_csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        if out.tell() > _MAX_SAMPLE_CHARS:
            break
        writer.writerow(row)
    return out.getvalue()


def _client_error(exc: aiohttp.ClientError, url: str) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        why = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect to {_shown(url)} ({why})"
    message = str(exc)
    # aiohttp messages may quote the URL; keep its query (the token) out of reports.
    query = urlsplit(url).query
    if query:
        message = message.replace(url, _shown(url)).replace(query, "…")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n} bytes"
