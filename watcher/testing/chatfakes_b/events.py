"""Events for chat notifier tests, built by the watcher's own builders."""

from __future__ import annotations

from typing import Any

from watcher.batches import batch_event, summary_id
from watcher.models import Batch, BatchPhase, Outcome
from watcher.notify.samples import SAMPLE_AT, sample_alert, sample_event, sample_job

#: The five final outcomes of a job.
OUTCOMES = ("completed", "errored", "failed", "timed_out", "not_found")


def big_batch_event(jobs: int = 500, name: str = "nightly-big") -> dict[str, Any]:
    """A batch summary of `jobs` jobs: mostly completed, every tenth errored, every fiftieth failed."""
    outcomes = [
        Outcome.FAILED if i % 50 == 7 else Outcome.ERRORED if i % 10 == 3 else Outcome.COMPLETED for i in range(jobs)
    ]
    listed = [
        sample_job(f"{name}-{i:04}", added=SAMPLE_AT - 3600 + i, outcome=o, batch=name) for i, o in enumerate(outcomes)
    ]
    tally: dict[str, int] = {}
    for outcome in outcomes:
        tally[outcome.value] = tally.get(outcome.value, 0) + 1
    batch = Batch(name, BatchPhase.OPEN, jobs, jobs, tally, SAMPLE_AT - 3600, SAMPLE_AT - 60)
    return batch_event(batch, listed, now=SAMPLE_AT, summary_id=summary_id(name, 0), public_url="https://w.example.com")


def every_event() -> list[tuple[str, dict[str, Any]]]:
    """The five outcomes, a 500-job batch summary, stuck warnings (single and grouped), alerts, a digest."""
    events = [(outcome, sample_event(outcome)) for outcome in OUTCOMES]
    events.append(("batch of 500", big_batch_event()))
    events += [(name, sample_event(name)) for name in ("stuck", "stuck batch", "digest")]
    events += [(f"alert {kind}", sample_alert(kind)) for kind in ("key_refused", "delivery_dead", "key_accepted")]
    return events
