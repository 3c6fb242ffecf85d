"""Figure 3, restart: time from process start to the first poll with 100,000 unfinished jobs stored.

The state file holds N unfinished jobs, all overdue (the daemon was down for ten
minutes), the worst case for a restart: the daemon opens the store, spreads the
overdue jobs over the next minute (`spread_overdue`), starts its components and
polls the first one, against the fast local server. Measured from just before the
process is spawned (interpreter start and imports included) and from the `Daemon`
construction, to the moment the first poll's answer is seen (the engine's on_poll).
The baseline is the same with one job. Each run starts from a fresh copy of the file.
"""

from __future__ import annotations

import asyncio
import shutil
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
    median,
    quiet_logging,
    run_worker,
    worker_main,
)
from benchmarks._servers import fixed_json_server

TARGET_S = 3.0


def run(mode: Mode) -> Figure:
    jobs = mode.pick(10_000, 100_000)
    rounds = mode.pick(1, 3)
    now = time.time()
    templates = {}
    for count in (1, jobs):
        path = mode.workdir / f"restart-template-{count}.db"
        ids = job_ids(count)
        # Overdue by up to ten minutes, in a spread of due times as a running daemon leaves them.
        fill_store(path, ids, added_at=now - 3600, next_poll_at=[now - 600 + 600 * i / count for i in range(count)])
        templates[count] = path
    runs: dict[int, list[dict[str, Any]]] = {1: [], jobs: []}
    with fixed_json_server(PENDING_BODY) as served:
        for index in range(rounds):
            for count, template in templates.items():
                db = mode.workdir / f"restart-{count}-{index}.db"
                shutil.copyfile(template, db)
                config = config_file(mode.workdir, base_url=served.url, state_path=db)
                spawned = time.time()
                result = run_worker(__name__, {"config": str(config)}, timeout=120)
                result["from_process_start_s"] = result["first_poll_at"] - spawned
                result["from_construction_s"] = result["first_poll_at"] - result["constructed_at"]
                runs[count].append(result)
    big = median([r["from_process_start_s"] for r in runs[jobs]])
    small = median([r["from_process_start_s"] for r in runs[1]])
    big_daemon = median([r["from_construction_s"] for r in runs[jobs]])
    small_daemon = median([r["from_construction_s"] for r in runs[1]])
    return Figure(
        key="restart",
        title=f"Restart to first poll, {jobs:,} unfinished jobs",
        value=round(big, 2),
        unit="s from process start",
        baseline=round(small, 2),
        baseline_label="the same with 1 job",
        ratio=round(big / small, 2),
        target=f"< {TARGET_S:.0f} s (at 100,000 jobs)",
        met=None if mode.quick else big < TARGET_S,
        summary=(
            f"{big:.2f} s vs {small:.2f} s from process start; "
            f"{big_daemon:.2f} s vs {small_daemon:.2f} s from Daemon()"
        ),
        details={
            "jobs": jobs,
            "rounds": rounds,
            "server": served.kind,
            "from_construction_s": round(big_daemon, 3),
            "baseline_from_construction_s": round(small_daemon, 3),
            "runs": {str(k): v for k, v in runs.items()},
        },
    )


async def _first_poll(args: dict[str, Any], imported_at: float) -> dict[str, Any]:
    from watcher.config import load_config
    from watcher.daemon import Daemon

    quiet_logging()
    config = load_config(args["config"], env={})
    constructed_at = time.time()
    daemon = Daemon(config)
    seen: dict[str, float] = {}

    def on_poll(_result: str, _seconds: float) -> None:
        if "first_poll_at" not in seen:
            seen["first_poll_at"] = time.time()
            daemon.stop()

    def started(_: Daemon) -> None:
        # Runs before the engine task's first step, so no poll can be missed.
        seen["started_at"] = time.time()
        assert daemon.engine is not None
        daemon.engine.on_poll = on_poll

    daemon.on_started.append(started)
    await daemon.run(install_signals=False)
    return {"imported_at": imported_at, "constructed_at": constructed_at, **seen}


if __name__ == "__main__":
    begun = time.time()
    parsed = worker_main(sys.argv[1:])
    emit(asyncio.run(_first_poll(parsed, begun)))
