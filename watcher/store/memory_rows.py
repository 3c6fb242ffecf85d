"""The memory store's pieces: JSON copies, fencing tokens, lease-carrying rows and a due heap."""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from watcher.models import Delivery, JobState, Snapshot


def _json_copy(value: Any) -> Any:
    """A deep copy with the types JSON gives back (what the durable stores return)."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def _snapshot_copy(snapshot: Snapshot | None) -> Snapshot | None:
    return None if snapshot is None else Snapshot.from_dict(_json_copy(snapshot.to_dict()))


@dataclass(slots=True)
class _Lease:
    """Who holds a record, until when, and when it is due (the expiry while leased)."""

    due_at: float  # next_poll_at / next_attempt_at, or the lease expiry while leased
    token: str | None = None
    until: float | None = None

    def held(self, token: str, now: float) -> bool:
        return self.token == token and self.until is not None and self.until > now


@dataclass(slots=True)
class _JobRow:
    job: JobState
    lease: _Lease


@dataclass(slots=True)
class _DeliveryRow:
    delivery: Delivery
    lease: _Lease


_IsCurrent = Callable[[str, float], bool]


class _DueHeap:
    """A min-heap of (due_at, id); stale entries are dropped when they surface."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due_at: float, item_id: str) -> None:
        heapq.heappush(self._heap, (due_at, item_id))

    def pop_due(self, now: float, is_current: _IsCurrent) -> tuple[float, str] | None:
        """Pop the earliest live entry due at `now`, discarding stale ones on the way."""
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if is_current(entry[1], entry[0]):
                return entry
        return None

    def peek(self, is_current: _IsCurrent) -> float | None:
        while self._heap:
            due_at, item_id = self._heap[0]
            if is_current(item_id, due_at):
                return due_at
            heapq.heappop(self._heap)
        return None

    def rebuild(self, entries: Iterable[tuple[float, str]]) -> None:
        self._heap = list(entries)
        heapq.heapify(self._heap)
