"""Figure: delivery throughput, a burst of outcomes through the real outbox to a fast receiver.

1,000 jobs finish at once: their outcomes and deliveries are written as the engine writes
them (`outcome_deliveries`, then one `record_outcome` per job, into the daemon's SQLite
store), before the clock starts. Then the real `Outbox`, with the signed webhook notifier
built from a configuration as the daemon builds it and the daemon's concurrency (16),
delivers them to a fast local receiver (nginx, else the asyncio keep-alive server) until
none is pending: deliveries per second, from the outbox's start to its last record (the
outbox writes the records of each event-loop turn with one `record_deliveries`).
The baseline is a bare aiohttp loop POSTing a body of the same size to the same receiver
with the same concurrency: 16 tasks sharing one session. Each side is a worker process of
its own; the figure is the median over rounds, beside the baseline's median.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from benchmarks._harness import (
    WEBHOOK_SECRET,
    Figure,
    Mode,
    config_file,
    emit,
    median,
    quiet_logging,
    run_worker,
    worker_main,
)
from benchmarks._servers import fixed_json_server

TARGET_RATIO = 0.5
CONCURRENCY = 16  # the daemon's Outbox default
_ANSWER = b'{"ok":true}'


def run(mode: Mode) -> Figure:
    count = mode.pick(200, 1000)
    rounds = mode.pick(1, 5)
    outbox_rates: list[float] = []
    bare_rates: list[float] = []
    with fixed_json_server(_ANSWER) as served:
        hook_url = f"{served.url}/hook"
        for index in range(rounds):
            db = mode.workdir / f"throughput-{index}.db"
            hook = f"notifiers:\n  hook:\n    type: webhook\n    url: {hook_url}\n    secret: {WEBHOOK_SECRET}\n"
            config = config_file(mode.workdir, base_url=served.url, state_path=db, notifiers=hook)
            common = {"url": hook_url, "count": count, "concurrency": CONCURRENCY}
            bare = run_worker(__name__, {"role": "bare", **common}, timeout=120)
            watched = run_worker(__name__, {"role": "outbox", "config": str(config), "db": str(db), **common},
                                 timeout=300)
            bare_rates.append(bare["per_second"])
            outbox_rates.append(watched["per_second"])
    rate, base = median(outbox_rates), median(bare_rates)
    ratio = rate / base
    return Figure(
        key="delivery_throughput",
        title="Delivery throughput, a burst of outcomes to a fast webhook receiver",
        value=round(rate, 1),
        unit="deliveries/s",
        baseline=round(base, 1),
        baseline_label=f"bare aiohttp POST loop, {CONCURRENCY} at once",
        ratio=round(ratio, 2),
        target=f">= {TARGET_RATIO}x the bare loop",
        met=None if mode.quick else ratio >= TARGET_RATIO,
        summary=f"{rate:.0f} deliveries/s vs bare POST loop {base:.0f}/s ({count} outcomes, median of {rounds})",
        details={
            "outcomes": count,
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "server": served.kind,
            "outbox_per_second": [round(r, 1) for r in outbox_rates],
            "bare_per_second": [round(r, 1) for r in bare_rates],
        },
    )


# --- the baseline: bare POSTs, as many at once as the outbox sends ----------------------------


async def _bare(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    body = json.dumps(_sample_body()).encode()
    headers = {"Content-Type": "application/json"}
    left = iter(range(args["count"]))

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in left:
            async with session.post(args["url"], data=body, headers=headers) as answer:
                await answer.read()
                answer.raise_for_status()

    async with aiohttp.ClientSession() as session:
        async with session.post(args["url"], data=body, headers=headers) as answer:  # connection warm-up
            await answer.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(args["concurrency"])))
        elapsed = time.perf_counter() - started
    return {"per_second": args["count"] / elapsed, "seconds": elapsed}


def _sample_body() -> dict[str, Any]:
    """What the webhook notifier sends for one completed job: the same size of body."""
    from watcher.notify.samples import sample_event

    event = sample_event("completed")
    return {key: event[key] for key in ("type", "timestamp", "data")}


# --- the outbox ---------------------------------------------------------------------------------


async def _outbox(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from watcher.clock import SystemClock
    from watcher.config import load_config
    from watcher.notify.outbox import Outbox
    from watcher.notify.registry import build_notifiers
    from watcher.store.sqlite import SqliteStore

    quiet_logging()
    config = load_config(args["config"], env={})
    store = SqliteStore(args["db"])
    await store.open()
    notifiers = build_notifiers(config)
    try:
        await _finish_jobs(store, config, args["count"])
        async with aiohttp.ClientSession() as session:  # as the daemon's notifier session
            for notifier in notifiers.values():
                await notifier.start(session)
            outbox = Outbox(store=store, notifiers=notifiers, clock=SystemClock(), owner="bench",
                            concurrency=args["concurrency"], lease=config.state.lease)
            delivered = 0

            def count(_: Any, result: str, __: float) -> None:
                nonlocal delivered
                delivered += result == "delivered"
                if delivered == args["count"]:
                    stop.set()

            outbox.on_result = count
            stop = asyncio.Event()
            started = time.perf_counter()
            runner = asyncio.create_task(outbox.run(stop))
            await asyncio.wait_for(stop.wait(), timeout=240)
            elapsed = time.perf_counter() - started
            await runner
            await outbox.drain(1.0)
            for notifier in notifiers.values():
                await notifier.close()
        counts = await store.counts()
    finally:
        await store.close()
    if counts.pending_deliveries:
        raise RuntimeError(f"{counts.pending_deliveries} deliveries still pending")
    return {"per_second": args["count"] / elapsed, "seconds": elapsed}


async def _finish_jobs(store: Any, config: Any, count: int) -> None:
    """`count` jobs finished `completed` at once, their deliveries written as the engine writes them."""
    from watcher.models import JobRef, Outcome, Snapshot
    from watcher.outcomes import Recipient, outcome_deliveries
    from watcher.policy import Finish

    now = time.time()
    recipients = {n.name: Recipient(n.name, n.delivery_deadline) for n in config.notifiers}
    snapshot = Snapshot(status="completed", job_type="upsert",
                        results={"requested_count": 1000, "created_count": 990, "updated_count": 10,
                                 "deleted_count": 0, "errored_count": 0},
                        started_at="2026-11-27T10:00:00Z", finished_at="2026-11-27T10:01:00Z")
    for index in range(count):
        await store.add_job(JobRef(f"tp-{index:05d}", {"team": "bench"}), now=now, first_poll_at=now)
    claimed = await store.claim_due_jobs(now=now, limit=count, owner="bench-engine", lease=60.0)
    for job in claimed:
        assert job.lease is not None
        decision = Finish(Outcome.COMPLETED, 3, snapshot)
        deliveries, _ = outcome_deliveries(job, decision, now, routes=config.routes, recipients=recipients,
                                           errors=None)
        await store.record_outcome(job.id, token=job.lease.token, now=now, outcome=decision.outcome,
                                   snapshot=snapshot, polls=3, detected_at=now, deliveries=deliveries)
    pending = (await store.counts()).pending_deliveries
    if pending != count:
        raise RuntimeError(f"{pending} deliveries pending, expected {count}")


def _main(args: dict[str, Any]) -> None:
    role = args["role"]
    if role == "bare":
        emit(asyncio.run(_bare(args)))
    else:
        emit(asyncio.run(_outbox(args)))


if __name__ == "__main__":
    parsed = worker_main(sys.argv[1:])
    _main(parsed)
