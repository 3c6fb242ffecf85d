"""JobState's hand-written copy agrees with dataclasses.replace for every field, present and future."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from watcher.models import JobState


def test_polled_is_replace_of_next_poll_at_and_polls() -> None:
    """Each field holds a distinct sentinel (JobState does not check types at run time), so a field
    passed in the wrong place, or a field added to JobState and not to `polled`, shows as a mismatch."""
    values: dict[str, Any] = {field.name: object() for field in fields(JobState)}
    job = JobState(**values)
    copied = job.polled(12.5, 7)
    assert replace(job, next_poll_at=12.5, polls=7) == copied
    assert {f.name: getattr(copied, f.name) for f in fields(JobState)} == {**values, "next_poll_at": 12.5, "polls": 7}
