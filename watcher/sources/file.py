"""The job file source: re-read when it changes; removed entries keep being watched.

A file's top-level `batch:` puts every job it lists in that batch; an entry's own `batch:` wins.

A job file is data, not configuration: `${VAR}` stays as written, and a job stopped or
purged (tombstoned) is never brought back by still being listed.

The daemon need not wait for the file: after a restart the jobs it lists are in the store
already, so it calls `begin` and polling starts from the store at once while the file is
read (parsed in a thread, so the event loop keeps polling) and its jobs added beside it.
`started`, which readiness and `--until-idle` read, turns True once a read has completed.
`start` (begin, then wait for that read) is for callers that need the jobs stored first.

A restart with the same file parses nothing: after a read that stored every job the file
lists (no problem, no store outage), the store's meta keeps the file's fingerprint; a read
that finds the same fingerprint there is done at once (hashing 5 MB takes milliseconds,
parsing them seconds). Any change to the bytes, while running or while down, is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from watcher.errors import ConfigError, StoreBroken, StoreUnavailable
from watcher.models import JobRef
from watcher.sources.base import Intake, InvalidBatch, parse_batch, parse_job
from watcher.yamlloc import JOB_FILE_MAX_BYTES, FileRefused, Problems, load_located, read_capped

log = structlog.get_logger("watcher.sources.file")

#: Jobs added per store transaction: a 100,000-job file is 100 short transactions, with
#: polls, the heartbeat and other writers (replicas, `add`) let in between.
ADD_BATCH = 1000


def load_job_file(path: Path, notifiers: tuple[str, ...] | None = None) -> tuple[list[JobRef], list[str]]:
    """Parse a job file: the valid jobs, and every problem as FILE:LINE: jobs[i]: message."""
    text, refused = read_job_file(path)
    return ([], refused) if text is None else parse_job_text(path, text, notifiers)


def read_job_file(path: Path) -> tuple[str | None, list[str]]:
    """A job file's text, or None and why it cannot be read."""
    if not path.exists():
        return None, [f"{path}:1: job file not found"]
    try:
        return read_capped(path, JOB_FILE_MAX_BYTES), []
    except FileRefused as exc:
        return None, [f"{path}:1: cannot read the job file: {exc}"]


def fingerprint(text: str) -> str:
    """What identifies a job file's content: its SHA-256 and size."""
    data = text.encode("utf-8")
    return f"sha256:{hashlib.sha256(data).hexdigest()}:{len(data)}"


def fingerprint_key(path: Path) -> str:
    """The store meta key holding the fingerprint of the last file at `path` read in full."""
    return f"job-file:{path}"


def parse_job_text(
    path: Path, text: str, notifiers: tuple[str, ...] | None = None
) -> tuple[list[JobRef], list[str]]:
    """load_job_file's parse of text already read."""
    problems = Problems(str(path))
    # No ${VAR} expansion: whoever may edit a job file must not read the environment through a label.
    data = load_located(text, problems, expand=False)
    if problems:
        return [], problems.sorted()
    if data is None:
        return [], []
    if not isinstance(data, dict) or set(data) - {"jobs", "batch"}:
        problems.add((), "expected a mapping with the key `jobs:` holding a list (and optionally `batch:`)")
        return [], problems.sorted()
    items = data.get("jobs") or []
    if not isinstance(items, list):
        problems.add(("jobs",), "expected a list of job ids or {id, labels, notify, batch} mappings")
        return [], problems.sorted()
    try:
        batch = None if data.get("batch") is None else parse_batch(data["batch"])
    except InvalidBatch as exc:
        problems.add(("batch",), str(exc))
        return [], problems.sorted()  # every job would land in the wrong batch (or none)
    return _entries(items, batch, notifiers, problems), problems.sorted()


def _entries(
    items: list[Any], batch: str | None, notifiers: tuple[str, ...] | None, problems: Problems
) -> list[JobRef]:
    """The valid jobs of the `jobs:` list, in order; each invalid one is a located problem."""
    refs: list[JobRef] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            ref = parse_job(item, batch=batch)
        except InvalidBatch as exc:
            problems.add(("jobs", i, "batch"), str(exc))
            continue
        except ValueError as exc:
            problems.add(("jobs", i), str(exc))
            continue
        if notifiers is not None and ref.notify:
            unknown = [n for n in ref.notify if n not in notifiers]
            if unknown:
                problems.add(("jobs", i, "notify"), f"unknown notifier {unknown[0]!r}")
                continue
        if ref.id in seen:
            problems.add(("jobs", i), f"job {ref.id} is listed twice")
            continue
        seen.add(ref.id)
        refs.append(ref)
    return refs


class FileSource:
    """Adds the jobs of a YAML job file; a change (mtime, size) triggers a re-read."""

    def __init__(self, path: Path, intake: Intake) -> None:
        self.path = path
        self.intake = intake
        self.name = f"file:{path}"
        self.started = False
        self._signature: tuple[float, int] | None = None
        self._known: set[str] = set()
        self._reading = asyncio.Lock()  # one read at a time: the first may still run at the next refresh
        self._first: asyncio.Task[None] | None = None
        #: called once the file has been read (the daemon rewrites its heartbeat: ready now)
        self.on_started: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        """Read the file and store its jobs; returns once done."""
        self.begin()
        await self.ready()

    def begin(self) -> None:
        """Begin the first read in the background; returns at once (needs a running loop)."""
        if self._first is None:
            self._first = asyncio.create_task(self._first_read(), name=f"source:{self.name}:first-read")

    async def ready(self) -> None:
        """Wait for the first read `begin` started (it logs its own failure)."""
        if self._first is not None:
            await asyncio.shield(self._first)

    async def _first_read(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the periodic refresh tries again; until then, not started
            log.error("source.refresh_failed", source=self.name, error=repr(exc))

    async def idle(self) -> bool:
        """No job still to come from the file: it has been read (for `--until-idle`)."""
        return self.started and not self._reading.locked()

    async def close(self) -> None:
        self.started = False
        if self._first is not None and not self._first.done():
            self._first.cancel()
            await asyncio.gather(self._first, return_exceptions=True)

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read the file if it changed; new ids are stored, known ones are left alone.
        A refresh while a read runs is skipped (forced: waits); the next one sees any change."""
        if self._reading.locked() and not force:
            return
        async with self._reading:
            await self._refresh(force)
            was, self.started = self.started, True
        if not was:
            for callback in self.on_started:
                try:
                    await callback()
                except Exception as exc:  # a heartbeat that cannot be written says so itself, later
                    log.warning("source.on_started_failed", source=self.name, error=repr(exc))

    async def _refresh(self, force: bool) -> None:
        try:
            st = os.stat(self.path)
            signature: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            signature = None
        if signature == self._signature and not force:
            return
        text, seen, problems = await asyncio.to_thread(_read, self.path)
        if seen is not None and not force and seen == await self._remembered():
            self._signature = signature
            log.info("source.job_file_unchanged", source=self.name)
            return
        refs: list[JobRef] = []
        if text is not None:  # parsing 100,000 lines takes a second or more: in a thread, so polls go on
            refs, problems = await asyncio.to_thread(parse_job_text, self.path, text, self.intake.notifiers)
        for problem in problems:
            log.error("source.job_file_problem", problem=problem)
        added = 0
        new = [ref for ref in refs if ref.id not in self._known]
        try:
            for start in range(0, len(new), ADD_BATCH):
                batch = new[start : start + ADD_BATCH]
                added += sum(await self.intake.add_from_source(batch, source=self.name))
                self._known.update(ref.id for ref in batch)
                await asyncio.sleep(0)  # a 100k-job file must not starve polls and the heartbeat
        except StoreUnavailable as exc:
            log.warning("source.store_unavailable", error=str(exc))
            return  # keep the old signature: the next refresh tries again
        self._signature = signature
        if added:
            log.info("source.jobs_added", source=self.name, added=added, listed=len(refs))
        if seen is not None and not problems:  # every job it lists is stored: a restart need not parse it
            await self._remember(seen)

    async def _remember(self, seen: str) -> None:
        """Keep the fingerprint of a file read in full; if the store cannot, a restart parses it again."""
        try:
            await self.intake.store.set_meta(fingerprint_key(self.path), seen)
        except (StoreUnavailable, StoreBroken) as exc:
            log.warning("source.fingerprint_not_kept", source=self.name, error=str(exc))

    async def _remembered(self) -> str | None:
        """The fingerprint of the last file read in full (None: none, or the store cannot say)."""
        try:
            return await self.intake.store.get_meta(fingerprint_key(self.path))
        except StoreUnavailable:
            return None


def _read(path: Path) -> tuple[str | None, str | None, list[str]]:
    """A job file's text and fingerprint, or (None, None, why it cannot be read)."""
    text, refused = read_job_file(path)
    return text, None if text is None else fingerprint(text), refused


def check_job_file(path: Path, notifiers: tuple[str, ...]) -> list[str]:
    """Problems of a job file, for `import-watcher check`."""
    _, problems = load_job_file(path, notifiers)
    return problems


__all__ = ["ConfigError", "FileSource", "check_job_file", "fingerprint", "fingerprint_key", "load_job_file"]
