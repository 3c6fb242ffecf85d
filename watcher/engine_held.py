"""Held jobs: jobs whose poll changed nothing but the next poll time, kept claimed in memory.

A `pending` answer equal to the last one costs no durable write: the engine keeps the job
under its lease (renewed with every other claim by the ClaimLoop renewer) in this due-heap
and polls it again at its planned time, served before new store claims. It writes only
when the answer changes, the job ends, the next poll lies beyond the hold horizon, the
engine drains (each held job with its planned next_poll_at and polls count), and it
drops the job when its renewal is refused (stopped, or taken by another replica).

Invariant: a held job is in the store under this engine's live lease, so no other replica
polls it, and its due score there is that lease's expiry: after kill -9 it is due again
within one lease of the last renewal, and a stopped job's renewal fails within lease / 3.
The store needs nothing more (claims check lease_until, not the planned time).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

from watcher.models import JobState


class HeldJobs:
    """A due-heap of held jobs, each a JobState carrying its planned next_poll_at and polls."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, JobState]] = []
        self._order = itertools.count()  # ties by arrival, and JobStates are never compared
        #: Next poll time of the last job a full store claim handed out: store jobs due before
        #: it may still wait there, so held jobs planned later wait too (inf: the store kept up).
        self.frontier = math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, job: JobState) -> None:
        heapq.heappush(self._heap, (job.next_poll_at, next(self._order), job))

    def next_due_at(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float, limit: int, alive: Callable[[JobState], bool]) -> list[JobState]:
        """Up to `limit` held jobs due at `now` and not after the frontier, earliest first;
        jobs whose claim is no longer held (`alive` false: renewal refused) are dropped."""
        due: list[JobState] = []
        heap, until = self._heap, min(now, self.frontier)
        while heap and len(due) < limit and heap[0][0] <= until:
            job = heapq.heappop(heap)[2]
            if alive(job):
                due.append(job)
        return due

    def note_claim(self, asked: int, claimed: list[JobState]) -> None:
        """Move the frontier: a full claim says the store may have more due up to its last job."""
        self.frontier = claimed[-1].next_poll_at if claimed and len(claimed) >= asked else math.inf

    def take_all(self, alive: Callable[[JobState], bool]) -> list[JobState]:
        """Every held job still claimed (the drain writes them), emptying the heap."""
        jobs = [job for _, _, job in self._heap if alive(job)]
        self._heap.clear()
        return jobs


def job_token(job: JobState) -> str:
    """The lease token a claim handed out with `job`."""
    if job.lease is None:
        raise ValueError(f"job {job.id} was not claimed")
    return job.lease.token
