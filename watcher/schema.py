"""Small declarative settings schema shared by config.py and notifier classes.

A notifier declares its settings as a tuple of `Field`s; config validation
reports every problem with its file and line, so a notifier never has to
parse YAML itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

Parser = Callable[[Any], Any]

_SECRET_VALUES: set[str] = set()


class Secret:
    """A string that never shows itself in repr, str, logs or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= 4:
            _SECRET_VALUES.add(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def known_secret_values() -> frozenset[str]:
    """Every secret value loaded so far, for the log redaction processor."""
    return frozenset(_SECRET_VALUES)


def redact(text: str) -> str:
    """Replace every known secret value inside `text`."""
    for value in _SECRET_VALUES:
        if value in text:
            text = text.replace(value, "********")
    return text


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: its name, how to parse it, and whether it is secret."""

    name: str
    parse: Parser
    required: bool = False
    default: Any = None
    secret: bool = False
    doc: str = ""


# --- parsers: take a YAML value, return the parsed value or raise ValueError --


def string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {_kind(value)}")
    text = str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def optional_string(value: Any) -> str | None:
    return None if value is None else string(value)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
        return value.lower() in {"true", "yes", "on", "1"}
    raise ValueError(f"expected true or false, got {_kind(value)}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value

    return parse


def number(minimum: float | None = None, allow_none: bool = False) -> Parser:
    def parse(value: Any) -> float | None:
        if value is None and allow_none:
            return None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return float(value)

    return parse


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`250ms`, `5s`, `2m`, `1h`, `1d` or a number of seconds, as float seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 2m, 1h, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 5s, 2m, 1h or 1d, got {value!r}")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def duration(minimum: float = 0.0) -> Parser:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g}s")
        return seconds

    return parse


def url(*schemes: str) -> Parser:
    allowed = schemes or ("http", "https")

    def parse(value: Any) -> str:
        text = string(value).strip()
        parts = urlsplit(text)
        if parts.scheme not in allowed or not parts.netloc:
            raise ValueError(f"expected a {' or '.join(allowed)} URL, got {_shown(text)}")
        return text

    return parse


def choice(*values: str) -> Parser:
    def parse(value: Any) -> str:
        text = string(value)
        if text not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {text!r}")
        return text

    return parse


def string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of strings, got {_kind(value)}")
    return tuple(string(item) for item in value)


def string_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of strings, got {_kind(value)}")
    return {string(k): string(v) for k, v in value.items()}


def secret(value: Any) -> Secret:
    return Secret(string(value))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _shown(text: str) -> str:
    # URLs may embed tokens (Slack webhook paths); show only the scheme and host.
    parts = urlsplit(text)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else repr(text[:40])
