"""Strict JSON (I-JSON, RFC 7493) for input from outside: API bodies and queue messages.

UTF-8 only, no NaN or Infinity, numbers a double holds, unique keys, no lone surrogates,
at most MAX_DEPTH levels: what a JSON value must be before the watcher keeps or forwards it,
so nothing it writes later can hold NaN, Infinity or an unencodable string.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # a job message is 3 levels deep; nothing legitimate comes near this
MAX_INT = 2**53  # I-JSON: integers a double holds exactly


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    value = int(text) if len(text) <= 20 else MAX_INT + 1  # never int() a 5000-digit text
    if abs(value) > MAX_INT:
        raise ValueError(f"the integer {text[:20]}... is out of range" if len(text) > 20 else
                         f"the integer {text} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise ValueError("an object has the same key twice")
    return mapping


def strict_json(raw: bytes | str) -> Any:
    """Parse I-JSON (RFC 7493): UTF-8, no NaN/Infinity, numbers a double holds, unique keys,
    no lone surrogates, at most MAX_DEPTH levels; ValueError saying why otherwise."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float,
            parse_int=_bounded_int, object_pairs_hook=_unique_keys,
        )
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            for key in item if isinstance(item, dict) else ():
                check_text(key)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


def check_text(text: str) -> None:
    """ValueError when `text` holds a lone surrogate (it has no UTF-8 encoding)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a "\ud800" escape: a lone surrogate is no character at all
        raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff)") from None
