"""State stores: the StateStore protocol, its backends, and `open_store` for config URLs.

Each backend is imported when first named (`watcher.store.RedisStore`) or opened: a process
pays for the Redis client library only when it uses Redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from watcher.store.base import StateStore

if TYPE_CHECKING:
    from watcher.store.memory import MemoryStore
    from watcher.store.redis import RedisStore
    from watcher.store.sqlite import SqliteStore

__all__ = ["MemoryStore", "RedisStore", "SqliteStore", "StateStore", "open_store"]

_BACKENDS = {"MemoryStore": "watcher.store.memory", "RedisStore": "watcher.store.redis",
             "SqliteStore": "watcher.store.sqlite"}


def __getattr__(name: str) -> Any:
    """A backend class, imported on first use."""
    module = _BACKENDS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

_EXPECTED = (
    "expected sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory:,"
    " memory:// or redis[s]://host:port/db[?prefix=...]"
)


def open_store(url: str) -> StateStore:
    """The (not yet opened) store a SQLAlchemy-style URL names; ValueError if it names none."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"state store URL has no scheme: {_EXPECTED}")
    if scheme == "memory":
        if rest.strip("/"):
            raise ValueError(f"memory:// takes no path or host: {_EXPECTED}")
        from watcher.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from watcher.store.sqlite import SqliteStore

        return SqliteStore(_sqlite_path(rest))
    if scheme in ("redis", "rediss"):
        return _redis_store(url)
    # Only the scheme is echoed: a URL may carry a password.
    raise ValueError(f"unsupported state store URL scheme {scheme!r}: {_EXPECTED}")


def _sqlite_path(rest: str) -> str:
    """Three slashes make a relative path, four an absolute one (SQLAlchemy's rule)."""
    if rest in ("", "/:memory:"):
        return ":memory:"  # sqlite:// is SQLAlchemy's spelling of an in-memory database
    if not rest.startswith("/"):
        raise ValueError(f"sqlite URLs take no host (use three or four slashes): {_EXPECTED}")
    path = rest[1:]
    if not path or path == "/":
        raise ValueError(f"sqlite URL has no file path: {_EXPECTED}")
    if "?" in path:
        raise ValueError(f"sqlite URLs take no query parameters: {_EXPECTED}")
    return path


def _redis_store(url: str) -> RedisStore:
    """Take `prefix` out of the query; every other parameter goes to redis-py untouched."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == "prefix"]
    if len(prefixes) > 1 or (prefixes and not prefixes[0]):
        raise ValueError("redis state store URL: give `prefix` once, and not empty")
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    client_url = urlunsplit(parts._replace(query=rest))
    from watcher.store.redis import RedisStore

    if prefixes:
        return RedisStore(client_url, prefix=prefixes[0])
    return RedisStore(client_url)
