"""`status` shows a running job's expected finish (from the run times the daemon learned) and its next poll."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.test_cli import write_config
from watcher.cli import main
from watcher.learned import LearnedSchedules
from watcher.models import JobRef, JobState, Outcome, Snapshot
from watcher.store.sqlite import SqliteStore


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def prepare(tmp_path: Path, *, learned: bool) -> float:
    """A running job `run-1` added 60 s ago and a finished `done-1` in the config's store; with `learned`,
    300 finished upserts of about 10 minutes in the stored summary. Returns when run-1 is next polled."""
    now = time.time()

    async def fill() -> float:
        store = SqliteStore(str(tmp_path / "state.db"))
        await store.open()
        try:
            if learned:
                schedules, rng = LearnedSchedules(store), random.Random(4)
                for k in range(300):
                    seconds = rng.lognormvariate(math.log(600), 0.3)
                    done = JobState(id=f"old-{k}", labels={}, notify=None, added_at=now - 9000, next_poll_at=0,
                                    snapshot=Snapshot(status="completed", job_type="upsert"),
                                    outcome=Outcome.COMPLETED)
                    await schedules.observe(done, now - 9000 + seconds)
                assert await schedules.flush(now)
            await store.add_job(JobRef("done-1"), now=now - 120, first_poll_at=now - 120)
            (claimed,) = await store.claim_due_jobs(now=now - 100, limit=1, owner="t", lease=30)
            assert claimed.lease is not None
            assert await store.record_outcome("done-1", token=claimed.lease.token, now=now - 100,
                                              outcome=Outcome.COMPLETED, snapshot=Snapshot(status="completed"),
                                              polls=2, detected_at=now - 100, deliveries=[])
            await store.add_job(JobRef("run-1"), now=now - 60, first_poll_at=now + 30)
            return now + 30
        finally:
            await store.close()

    return asyncio.run(fill())


def test_status_shows_the_expected_finish_and_next_poll(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job running 60 s, of a kind that takes about 10 minutes, is expected to end about 9 minutes from now;
    the table says so beside its next poll, and a finished job has neither."""
    next_poll = prepare(tmp_path, learned=True)
    config = str(write_config(tmp_path))
    assert 0 == main(["status", "-c", config, "--json"])
    views = {v["id"]: v for v in json.loads(capsys.readouterr().out)}
    running, done = views["run-1"], views["done-1"]
    expected = epoch(running["expected_finish_at"])
    assert 400 < expected - time.time() < 700
    assert abs(epoch(running["next_poll_at"]) - next_poll) < 1
    assert done["expected_finish_at"] is None and done["next_poll_at"] is None

    assert 0 == main(["status", "-c", config, "run-1"])
    table = capsys.readouterr().out
    assert f"run-1: expected to finish about {running['expected_finish_at']}, next poll {running['next_poll_at']}" \
        in table
    assert 0 == main(["status", "-c", config, "done-1"])
    assert "expected to finish" not in capsys.readouterr().out


def test_nothing_learned_shows_no_expected_finish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare(tmp_path, learned=False)
    config = str(write_config(tmp_path))
    assert 0 == main(["status", "-c", config, "--json"])
    assert all(v["expected_finish_at"] is None for v in json.loads(capsys.readouterr().out))
    assert 0 == main(["status", "-c", config])
    out = capsys.readouterr().out
    assert "run-1" in out and "expected to finish" not in out
