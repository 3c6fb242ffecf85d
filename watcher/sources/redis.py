"""The Redis stream source: every replica reads one stream as a consumer of one shared group.

An entry is acknowledged only once its job is in the store (new or already known),
so a replica that dies in between leaves it pending; after `claim_idle` another
replica takes it over with XAUTOCLAIM. Storing is idempotent, which makes an
entry handled twice harmless. A malformed entry is copied to `<stream>:dead` with
a `reason` and acknowledged in one MULTI, so it is neither lost nor retried
forever. While the store is unavailable nothing more is read or acknowledged:
the same entry is retried with backoff, and the stream is the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from watcher.config import RedisSourceSettings
from watcher.errors import StoreUnavailable
from watcher.models import JobRef
from watcher.sources.base import Intake, InvalidBatch, parse_job
from watcher.strictjson import strict_json

log = structlog.get_logger("watcher.sources.redis")

#: Entries per XREADGROUP / XAUTOCLAIM call.
BATCH = 100
#: XAUTOCLAIM calls per reclaim pass, so a huge backlog of orphans cannot starve new entries.
RECLAIM_ROUNDS = 10
#: Upper bound between two reclaim passes, whatever claim_idle says.
RECLAIM_EVERY_MAX = 30.0
#: An entry larger than this is dead-lettered unread (the HTTP API takes 64 KiB too).
MAX_ENTRY_BYTES = 64 * 1024
#: The dead-letter stream is capped (approximately) so a flood of junk cannot fill Redis.
DEAD_MAXLEN = 100_000
CONNECT_TIMEOUT = 3.0
CLOSE_TIMEOUT = 2.0

Fields = Mapping[bytes, bytes]
Entry = tuple[bytes, Fields | None]  # fields are None for an entry deleted while pending


def redis_location(url: str) -> str:
    """host:port (or the socket path) of a Redis URL: what logs may show, never the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "unix"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.hostname or 'localhost'}:{port}"


def client_url(url: str) -> str:
    """The URL without `prefix`, which a state URL may carry and redis-py would reject."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "prefix"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def read_entry(fields: Fields) -> JobRef:
    """The job an entry names: a `job` field holding JSON ({id, labels, notify, batch}), or a bare `id`;
    ValueError says why not."""
    if sum(len(key) + len(value) for key, value in fields.items()) > MAX_ENTRY_BYTES:
        raise ValueError(f"entry larger than {MAX_ENTRY_BYTES} bytes")
    job = fields.get(b"job")
    if job is not None:
        try:
            raw = strict_json(job)  # the API's rules: no NaN, Infinity or lone surrogate gets stored
        except ValueError as exc:
            raise ValueError(f"`job` is not valid JSON: {exc}") from None
        try:
            return parse_job(raw)
        except InvalidBatch as exc:
            raise ValueError(f"`job.batch`: {exc}") from None
    bare = fields.get(b"id")
    if bare is not None:
        try:
            return parse_job(bare.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("`id` is not UTF-8 text") from None
    raise ValueError("missing field `job` (a JSON object) or `id`")


def stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id as a comparable (milliseconds, sequence)."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply for one stream (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [item[1] for item in reply]
    return [(entry_id, fields) for entries in streams for entry_id, fields in entries]


def _describe(exc: BaseException) -> str:
    """The error for a log line; redis-py messages name host:port, never the password."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class RedisStreamSource:
    """Reads job refs from a Redis stream as one consumer of a group shared by every replica."""

    def __init__(
        self,
        settings: RedisSourceSettings,
        intake: Intake,
        *,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.location = redis_location(settings.url)
        self.name = f"redis:{self.location}/{settings.stream}"
        self.consumer = settings.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.dead_stream = settings.stream + ":dead"
        self.started = False
        #: entries by what became of them: added, known, dead, deleted, reclaimed
        self.stats: Counter[str] = Counter()
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._failures = 0
        self._client: aioredis.Redis | None = None
        self._next_reclaim = 0.0
        # Our own pending entries come first: those of a previous life under the same
        # consumer name (containers often restart as the same host and pid), and the
        # entry a store outage interrupted.
        self._own_pending = True

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Connect and create the group if Redis answers; Redis trouble never raises. `run` reads."""
        self._client = aioredis.Redis.from_url(
            client_url(self.settings.url),
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=self.settings.block + 10.0,  # longer than a blocking read
            retry=Retry(NoBackoff(), 0),  # the reader's own backoff handles every retry
        )
        try:
            await self._ensure_group()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("source.redis_unavailable", source=self.name, redis=self.location, error=_describe(exc))

    async def refresh(self) -> None:
        """Nothing to do: `run`, supervised by the daemon, reads as entries arrive."""

    async def close(self) -> None:
        """Disconnect (after `run` has been stopped); unacknowledged entries stay pending for a replica."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(redis.exceptions.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._forget_consumer(client)
            await client.aclose()
        self.started = False

    async def idle(self) -> bool:
        """True when the group has read every entry and none is pending (for `run --until-idle`)."""
        if not self.started or self._client is None:
            return False
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xinfo_groups(self.settings.stream)
                pipe.xrevrange(self.settings.stream, count=1)
                groups, last = await pipe.execute()
        except (redis.exceptions.RedisError, OSError):
            return False
        group = next((g for g in groups if _text(g.get("name")) == self.settings.group), None)
        if group is None or int(group.get("pending") or 0):
            return False
        if not last:
            return True
        return stream_id(last[0][0]) <= stream_id(group.get("last-delivered-id") or "0-0")

    # --- the reader ------------------------------------------------------------

    @property
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("source used before start")
        return self._client

    async def _ensure_group(self) -> None:
        """XGROUP CREATE at the start of the stream (so earlier entries are read); BUSYGROUP is fine."""
        try:
            await self._redis.xgroup_create(self.settings.stream, self.settings.group, id="0", mkstream=True)
            log.info("source.group_created", source=self.name, group=self.settings.group)
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        if not self.started:
            log.info("source.started", source=self.name, group=self.settings.group, consumer=self.consumer)
        self.started = True

    async def run(self, stop: asyncio.Event) -> None:
        """Read, store and acknowledge until `stop`; Redis or store trouble only pauses it.

        Anything else (a bug) propagates to the daemon's supervisor, which logs it with its
        traceback, counts it and runs this again with backoff.
        """
        while not stop.is_set():
            try:
                if not self.started:
                    await self._ensure_group()
                await self._reclaim_if_due()
                await self._read_batch()
                self._failures = 0
            except (redis.exceptions.RedisError, OSError, TimeoutError, StoreUnavailable) as exc:
                self._own_pending = True  # the entries read and not acknowledged come first again
                await self._back_off(exc)
            except BaseException:
                self._own_pending = True
                raise

    async def _back_off(self, exc: Exception) -> None:
        """Log a failed round and wait, exponentially longer, with jitter so replicas spread out."""
        self._failures += 1
        delay = min(self._retry_max, self._retry_initial * 2.0 ** (self._failures - 1))
        delay = round(delay * random.uniform(0.8, 1.0), 3)  # noqa: S311 - jitter, not security
        context = {"source": self.name, "redis": self.location, "error": _describe(exc), "retry_in": delay}
        if isinstance(exc, StoreUnavailable):
            log.warning("source.store_unavailable", **context)
        elif isinstance(exc, redis.exceptions.ResponseError):
            if str(exc).startswith("NOGROUP"):  # the stream or group was deleted: create it again
                self.started = False
            log.warning("source.redis_failed", **context)
        else:  # a connection error, a timeout
            log.warning("source.redis_unavailable", **context)
        await asyncio.sleep(delay)

    async def _read_batch(self) -> None:
        """One XREADGROUP: our own pending entries while there are any, else new ones (blocking)."""
        stream, group = self.settings.stream, self.settings.group
        if self._own_pending:
            reply = await self._redis.xreadgroup(group, self.consumer, {stream: "0"}, count=BATCH)
        else:
            block_ms = max(1, round(self.settings.block * 1000))
            reply = await self._redis.xreadgroup(group, self.consumer, {stream: ">"}, count=BATCH, block=block_ms)
        entries = _entries(reply)
        if self._own_pending and not entries:
            self._own_pending = False
        await self._handle(entries)

    async def _reclaim_if_due(self) -> None:
        """Take over entries that some consumer (a dead replica) left pending for over claim_idle."""
        now = asyncio.get_running_loop().time()
        if now < self._next_reclaim:
            return
        self._next_reclaim = now + min(self.settings.claim_idle / 2, RECLAIM_EVERY_MAX)
        cursor: bytes | str = "0-0"
        for _ in range(RECLAIM_ROUNDS):
            cursor, claimed, *_ = await self._redis.xautoclaim(
                self.settings.stream, self.settings.group, self.consumer,
                min_idle_time=max(1, round(self.settings.claim_idle * 1000)), start_id=cursor, count=BATCH,
            )  # fmt: skip
            if claimed:
                self.stats["reclaimed"] += len(claimed)
                log.info("source.entries_reclaimed", source=self.name, entries=len(claimed))
                await self._handle(claimed)
            if stream_id(cursor) == (0, 0):
                break

    async def _handle(self, entries: Sequence[Entry]) -> None:
        """Store each entry's job in order, then acknowledge the stored ones in one XACK."""
        stored: list[bytes] = []
        for entry_id, fields in entries:
            try:
                if await self._take(entry_id, fields):
                    stored.append(entry_id)
            except StoreUnavailable:
                # Back-pressure: acknowledge what was stored, stop here; this entry comes first again.
                await self._ack(stored)
                raise
        await self._ack(stored)

    async def _take(self, entry_id: bytes, fields: Fields | None) -> bool:
        """Store one entry's job: True when it is to be acknowledged with the batch."""
        if not fields:  # deleted from the stream while pending: nothing left to read
            self.stats["deleted"] += 1
            return True
        try:
            ref = read_entry(fields)
        except ValueError as exc:
            await self._dead_letter(entry_id, fields, str(exc))
            return False
        # A notifier this replica does not know is stored all the same: replicas roll out
        # config changes one by one, and one that knows it delivers (DESIGN.md, replicas).
        unknown = [name for name in ref.notify or () if name not in self.intake.notifiers]
        if unknown:
            log.warning("source.notifier_unknown_here", source=self.name, job_id=ref.id, notifiers=unknown)
        (added,) = await self.intake.add_from_source([ref], source=self.name)
        self.stats["added" if added else "known"] += 1
        if added:
            log.info("source.job_added", source=self.name, job_id=ref.id, entry_id=entry_id.decode())
        else:
            log.debug("source.job_known", source=self.name, job_id=ref.id, entry_id=entry_id.decode())
        return True

    async def _dead_letter(self, entry_id: bytes, fields: Fields, reason: str) -> None:
        """Copy the entry to `<stream>:dead` with a reason and acknowledge it, atomically."""
        copy = {**fields, b"reason": reason.encode(), b"entry_id": entry_id}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, copy, maxlen=DEAD_MAXLEN, approximate=True)  # type: ignore[arg-type]
            pipe.xack(self.settings.stream, self.settings.group, entry_id)
            await pipe.execute()
        self.stats["dead"] += 1
        log.warning(
            "source.entry_dead", source=self.name, entry_id=entry_id.decode(), reason=reason,
            dead_stream=self.dead_stream,
        )  # fmt: skip

    async def _ack(self, entry_ids: list[bytes]) -> None:
        if entry_ids:
            await self._redis.xack(self.settings.stream, self.settings.group, *entry_ids)

    async def _forget_consumer(self, client: aioredis.Redis) -> None:
        """Drop our consumer from the group when it holds nothing, so restarts leave no trail."""
        stream, group = self.settings.stream, self.settings.group
        mine = await client.xpending_range(stream, group, min="-", max="+", count=1, consumername=self.consumer)
        if not mine:
            await client.xgroup_delconsumer(stream, group, self.consumer)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["RedisStreamSource", "read_entry", "redis_location"]
