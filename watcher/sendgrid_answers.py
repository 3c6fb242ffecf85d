"""What SendGrid's answers mean, as pure functions: an import's 200 body as a Snapshot, an error
body's first message, and the one JSON decoder for both (watcher.sendgrid reads the answers).

Strict where a poll must not crash later: NaN and Infinity literals, numbers past the float range and
lone surrogates are a malformed answer (ValueError naming what), which the client retries and reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from watcher.models import Snapshot
from watcher.schema import redact
from watcher.strictjson import check_text

#: Messages taken from a body are cut to this length.
MAX_MESSAGE_CHARS = 200
#: error_text: every message of an answer, on one line.
MAX_ERRORS_CHARS = 300
#: Counts above this are refused: no import is that big, and beyond it floats lose integers.
MAX_COUNT = 2**53
_COUNT_FIELDS = (
    "requested_count",
    "created_count",
    "updated_count",
    "deleted_count",
    "errored_count",
)
_TEXT_FIELDS = ("status", "job_type", "started_at", "finished_at")
_SCALARS = (str, int, float, bool, type(None))


class _OutOfRange(ValueError):
    """A JSON number no float can hold (1e400 would become Infinity)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON ({name})")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfRange(f"number out of range ({text[:20]})")
    return value


#: One decoder for every answer: NaN/Infinity literals and numbers past the float range refused.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def load_json(body: bytes) -> Any:
    """An answer's JSON (any encoding json.loads takes); ValueError saying why not."""
    try:
        # What json.loads does with bytes, then the one decoder.
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except _OutOfRange as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:  # also UnicodeDecodeError, and ints past Python's digit limit
        raise ValueError("not JSON") from exc


def parse_snapshot(body: bytes) -> Snapshot:
    """A 200 body as a Snapshot; ValueError names what is malformed."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    for name in _TEXT_FIELDS:
        if not isinstance(data.get(name), str | None):
            raise ValueError(f"{name} is {type(data[name]).__name__}, expected a string")
    results = data.get("results")
    if results is None:
        results = {}
    if not isinstance(results, dict):
        raise ValueError(f"results is {type(results).__name__}, expected an object")
    snapshot = Snapshot(
        status=data.get("status"),
        job_type=data.get("job_type"),
        results=_parse_results(results),
        started_at=data.get("started_at"),
        finished_at=data.get("finished_at"),
    )
    # A "\ud800" escape decodes to a lone surrogate, which no store or notifier can encode:
    # refused here as a malformed answer (retried, then reported), not a crash at every poll.
    kept = [snapshot.status, snapshot.job_type, snapshot.started_at, snapshot.finished_at]
    for value in [*kept, *snapshot.results.keys(), *snapshot.results.values()]:
        if isinstance(value, str):
            check_text(value)
    return snapshot


def _parse_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """Known counts as int (float when fractional); unknown keys kept when plain values."""
    parsed: dict[str, Any] = {}
    for name, value in results.items():
        if name in _COUNT_FIELDS:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"results.{name} is {type(value).__name__}, expected a number")
            if not 0 <= value <= MAX_COUNT:  # also false for NaN
                raise ValueError(f"results.{name} is out of range ({str(value)[:20]})")
            parsed[name] = int(value) if isinstance(value, int) or value.is_integer() else value
        elif name == "errors_url":
            if not isinstance(value, str | None):
                raise ValueError(f"results.errors_url is {type(value).__name__}, expected a string")
            if value is not None:
                parsed[name] = value
        elif isinstance(value, _SCALARS):
            parsed[name] = value  # unknown keys occur; nested ones are dropped
    return parsed


def _errors(body: bytes) -> list[tuple[str | None, str]]:
    """(field, message) of each item of SendGrid's `{"errors": [...]}` or `{"errors": {...}}`, in order,
    messages redacted and on one line; [] when the body holds none."""
    try:
        data = load_json(body)
    except ValueError:
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    found: list[tuple[str | None, str]] = []
    for item in errors if isinstance(errors, list) else [errors]:
        if isinstance(item, dict) and isinstance(item.get("message"), str) and item["message"].strip():
            where = item.get("field") or item.get("parameter")
            message = redact(" ".join(item["message"].split()))
            found.append((where if isinstance(where, str) and where else None, message))
    return found


def error_message(body: bytes) -> str | None:
    """The first error message of an error answer, if any: what a poll reports."""
    found = _errors(body)
    return found[0][1][:MAX_MESSAGE_CHARS] if found else None


def error_text(body: bytes) -> str:
    """Every message of an error answer on one line ("field: message; ..."): what an import or export
    start reports, where the field says which setting SendGrid refused."""
    text = "; ".join(f"{where}: {message}" if where else message for where, message in _errors(body))
    return text[:MAX_ERRORS_CHARS] if text else "no message"
