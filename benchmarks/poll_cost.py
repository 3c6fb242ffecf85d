"""Figure 1, cost per poll: client CPU per poll of the watcher vs a bare aiohttp GET loop.

Both clients run in a fresh process of their own against the same fast local server
(every answer `pending`), with the same concurrency, URLs and headers; each measures its
own CPU time (``time.process_time``: every thread of the process) over the same number of
polls after a warm-up. The watcher side is the real Engine, SendGridClient,
LocalRateBudget and SqliteStore, logging as in production (info, JSON) into /dev/null:
every job is claimed from SQLite, polled, parsed and decided by the policy; as every answer
is the same `pending`, later polls are served from the engine's held jobs (engine_held)
and only the first answer of each job, and the drain, are written back.
Rounds alternate bare/watcher so drift on a shared machine hits both. Single rounds'
ratios range over ±20 % on a shared machine; the figure is the median of 7 rounds' ratios
(not the ratio of medians), reported with every round's ratio and their interquartile
range, so that two runs can be seen to agree (within 0.1 when the machine is steady).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from benchmarks._harness import (
    API_KEY,
    PENDING_BODY,
    Figure,
    Mode,
    emit,
    fill_store,
    job_ids,
    median,
    percentile,
    quiet_logging,
    run_worker,
    worker_main,
)
from benchmarks._servers import fixed_json_server

TARGET = 1.2


def run(mode: Mode) -> Figure:
    rounds = mode.pick(1, 7)
    polls = mode.pick(1_000, 20_000)
    warmup = mode.pick(300, 2_000)
    jobs = mode.pick(200, 1_000)
    concurrency = 32
    ids = job_ids(jobs)
    db = mode.workdir / "poll-cost.db"
    fill_store(db, ids, added_at=time.time(), next_poll_at=0.0)
    runs: list[dict[str, Any]] = []
    with fixed_json_server(PENDING_BODY) as served:
        common = {"url": served.url, "polls": polls, "warmup": warmup, "concurrency": concurrency, "jobs": jobs}
        for _ in range(rounds):
            bare = run_worker(__name__, {**common, "side": "bare"}, timeout=300)
            watcher = run_worker(__name__, {**common, "side": "watcher", "db": str(db)}, timeout=300)
            runs.append({"bare": bare, "watcher": watcher, "ratio": watcher["cpu_us"] / bare["cpu_us"]})
    ratios = [r["ratio"] for r in runs]
    ratio = median(ratios)
    watcher_us = median([r["watcher"]["cpu_us"] for r in runs])
    bare_us = median([r["bare"]["cpu_us"] for r in runs])
    return Figure(
        key="poll_cost",
        title="Cost per poll (client CPU)",
        value=round(watcher_us, 1),
        unit="µs CPU/poll",
        baseline=round(bare_us, 1),
        baseline_label="bare aiohttp GET loop",
        ratio=round(ratio, 2),
        target=f"≤ {TARGET}× the bare loop",
        met=ratio <= TARGET,
        summary=f"{watcher_us:.0f} µs vs {bare_us:.0f} µs CPU per poll",
        details={
            "server": served.kind,
            "polls_measured": polls,
            "warmup_polls": warmup,
            "jobs": jobs,
            "concurrency": concurrency,
            "round_ratios": ", ".join(f"{r['ratio']:.2f}" for r in runs),
            "ratio_spread": round(max(ratios) - min(ratios), 2),
            "ratio_iqr": round(percentile(ratios, 75) - percentile(ratios, 25), 2),
            "rounds": runs,
        },
    )


# --- the two clients ------------------------------------------------------------------


class _Meter:
    """Counts polls; takes CPU and wall time at the end of the warm-up and at the last poll."""

    def __init__(self, warmup: int, polls: int) -> None:
        self.warmup, self.polls, self.count = warmup, polls, 0
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None
        self.done = asyncio.Event()

    def tick(self, *_: object) -> None:
        self.count += 1
        if self.count == self.warmup:
            self.start = (time.process_time(), time.perf_counter())
        elif self.count == self.warmup + self.polls:
            self.end = (time.process_time(), time.perf_counter())
            self.done.set()

    def result(self) -> dict[str, Any]:
        assert self.start is not None and self.end is not None
        cpu, wall = self.end[0] - self.start[0], self.end[1] - self.start[1]
        return {"cpu_us": cpu / self.polls * 1e6, "wall_s": wall, "polls_per_s": self.polls / wall}


async def _bare(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from watcher.sendgrid import USER_AGENT

    ids = job_ids(args["jobs"])
    urls = [f"{args['url']}/v3/marketing/contacts/imports/{job_id}" for job_id in ids]
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT, "Authorization": f"Bearer {API_KEY}"}
    meter = _Meter(args["warmup"], args["polls"])
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession() as session:

        async def worker(first: int) -> None:
            index = first
            while not meter.done.is_set():
                async with session.get(urls[index % len(urls)], headers=headers, timeout=timeout) as response:
                    await response.read()
                meter.tick()
                index += args["concurrency"]

        await asyncio.gather(*(worker(k) for k in range(args["concurrency"])))
    return meter.result()


async def _watcher(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from watcher.clock import SystemClock
    from watcher.engine import Engine
    from watcher.policy import PollPolicy
    from watcher.ratelimit import LocalRateBudget
    from watcher.schema import Secret
    from watcher.sendgrid import SendGridClient, SendGridSettings
    from watcher.store.sqlite import SqliteStore

    quiet_logging()
    clock = SystemClock()
    store = SqliteStore(args["db"])
    await store.open()
    meter = _Meter(args["warmup"], args["polls"])
    # Every job is due again a millisecond after its poll: the engine never waits for time.
    policy = PollPolicy(initial_delay=0.0, min_interval=0.001, max_interval=0.001)
    settings = SendGridSettings(api_key=Secret(API_KEY), base_url=args["url"], max_concurrency=args["concurrency"])
    try:
        async with aiohttp.ClientSession() as session:
            client = SendGridClient(
                settings, session=session, budget=LocalRateBudget(max_rate=None, clock=clock), clock=clock
            )
            engine = Engine(
                store=store, client=client, policy=policy, clock=clock, owner="bench", recipients=[],
                max_concurrency=args["concurrency"], lease=60.0, on_poll=meter.tick,
            )
            await engine.run(meter.done)
            await engine.drain(5.0)
            stats = dict(engine.stats.polls)
    finally:
        await store.close()
    return {**meter.result(), "poll_results": stats}


def _worker(args: dict[str, Any]) -> None:
    side = _bare if args["side"] == "bare" else _watcher
    emit(asyncio.run(side(args)))


if __name__ == "__main__":
    parsed = worker_main(sys.argv[1:])
    _worker(parsed)
