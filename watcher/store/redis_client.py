"""The Redis store's connection: timeouts, error classification, scripts and the layout version.

RedisStore (watcher.store.redis) builds the StateStore on this; the key layout is described there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from watcher.errors import StoreBroken, StoreUnavailable
from watcher.store import redis_rows as rows
from watcher.store.redis_scripts import register_scripts

SCHEMA_VERSION = 2
# Server replies that mean "not now" (failover, full memory, loading), not a bug.
_TRANSIENT_REPLIES = frozenset({"READONLY", "OOM", "LOADING", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN"})
# Replies that no retry can mend: the prefix holds keys of another kind, or we may not run commands.
_BROKEN_REPLIES = frozenset({"WRONGTYPE", "NOPERM", "NOAUTH", "WRONGPASS"})
CHUNK = 500  # records per pipeline or script call: bounded latency for other clients


def _where(url: str) -> str:
    """host:port (or the socket path) of a Redis URL: never its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.hostname or 'localhost'}:{port}"


#: Replies redis-py raises as their own classes (their text no longer starts with the reply word).
_TRANSIENT_ERRORS: tuple[type[Exception], ...] = tuple(
    cls
    for cls in (
        getattr(redis.exceptions, name, None)
        for name in ("ReadOnlyError", "OutOfMemoryError", "MasterDownError", "TryAgainError",
                     "ClusterDownError", "BusyLoadingError", "ExecAbortError")
    )
    if isinstance(cls, type) and issubclass(cls, Exception)
)


def _reply_word(exc: redis.exceptions.ResponseError) -> str:
    """The error code of a server reply, also when a pipeline wrapped it in its own text."""
    text = str(exc).rpartition("caused error: ")[2]
    return text.split(" ", 1)[0]


class RedisConnection:
    """One client to one Redis and the store's prefix there.

    `server_time=False` measures leases by the caller's `now` instead of the server's TIME
    (for tests that pass synthetic times). Every connection times out: a silent network
    drop or a paused server surfaces as StoreUnavailable within `socket_timeout`.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "import-watcher",
        server_time: bool = True,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        health_check_interval: int = 15,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.server_time = server_time
        self._client_options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "health_check_interval": health_check_interval,
            # No retries: a script whose answer timed out may have run, and running it again
            # could claim twice or refuse its own record. The caller backs off instead.
            "retry": Retry(NoBackoff(), 0),
        }
        self._where = _where(url)
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    # --- plumbing -----------------------------------------------------------

    @property
    def _r(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("Redis store is not open")
        return self._client

    def _say(self, what: str, exc: BaseException) -> str:
        """One line naming the server (never the password) and what went wrong."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        password = urlsplit(self.url).password
        if password:
            text = text.replace(password, "***")
        return f"Redis store at {self._where} {what}: {text}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise StoreBroken(self._say("refused our credentials", exc)) from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise StoreUnavailable(self._say("unreachable", exc)) from exc
        except redis.exceptions.InvalidResponse as exc:
            raise StoreBroken(self._say("does not speak the Redis protocol", exc)) from exc
        except _TRANSIENT_ERRORS as exc:
            # redis-py turns these replies into classes of their own and drops the reply word:
            # a failover (READONLY), a full server (OOM), a loading or masterless replica.
            raise StoreUnavailable(self._say("not accepting writes", exc)) from exc
        except redis.exceptions.NoPermissionError as exc:
            raise StoreBroken(self._say("refused the command (ACL)", exc)) from exc
        except redis.exceptions.ResponseError as exc:
            # Passing states of the store, not bugs: callers back off and retry.
            word = _reply_word(exc)
            if word in _TRANSIENT_REPLIES:
                raise StoreUnavailable(self._say("not accepting writes", exc)) from exc
            if word in _BROKEN_REPLIES:
                raise StoreBroken(self._say("cannot be used", exc)) from exc
            raise

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def _clock(self, now: float | None) -> str:
        """The scripts' lease clock argument: "" for the server's TIME, else the caller's now."""
        return "" if self.server_time or now is None else rows.num(now)

    async def _run(self, name: str, now: float | None, *args: str | int) -> Any:
        """Run one Lua script: one round trip, atomic on the server."""
        with self._errors():
            script = self._scripts[name]
            return await script(keys=[self._key("jobs:due")], args=[self.prefix, self._clock(now), *args])

    async def _run_many(self, name: str, now: float | None, calls: Sequence[Sequence[str | int]]) -> list[Any]:
        """Run one Lua script once per argument list in one MULTI/EXEC: one round trip, atomic."""
        if not calls:
            return []
        script, keys, clock = self._scripts[name], [self._key("jobs:due")], self._clock(now)
        with self._errors():
            async with self._r.pipeline(transaction=True) as pipe:
                for args in calls:
                    await script(keys=keys, args=[self.prefix, clock, *args], client=pipe)
                return list(await pipe.execute())

    async def _renew(self, name: str, leases: Sequence[tuple[str, str]], now: float, lease: float) -> list[bool]:
        """Run a renew script over (id, token) pairs: each held one extended to lease-clock now + lease."""
        if not leases:
            return []
        flat = [part for pair in leases for part in pair]
        return [bool(answer) for answer in await self._run(name, now, rows.num(lease), *flat)]

    async def open(self) -> None:
        """Connect, check the server answers, and record, check or upgrade the layout version."""
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(self.url, decode_responses=True, **self._client_options)
        try:
            with self._errors():
                await client.ping()
                self._scripts = register_scripts(client)
                self._client = client
                await self._check_layout(client)
        except BaseException:
            self._client = None
            await client.aclose()
            raise

    async def _check_layout(self, client: aioredis.Redis) -> None:
        await client.setnx(self._key("schema"), str(SCHEMA_VERSION))
        raw = await client.get(self._key("schema"))
        try:
            version = int(cast("str", raw))
        except (TypeError, ValueError):
            raise StoreBroken(f"Redis store {self.prefix!r} at {self._where} has no readable layout version") from None
        if version > SCHEMA_VERSION:
            raise StoreBroken(
                f"Redis store {self.prefix!r} at {self._where} has layout version {version}, newer"
                f" than this import-watcher supports ({SCHEMA_VERSION}); upgrade import-watcher"
            )
        if version == 1:
            start = 0
            while (indexed := int(await self._run("index_deliveries", None, start, CHUNK))) == CHUNK:
                start += indexed
            await client.set(self._key("schema"), str(SCHEMA_VERSION))

    def hurry(self) -> None:
        """Every call already has its socket and connect timeouts (socket_timeout)."""

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def ping(self) -> None:
        """Raise StoreUnavailable when Redis does not answer."""
        with self._errors():
            await self._r.ping()

    async def _hashes(self, kind: str, ids: Sequence[str], fields: Sequence[str] = ()) -> list[dict[str, str]]:
        """HGETALL (or HMGET of `fields`) many records, one pipeline per chunk; vanished ones are skipped."""
        found: list[dict[str, str]] = []
        for start in range(0, len(ids), CHUNK):
            with self._errors():
                pipe = self._r.pipeline(transaction=False)
                for record_id in ids[start : start + CHUNK]:
                    key = self._key(f"{kind}:{record_id}")
                    if fields:
                        pipe.hmget(key, list(fields))
                    else:
                        pipe.hgetall(key)
                replies = await pipe.execute()
            for reply in replies:
                h = dict(zip(fields, reply, strict=True)) if fields else reply
                if h and h.get("id") is not None:
                    found.append(h)
        return found

    async def _first_score(self, name: str) -> float | None:
        with self._errors():
            first = await self._r.zrange(self._key(name), 0, 0, withscores=True)
        return float(first[0][1]) if first else None
