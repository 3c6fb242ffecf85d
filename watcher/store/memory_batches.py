"""The memory store's batches: counted when a job joins, ends or leaves, claimed and finished fenced.

The rules every backend keeps (SQLite and Redis the same, in their transactions and scripts):
- Any change to a batch's members or outcomes sets quiet_since = now and revokes a claim on it,
  so a summary in progress can never be written over a batch that changed under it.
- A job joining a finished batch reopens it; summaries and last_summary_id stay, so the next
  summary continues the last.
- A batch left with no jobs is forgotten if it was never summarised, else it stays finished.
- Purging a finished job (retention) takes it out of `batch_jobs` but not out of the counts:
  its batch's summary was written, and the batch still says how many jobs it had.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from watcher.models import Batch, BatchPhase, Lease
from watcher.store.tokens import new_token


@dataclass(slots=True)
class _BatchRow:
    batch: Batch
    members: set[str]
    token: str | None = None
    until: float | None = None

    def live(self, now: float) -> bool:
        return self.token is not None and self.until is not None and self.until > now


def _changed(row: _BatchRow, batch: Batch, now: float) -> None:
    """Store a change to members or outcomes: quiet from now, and any claim revoked."""
    row.batch = replace(batch, quiet_since=now)
    row.token = row.until = None


class MemoryBatches:
    """Batch rows of a MemoryStore, kept in step by its add, record and remove calls."""

    def __init__(self) -> None:
        self.rows: dict[str, _BatchRow] = {}

    def join(self, name: str, job_id: str, now: float) -> None:
        """Count a new member; a finished batch reopens."""
        row = self.rows.get(name)
        if row is None:
            batch = Batch(name, BatchPhase.OPEN, 0, 0, {}, started_at=now, quiet_since=now)
            row = self.rows[name] = _BatchRow(batch, set())
        row.members.add(job_id)
        _changed(row, replace(row.batch, jobs=row.batch.jobs + 1, phase=BatchPhase.OPEN), now)

    def count(self, name: str, outcome: str, now: float) -> None:
        """Count a member's final outcome."""
        row = self.rows.get(name)
        if row is not None:
            outcomes = dict(row.batch.outcomes)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            _changed(row, replace(row.batch, final=row.batch.final + 1, outcomes=outcomes), now)

    def leave(self, name: str, job_id: str, outcome: str | None, now: float, *, uncount: bool) -> None:
        """Take a member out of `batch_jobs`, and out of the counts when `uncount` (not a purge)."""
        row = self.rows.get(name)
        if row is None:
            return
        row.members.discard(job_id)
        if not uncount:
            return
        jobs, final, outcomes = row.batch.jobs - 1, row.batch.final, dict(row.batch.outcomes)
        if outcome is not None:
            final -= 1
            outcomes[outcome] = outcomes.get(outcome, 0) - 1
            if outcomes[outcome] <= 0:
                del outcomes[outcome]
        if jobs <= 0 and row.batch.summaries == 0:
            del self.rows[name]
            return
        phase = BatchPhase.FINISHED if jobs <= 0 else row.batch.phase
        _changed(row, replace(row.batch, jobs=max(jobs, 0), final=max(final, 0), outcomes=outcomes, phase=phase), now)

    def get(self, name: str) -> Batch | None:
        row = self.rows.get(name)
        return None if row is None else row.batch

    def listed(self, phase: str | None, limit: int | None, after: tuple[float, str] | None) -> list[Batch]:
        """Batches ordered by (started_at, name) after the cursor, of one phase when given."""
        found = sorted((row.batch for row in self.rows.values()), key=lambda b: (b.started_at, b.name))
        if after is not None:
            found = [b for b in found if (b.started_at, b.name) > after]
        if phase is not None:
            found = [b for b in found if b.phase.value == phase]
        return found if limit is None else found[: max(0, limit)]

    def claim(self, *, cutoff: float, now: float, limit: int, owner: str, lease: float) -> list[Batch]:
        """Open, all-final batches quiet since `cutoff` or earlier with no live lease, leased."""
        settled = sorted(
            (row for row in self.rows.values() if _settled(row.batch, cutoff) and not row.live(now)),
            key=lambda row: (row.batch.quiet_since, row.batch.name),
        )[: max(0, limit)]
        claimed = []
        for row in settled:
            row.token, row.until = new_token(owner), now + lease
            claimed.append(replace(row.batch, lease=Lease(row.token, row.until)))
        return claimed

    def finish(self, name: str, *, token: str, now: float, summary_id: str) -> bool:
        """Mark a held, open, all-final batch finished; False (nothing changed) otherwise."""
        row = self.rows.get(name)
        if row is None or row.token != token or not row.live(now):
            return False
        if row.batch.phase is not BatchPhase.OPEN or not row.batch.all_final:
            return False
        row.batch = replace(
            row.batch,
            phase=BatchPhase.FINISHED,
            finished_at=now,
            summaries=row.batch.summaries + 1,
            last_summary_id=summary_id,
        )
        row.token = row.until = None
        return True

    def renew(self, name: str, token: str, now: float, lease: float) -> bool:
        """Extend a claim held by `token` whose lease still lives; a lapsed or stale one stays lost."""
        row = self.rows.get(name)
        if row is None or row.token != token or not row.live(now):
            return False
        row.until = now + lease
        return True

    def release(self, name: str, token: str) -> None:
        row = self.rows.get(name)
        if row is not None and row.token == token:
            row.token = row.until = None

    def members(self, name: str) -> set[str]:
        row = self.rows.get(name)
        return set() if row is None else set(row.members)

    def counts(self) -> dict[str, int]:
        found = dict.fromkeys((p.value for p in BatchPhase), 0)
        for row in self.rows.values():
            found[row.batch.phase.value] += 1
        return found


def _settled(batch: Batch, cutoff: float) -> bool:
    return batch.phase is BatchPhase.OPEN and batch.jobs > 0 and batch.all_final and batch.quiet_since <= cutoff
