"""500 jobs against a fake SendGrid that errs, hangs, garbles, hangs up and rate-limits: true outcomes, once."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

import pytest

from tests.helpers import WebhookReceiver, config_text, make_config, write_jobs
from watcher.daemon import Daemon
from watcher.models import DeliveryState
from watcher.notify.outbox import Backoff
from watcher.policy import PollPolicy, running_interval, transient_delay
from watcher.testing.fake_sendgrid import FakeSendGrid

from .conftest import TROUBLE_EVENTS, RequestLog, counted_log_events, stored

pytestmark = pytest.mark.resilience

JOBS = 500
SEED = 20261127
FAST = Backoff(initial=0.05, maximum=0.2)
# The deadline leaves room for a starved CI machine: jobs that end are seen long before it, so
# only the never-ending jobs time out. It is also what the run's length is made of.
POLLING = "initial_delay: 0s\n  min_interval: 100ms\n  max_interval: 1s\n  deadline: 20s\n  not_found_grace: 1s"
REQUEST_TIMEOUT = 0.5
RATE_LIMIT = 500  # requests per 1 s window, announced in X-RateLimit-* headers
# Every answer takes this long, so two polls of one job in flight at once would overlap at the fake
# and show in max_concurrent_per_job; with instant answers they never could.
LATENCY = 0.01
BASE_FAULTS = {"error_rate": 0.3, "timeout_rate": 0.03, "malformed_rate": 0.05, "drop_rate": 0.03}
# 429s come in storms on top of the base faults: (start after the run began, length, share of 429s).
# Any 429 holds every request until the window resets (watcher/ratelimit/), so a steady trickle of them
# would stall the whole run; storms show the daemon waiting them out and catching up.
STORMS = ((1.0, 0.6, 0.5), (4.0, 0.6, 0.5))


def script_jobs(fake: FakeSendGrid, rng: random.Random) -> dict[str, str]:
    """Script 500 jobs across every outcome; returns job id -> the outcome the watcher must report."""
    expected: dict[str, str] = {}
    for i in range(JOBS):
        job_id = f"rz-{i:03d}"
        kind = i % 10
        pending_for = rng.uniform(0.1, 1.5)
        if kind in (0, 1, 2, 3):
            fake.script_job(job_id, outcome="completed", pending_for=pending_for, requested=100)
            expected[job_id] = "completed"
        elif kind in (4, 5):
            fake.script_job(job_id, outcome="errored", pending_for=pending_for, requested=100, errored=7)
            expected[job_id] = "errored"
        elif kind == 6:
            fake.script_job(job_id, outcome="failed", pending_for=pending_for, job_type="delete")
            expected[job_id] = "failed"
        elif kind == 7:
            expected[job_id] = "not_found"  # never scripted: 404 past the grace
        elif kind == 8:
            fake.script_job(job_id, outcome="pending")  # a CSV never uploaded: the deadline ends it
            expected[job_id] = "timed_out"
        else:  # visible only after a while: early 404s are "not yet", well within the grace
            fake.script_job(job_id, outcome="completed", pending_for=pending_for, visible_after=0.3)
            expected[job_id] = "completed"
    return expected


async def storms(fake: FakeSendGrid, started: float) -> None:
    """Raise the 429 share for each storm's length, then drop back to the base faults."""
    for n, (start, length, rate) in enumerate(STORMS):
        await asyncio.sleep(max(0.0, started + start - time.monotonic()))
        fake.set_faults(**{**BASE_FAULTS, "status_429_rate": rate}, seed=SEED + n + 1)
        await asyncio.sleep(length)
        fake.set_faults(**BASE_FAULTS, seed=SEED + n + 100)


def shortest_wait(policy: PollPolicy, kind: str, age: float) -> float:
    """The shortest wait the policy can schedule after a request sent at `age` and answered as `kind`.

    Each rule's jitter is taken at its low end. The client may also have given up on any answer
    (a late response is a timeout to it), so the transient wait bounds every kind. Waits are
    capped at the deadline, and a 404 within the grace at the end of the grace.
    """
    transient = min(transient_delay(policy, 1, 0.0), policy.deadline - age)
    if kind == "pending":
        return min(running_interval(policy, age, 0.0), transient)
    if kind == "not_found":
        return min(running_interval(policy, age, 0.0), max(0.0, policy.not_found_grace - age), transient)
    return transient


def check_pace(policy: PollPolicy, added_at: float, seen: list[tuple[float, str]]) -> tuple[list[str], int]:
    """(gaps shorter than the policy allows, aiohttp resends) for one job's requests.

    A server that closes a kept-alive connection without answering gets the same GET once more
    at once: aiohttp's own retry (RFC 9112, 9.3.1.1), below the watcher. So one gap after a
    dropped request may be short, but not two in a row.
    """
    too_fast: list[str] = []
    resends = 0
    resent = False
    for (earlier, kind), (later, _) in itertools.pairwise(seen):
        age, gap = earlier - added_at, later - earlier
        if gap >= shortest_wait(policy, kind, age) - 0.002:
            resent = False
        elif kind == "dropped" and not resent:
            resends += 1
            resent = True
        else:
            too_fast.append(f"{gap:.3f}s after {kind} at {age:.3f}s")
    return too_fast, resends


def max_requests(policy: PollPolicy) -> int:
    """The most polls the policy allows one job, every wait at its shortest.

    Before the deadline an adversary answers each request with whichever of "pending" or a
    failure gives the shorter wait; two more polls cover those pinned to the end of the
    not-found grace and to the deadline. Any answer at or after the deadline ends the job.
    """
    age, count = 0.0, 1
    floor = transient_delay(policy, 1, 0.0)
    while (gap := min(running_interval(policy, age, 0.0), floor)) + age < policy.deadline:
        age += gap
        count += 1
    return count + 2


async def test_every_job_reaches_its_true_outcome_once_through_faults(tmp_path: Path) -> None:
    """Through 5xx, timeouts, garbage, hang-ups and 429 storms, 500 jobs each notify their true outcome once, polled within the policy."""
    requests = RequestLog()
    fake = FakeSendGrid(rate_limit=RATE_LIMIT, latency=LATENCY)
    requests.attach(fake)
    async with fake, WebhookReceiver() as hook:
        fake.set_faults(**BASE_FAULTS, seed=SEED)
        expected = script_jobs(fake, random.Random(SEED))
        text = config_text(fake.base_url, f"sqlite:///{tmp_path}/state.db", hook_url=hook.url,
                           jobs_file=write_jobs(tmp_path / "jobs.yaml", list(expected)), polling=POLLING)
        text = text.replace("request_timeout: 2s", f"request_timeout: {REQUEST_TIMEOUT}s\n  max_concurrency: 64")
        config = make_config(tmp_path, text)
        started = time.monotonic()
        storm = asyncio.create_task(storms(fake, started))
        with counted_log_events() as events:
            exit_code = await asyncio.wait_for(
                Daemon(config, delivery_backoff=FAST).run(until_idle=True, install_signals=False), 90)
        wall = time.monotonic() - started
        storm.cancel()
    jobs, deliveries = await stored(config.state.url)

    policy = config.polling
    paces = {job_id: check_pace(policy, jobs[job_id].added_at, requests.arrivals[job_id]) for job_id in expected}
    polls = {job_id: len(requests.arrivals[job_id]) - paces[job_id][1] for job_id in expected}
    latest = max((job.detected_at or 0.0) - job.added_at for job in jobs.values() if job.state != "timed_out")
    print(f"\nfaulty sendgrid: {JOBS} jobs in {wall:.1f}s; {sum(map(len, requests.arrivals.values()))} status "
          f"requests, answered {dict(requests.kinds)}; per job {sum(polls.values()) / JOBS:.1f} polls on average, "
          f"max {max(polls.values())} (bound {max_requests(policy)}), plus {sum(p[1] for p in paces.values())} "
          f"aiohttp resends after a dropped connection; last job to end was seen {latest:.1f}s after it was added; "
          f"most logged {events.most_common(8)}")

    assert 0 == exit_code
    assert {name: 0 for name in TROUBLE_EVENTS} == {name: events[name] for name in TROUBLE_EVENTS}
    assert expected == hook.statuses()
    assert {job_id: [outcome] for job_id, outcome in expected.items()} == hook.notifications()
    assert {job_id: 1 for job_id in expected} == {job_id: len(items) for job_id, items in hook.by_job().items()}
    assert JOBS == len(hook.received)
    assert {DeliveryState.DELIVERED} == {d.state for d in deliveries}
    # Every fault really happened, the storms' 429s included.
    assert {"500", "429", "malformed", "dropped", "timeout", "pending", "final", "not_found"} <= set(requests.kinds)
    # Bounded: no job was polled more often than the policy's shortest waits allow before its deadline.
    assert [] == [(job_id, n) for job_id, n in polls.items() if n > max_requests(policy)]
    # Never faster than the policy: each gap is at least the shortest wait its answer allows.
    assert {} == {job_id: too_fast for job_id, (too_fast, _) in paces.items() if too_fast}
    assert {1} == set(fake.max_concurrent_per_job.values())  # one poll per job at a time, answers taking LATENCY

