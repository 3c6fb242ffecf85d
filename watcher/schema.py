"""Small declarative settings schema shared by config.py and notifier classes.

A notifier declares its settings as a tuple of `Field`s; config validation
reports every problem with its file and line, so a notifier never has to
parse YAML itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watcher.yamlloc import SECRET_FILE_MAX_BYTES, FileRefused, Path_, Problems, read_capped

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


class Validator:
    """Parses settings against Fields, collecting every problem of one file with its place."""

    def __init__(self, problems: Problems, base_dir: Path) -> None:
        self.problems = problems
        self.base_dir = base_dir

    def resolve(self, path: str) -> Path:
        # Relative paths are relative to the working directory, as in the state URL
        # (SQLAlchemy style) and DESIGN.md's `path: config/jobs.yaml`.
        return Path(path).expanduser().absolute()

    def value(self, data: Mapping[str, Any], path: Path_, parse: Parser, default: Any) -> Any:
        key = str(path[-1])
        if key not in data or data[key] is None:
            return default
        try:
            return parse(data[key])
        except ValueError as exc:
            self.problems.add(path, str(exc))
            return default

    def section(
        self,
        data: Mapping[str, Any],
        path: Path_,
        fields: tuple[Field, ...],
        *,
        required: bool = False,
        extra_ok: frozenset[str] = frozenset(),
    ) -> dict[str, Any] | None:
        raw = data.get(str(path[-1]))
        if raw is None:
            if required:
                self.problems.add(path, "this section is required")
                return None
            raw = {}
        return self.fields(raw, path, fields, extra_ok=extra_ok)

    def fields(
        self,
        raw: Any,
        path: Path_,
        fields: tuple[Field, ...],
        *,
        extra_ok: frozenset[str] = frozenset(),
    ) -> dict[str, Any] | None:
        """Parse a mapping against its fields: unknown keys, required keys, `*_file` secrets."""
        if not isinstance(raw, dict):
            self.problems.add(path, "expected a mapping")
            return None
        known = {f.name for f in fields}
        secrets = {f.name for f in fields if f.secret}
        raw = dict(raw)
        unreadable: set[str] = set()
        for key in list(raw):
            if key.endswith("_file") and key[:-5] in secrets:
                if not self._read_secret_file(raw, key, path):
                    unreadable.add(key[:-5])
            elif key not in known and key not in extra_ok:
                self.problems.add((*path, key), f"unknown key (expected one of {', '.join(sorted(known))})")
        out: dict[str, Any] = {}
        for f in fields:
            value = raw.get(f.name)
            if value is None or (value == "" and not f.required):  # `${VAR:-}` means "not set"
                if f.required and f.name not in unreadable:
                    self.problems.add(path, f"missing required key `{f.name}`")
                out[f.name] = f.default
                continue
            try:
                out[f.name] = f.parse(value)
            except ValueError as exc:
                self.problems.add((*path, f.name), str(exc))
                out[f.name] = f.default
        return out

    def _read_secret_file(self, raw: dict[str, Any], key: str, path: Path_) -> bool:
        """Put the content of `NAME_file` into `NAME`; False when that was not possible."""
        name = key[:-5]
        file_path = raw.pop(key)
        if raw.get(name) is not None:
            self.problems.add((*path, key), f"give either `{name}` or `{key}`, not both")
            return False
        if not isinstance(file_path, str) or not file_path:
            self.problems.add((*path, key), "expected a file path")
            return False
        try:
            raw[name] = read_capped(self.resolve(file_path), SECRET_FILE_MAX_BYTES).strip()
        except FileRefused as exc:
            self.problems.add((*path, key), f"cannot read secret file {file_path}: {exc}")
            return False
        return True


# --- parsers: take a YAML value, return the parsed value or raise ValueError --


def string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {_kind(value)}")
    text = str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def name_text(value: Any) -> str:
    """A name written as text (a stream, a group): a number here is more likely a slip than meant."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return string(value)


def path_text(value: Any) -> str:
    """A file path: a non-empty string without NUL bytes."""
    text = name_text(value)
    if "\0" in text:
        raise ValueError("a file path must not contain NUL bytes")
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
        if parts.scheme not in allowed or not (parts.netloc or parts.scheme == "unix"):
            raise ValueError(f"expected a {' or '.join(allowed)} URL, got {_shown(text)}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is no number in range
        except ValueError:
            raise ValueError(f"the port is not a number from 0 to 65535 in {_shown(text)}") from None
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
    host = parts.netloc.rpartition("@")[2]  # never the userinfo: it may hold a password
    if parts.netloc:
        return f"{parts.scheme}://{host}/…"
    # No scheme://host: the value may still be a secret URL typed without https:// (a token in its path).
    return f"a value with no scheme://host ({len(text)} characters)"
