"""The JobSource protocol and the one way any source hands a job to the watcher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from watcher.clock import Clock
from watcher.errors import InvalidJobId
from watcher.models import JobRef
from watcher.policy import PollPolicy, first_poll_at
from watcher.store.base import AddsJobs, StateStore


class JobSource(Protocol):
    """Feeds job refs into the store; `started` backs /readyz."""

    name: str
    started: bool

    async def start(self) -> None: ...

    async def refresh(self) -> None:
        """Look for new jobs now (periodic, and on SIGHUP)."""

    async def close(self) -> None: ...


class Intake:
    """Validates and stores new jobs; shared by every source, the CLI and the API."""

    def __init__(self, store: StateStore, policy: PollPolicy, clock: Clock, notifiers: Sequence[str]) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.notifiers = tuple(notifiers)
        self.on_added: list[Any] = []

    async def add(self, ref: JobRef) -> bool:
        """Store a job; True when new, False when already known (a no-op)."""
        (added,) = await self.add_many([ref])
        return added

    async def add_many(self, refs: Sequence[JobRef]) -> list[bool]:
        """Store several jobs at once (one transaction where the store can); True for each new one."""
        now = self.clock.now()
        first = first_poll_at(self.policy, now)
        if isinstance(self.store, AddsJobs):
            added = await self.store.add_jobs(refs, now=now, first_poll_at=first)
        else:
            added = [await self.store.add_job(ref, now=now, first_poll_at=first) for ref in refs]
        if any(added):
            for callback in self.on_added:
                callback()
        return added

    def check_notify(self, notify: Sequence[str] | None) -> None:
        """Raise ValueError naming any notifier that is not configured."""
        unknown = [n for n in notify or () if n not in self.notifiers]
        if unknown:
            configured = ", ".join(self.notifiers) or "none"
            raise ValueError(f"unknown notifier {', '.join(map(repr, unknown))} (configured: {configured})")


def parse_job(raw: Any) -> JobRef:
    """A job as the job file, a queue message or the API gives it: a bare id or {id, labels, notify}."""
    if isinstance(raw, str):
        return JobRef(raw)
    if not isinstance(raw, Mapping):
        raise ValueError("expected a job id or a mapping with `id`")
    unknown = set(raw) - {"id", "labels", "notify"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (expected id, labels, notify)")
    if "id" not in raw:
        raise ValueError("missing `id`")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in labels.items()
    ):
        raise ValueError("`labels` must be a mapping of strings")
    notify = raw.get("notify")
    if notify is not None:
        if isinstance(notify, str):
            notify = [notify]
        if not isinstance(notify, list) or not all(isinstance(n, str) and n for n in notify):
            raise ValueError("`notify` must be a list of notifier names")
    try:
        return JobRef(
            raw["id"], {k: str(v) for k, v in labels.items()}, tuple(notify) if notify is not None else None
        )
    except InvalidJobId as exc:
        raise ValueError(str(exc)) from None
