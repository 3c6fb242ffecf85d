"""Figure 2, scale: resident memory of a daemon tracking 100,000 unfinished jobs vs tracking none.

Each case is a fresh process running the real `Daemon` (SQLite store, engine, outbox,
scheduler) from a config file, against the fast local server answering `pending`:

* ``empty``: no jobs (the baseline);
* ``idle``: N jobs whose next poll is an hour away (the engine runs, nothing is due);
* ``polling``: N jobs all overdue at start, so the daemon spreads them and polls them.

The jobs are bulk-inserted into the state file before the process starts. RSS is read
from /proc after `settle` seconds of running, and the peak (VmHWM) at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from benchmarks._harness import (
    PENDING_BODY,
    Figure,
    Mode,
    config_file,
    emit,
    fill_store,
    job_ids,
    peak_rss_bytes,
    quiet_logging,
    rss_bytes,
    run_worker,
    worker_main,
)
from benchmarks._servers import fixed_json_server

TARGET_MB = 250.0
MB = 1024 * 1024


#: RSS moves by a megabyte or so between identical runs (10 B/job at 100,000 jobs).
NOISE_BYTES = 1 << 20


def run(mode: Mode) -> Figure:
    jobs = mode.pick(10_000, 100_000)
    settle = mode.pick(1.5, 8.0)
    results: dict[str, dict[str, Any]] = {}
    now = time.time()
    with fixed_json_server(PENDING_BODY) as served:
        for case, count, due in (("empty", 0, 0.0), ("idle", jobs, now + 3600), ("polling", jobs, now - 600)):
            db = mode.workdir / f"scale-{case}.db"
            fill_store(db, job_ids(count), added_at=now - 900, next_poll_at=due)
            config = config_file(mode.workdir, base_url=served.url, state_path=db)
            results[case] = run_worker(__name__, {"config": str(config), "settle": settle}, timeout=120)
    empty, idle, polling = results["empty"], results["idle"], results["polling"]
    worst = max(idle["peak_rss"], polling["peak_rss"])
    per_job_idle = (idle["rss"] - empty["rss"]) / jobs
    per_job_polling = (polling["rss"] - empty["rss"]) / jobs
    return Figure(
        key="scale",
        title=f"Memory with {jobs:,} unfinished jobs",
        value=round(worst / MB, 1),
        unit="MB peak RSS",
        baseline=round(empty["peak_rss"] / MB, 1),
        baseline_label="the same daemon with 0 jobs",
        ratio=round(worst / empty["peak_rss"], 2),
        target=f"< {TARGET_MB:.0f} MB in all (at 100,000 jobs)",
        met=None if mode.quick else worst / MB < TARGET_MB,
        summary=(
            f"{worst / MB:.0f} MB peak vs {empty['peak_rss'] / MB:.0f} MB empty; "
            f"{_per_job(per_job_idle, jobs)} idle, {_per_job(per_job_polling, jobs)} while polling"
        ),
        details={
            "jobs": jobs,
            "settle_s": settle,
            "server": served.kind,
            "bytes_per_job_idle": round(per_job_idle, 1),
            "bytes_per_job_polling": round(per_job_polling, 1),
            "cases": results,
        },
    )


async def _daemon(args: dict[str, Any]) -> dict[str, Any]:
    from watcher.config import load_config
    from watcher.daemon import Daemon

    quiet_logging()
    daemon = Daemon(load_config(args["config"], env={}))
    seen: dict[str, Any] = {}

    async def measure() -> None:
        await asyncio.sleep(args["settle"])
        seen["rss"] = rss_bytes()
        engine = daemon.engine
        seen["polls"] = sum(engine.stats.polls.values()) if engine is not None else 0
        daemon.stop()

    def started(_: Daemon) -> None:
        seen["task"] = asyncio.ensure_future(measure())

    daemon.on_started.append(started)
    await daemon.run(install_signals=False)
    return {"rss": seen["rss"], "peak_rss": peak_rss_bytes(), "polls": seen["polls"]}


def _per_job(value: float, jobs: int) -> str:
    """Bytes per job, or ~0 when the difference is within the RSS noise spread over the jobs."""
    return "~0 B/job (within RSS noise)" if abs(value) * jobs < NOISE_BYTES else f"{value:.0f} B/job"


if __name__ == "__main__":
    parsed = worker_main(sys.argv[1:])
    emit(asyncio.run(_daemon(parsed)))
