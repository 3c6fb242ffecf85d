"""YAML with positions: every value keeps the line it came from, so errors say FILE:LINE."""

from __future__ import annotations

import gc
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import yaml

Path_ = tuple[str | int, ...]

#: libyaml's parser when PyYAML was built with it (the wheels are): about 10x faster, same marks.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The last alternative is a `${` that the others did not take: malformed, and an error
# (an unclosed `${SENDGRID_API_KEY` must never become the key itself).
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")

#: Size caps of what `read_capped` reads: a config, a job file, a `*_file` secret.
CONFIG_MAX_BYTES = 1024 * 1024
JOB_FILE_MAX_BYTES = 64 * 1024 * 1024
SECRET_FILE_MAX_BYTES = 64 * 1024


class FileRefused(Exception):
    """A file that is not read: not a regular file, too large, unreadable or not UTF-8 text."""


def read_capped(path: str | os.PathLike[str], limit: int) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; FileRefused says why not.

    O_NONBLOCK and fstat before any read: a FIFO or a device (`/dev/zero`) is refused at
    once instead of hanging or reading until memory runs out.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileRefused(exc.strerror or str(exc)) from None
    except ValueError as exc:  # an embedded NUL byte
        raise FileRefused(str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > limit:
            raise FileRefused(f"too large: {info.st_size} bytes, at most {limit} are read")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(limit + 1)
        except OSError as exc:
            raise FileRefused(exc.strerror or str(exc)) from None
    if len(data) > limit:  # grew since fstat
        raise FileRefused(f"too large: more than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused("not UTF-8 text") from None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


@dataclass
class Problems:
    """Collects every problem of one file, each located as FILE:LINE: path: message."""

    file: str
    lines: dict[Path_, int] = field(default_factory=dict)
    messages: list[tuple[int, str]] = field(default_factory=list)

    def line_of(self, path: Path_) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def add(self, path: Path_, message: str, *, line: int | None = None) -> None:
        where = line if line is not None else self.line_of(path)
        dotted = dotted_path(path)
        prefix = f"{dotted}: " if dotted else ""
        self.messages.append((where, f"{self.file}:{where}: {prefix}{message}"))

    def sorted(self) -> list[str]:
        return [text for _, text in sorted(self.messages, key=lambda item: item[0])]

    def __bool__(self) -> bool:
        return bool(self.messages)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


NamedT = TypeVar("NamedT", bound=_Named)


def named_entries(
    raw: Any, section: str, what: str, problems: Problems, parse: Callable[[Any, Path_], NamedT | None]
) -> list[NamedT]:
    """A section that lists named entries (`digests:`, `backups:`): each parsed by `parse` at its path,
    a name given twice refused; every problem located, unusable entries left out."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add((section,), f"expected a list of {what}s")
        return []
    out: list[NamedT] = []
    for i, item in enumerate(raw):
        entry = parse(item, (section, i))
        if entry is not None and any(e.name == entry.name for e in out):
            problems.add((section, i, "name"), f"{what} {entry.name!r} is defined twice")
        elif entry is not None:
            out.append(entry)
    return out


def dotted_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_located(
    text: str, problems: Problems, *, env: Mapping[str, str] | None = None, expand: bool = True
) -> Any:
    """Parse YAML safely, expanding ${VAR} and ${VAR:-default} in strings; None on a syntax error.

    `expand=False` for files that others than the operator may write (job files): whoever can
    edit one must not be able to read `${SENDGRID_API_KEY}` back through a label.
    """
    environ: Mapping[str, str] | None = (os.environ if env is None else env) if expand else None
    with _gc_paused():
        return _load(text, problems, environ)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while a document's nodes are made: they are all alive until it is built, and a
    100,000-job file made ~1,000 collections over ever more of them (4x the time of the parse)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load(text: str, problems: Problems, environ: Mapping[str, str] | None) -> Any:
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problems.add((), f"not valid YAML: {exc.problem or exc}", line=line)
        return None
    except yaml.YAMLError as exc:
        problems.add((), f"not valid YAML: {exc}", line=1)
        return None
    if node is None:
        return None
    problems.lines[()] = node.start_mark.line + 1
    try:
        return _build(node, (), problems, environ, _Budget())
    except _TooBig as exc:
        problems.add((), str(exc), line=exc.line)
        return None


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_LOADER)
    except UnicodeEncodeError:
        # libyaml takes UTF-8 only: a lone surrogate (never in a file read as UTF-8, but a str
        # can hold one) goes to the Python parser, which reports it as a located YAML error.
        return yaml.compose(text, Loader=yaml.SafeLoader)


class _TooBig(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class _Budget:
    """Guards against recursive aliases and alias bombs ("billion laughs").

    What the text itself holds is bounded by its size, however large (a 100,000-job file is
    half a million nodes); what aliases repeat is not, so only repeats are counted.
    """

    MAX_REPEATS = 100_000
    MAX_DEPTH = 64

    def __init__(self) -> None:
        self.repeats = 0
        self.built: set[int] = set()
        self.active: set[int] = set()
        self.constructor = yaml.SafeLoader("")

    def enter(self, node: yaml.Node, depth: int) -> None:
        key = id(node)
        if key in self.built:
            if key in self.active:
                raise _TooBig("a YAML alias refers to itself", node.start_mark.line + 1)
            self.repeats += 1
            if self.repeats > self.MAX_REPEATS:
                raise _TooBig("the document is too large: its aliases repeat too many values", node.start_mark.line + 1)
        else:
            self.built.add(key)
        if depth > self.MAX_DEPTH:
            raise _TooBig("the document is too deeply nested", node.start_mark.line + 1)


def _build(
    node: yaml.Node, path: Path_, problems: Problems, env: Mapping[str, str] | None, budget: _Budget
) -> Any:
    budget.enter(node, len(path))
    if not isinstance(node, yaml.ScalarNode):
        budget.active.add(id(node))
        try:
            return _build_collection(node, path, problems, env, budget)
        finally:
            budget.active.discard(id(node))
    problems.lines.setdefault(path, node.start_mark.line + 1)
    return _scalar(node, path, problems, env, budget.constructor)


def _build_collection(
    node: yaml.Node, path: Path_, problems: Problems, env: Mapping[str, str] | None, budget: _Budget
) -> Any:
    problems.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, path, problems, env, budget.constructor)
            if not isinstance(key, str | int | float | bool) or key is None:
                problems.add(path, "mapping keys must be plain strings", line=key_node.start_mark.line + 1)
                continue
            key = str(key)
            child = (*path, key)
            if key in out:
                problems.add(child, "duplicate key", line=key_node.start_mark.line + 1)
                continue
            problems.lines[child] = key_node.start_mark.line + 1
            out[key] = _build(value_node, child, problems, env, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), problems, env, budget) for i, item in enumerate(node.value)]
    return _scalar(node, path, problems, env, budget.constructor)


def _scalar(
    node: yaml.Node, path: Path_, problems: Problems, env: Mapping[str, str] | None, constructor: yaml.SafeLoader
) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        problems.add(path, "expected a plain value here", line=node.start_mark.line + 1)
        return None
    try:
        value = constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer past Python's 4300-digit limit
        problems.add(path, f"bad value: {str(exc)[:200]}", line=node.start_mark.line + 1)
        return None
    if env is not None and isinstance(value, str) and "$" in value:
        value = _expand(value, path, problems, env, node.start_mark.line + 1)
    return value


def _expand(text: str, path: Path_, problems: Problems, env: Mapping[str, str], line: int) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name is None:
            problems.add(path, "malformed ${...}: expected ${NAME} or ${NAME:-default} (write $$ for a lone $)",
                         line=line)
            return ""
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            problems.add(path, f"environment variable {name} is not set", line=line)
            return ""
        return value

    return _ENV.sub(replace, text)
