"""Figure 3, restart: time from process start to the first poll with 100,000 unfinished jobs
stored and their 100,000-line job file configured.

The state file holds N unfinished jobs, all overdue (the daemon was down for ten
minutes), the worst case for a restart: the daemon opens the store, spreads the
overdue jobs over the next minute (`spread_overdue`), starts its components and
polls the first one, against the fast local server. The normal set-up keeps the job
file that listed the jobs in the config (`sources: - type: file`), unchanged since the
daemon that stored them read it (the state file holds that read's fingerprint, as the
daemon leaves it). Measured from just before the process is spawned (interpreter start
and imports included) and from the `Daemon` construction, to the moment the first poll's
answer is seen (the engine's on_poll); with the file, also until the file has been read
(the source started) and how many polls were made meanwhile. Cases: N jobs with the
file (the figure), N jobs with a file changed while the daemon was down (read and
checked in full beside the polls), N jobs without a file, and the baseline, one job
without a file. Each run starts from a fresh copy of the state file.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
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

TARGET_S = 1.5


def run(mode: Mode) -> Figure:
    jobs = mode.pick(10_000, 100_000)
    rounds = mode.pick(1, 3)
    now = time.time()
    templates: dict[int | str, Path] = {}
    for count in (1, jobs):
        path = mode.workdir / f"restart-template-{count}.db"
        ids = job_ids(count)
        # Overdue by up to ten minutes, in a spread of due times as a running daemon leaves them.
        fill_store(path, ids, added_at=now - 3600, next_poll_at=[now - 600 + 600 * i / count for i in range(count)])
        templates[count] = path
    job_file = mode.workdir / "restart-jobs.yaml"
    text = "jobs:\n" + "".join(f"  - {job_id}\n" for job_id in job_ids(jobs))
    job_file.write_text(text, encoding="utf-8")
    templates["read"] = mode.workdir / "restart-template-read.db"
    shutil.copyfile(templates[jobs], templates["read"])
    asyncio.run(_remember(templates["read"], job_file, text))
    source = f"  - type: file\n    path: {job_file}\n"
    cases: dict[str, tuple[int | str, str]] = {
        "file": ("read", source), "file_changed": (jobs, source), "no_file": (jobs, ""), "baseline": (1, ""),
    }
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    with fixed_json_server(PENDING_BODY) as served:
        for index in range(rounds):
            for case, (template, sources) in cases.items():
                db = mode.workdir / f"restart-{case}-{index}.db"
                shutil.copyfile(templates[template], db)
                config = config_file(mode.workdir, base_url=served.url, state_path=db, sources=sources)
                spawned = time.time()
                result = run_worker(__name__, {"config": str(config)}, timeout=180)
                result["from_process_start_s"] = result["first_poll_at"] - spawned
                result["from_construction_s"] = result["first_poll_at"] - result["constructed_at"]
                if "sources_read_at" in result:
                    result["file_read_from_process_start_s"] = result["sources_read_at"] - spawned
                runs[case].append(result)

    def med(case: str, key: str) -> float:
        return median([r[key] for r in runs[case]])

    big, changed, no_file, small = (
        med(case, "from_process_start_s") for case in ("file", "file_changed", "no_file", "baseline")
    )
    read, changed_read = (med(case, "file_read_from_process_start_s") for case in ("file", "file_changed"))
    return Figure(
        key="restart",
        title=f"Restart to first poll, {jobs:,} unfinished jobs and their job file",
        value=round(big, 2),
        unit="s from process start",
        baseline=round(small, 2),
        baseline_label="1 job, no job file",
        ratio=round(big / small, 2),
        target=f"< {TARGET_S:g} s (at 100,000 jobs, with the file)",
        met=None if mode.quick else big < TARGET_S,
        summary=(
            f"{big:.2f} s with the {jobs:,}-line job file, {no_file:.2f} s without it, vs {small:.2f} s with 1 job"
            f" (from process start); the unchanged file was done with {read:.2f} s after process start; a file"
            f" changed while down: first poll at {changed:.2f} s, read and checked in full at {changed_read:.2f} s"
            f" with {med('file_changed', 'polls_while_reading'):.0f} polls made meanwhile"
        ),
        details={
            "jobs": jobs,
            "rounds": rounds,
            "server": served.kind,
            "no_file_from_process_start_s": round(no_file, 3),
            "file_read_from_process_start_s": round(read, 3),
            "changed_file_from_process_start_s": round(changed, 3),
            "changed_file_read_from_process_start_s": round(changed_read, 3),
            "from_construction_s": round(med("file", "from_construction_s"), 3),
            "no_file_from_construction_s": round(med("no_file", "from_construction_s"), 3),
            "baseline_from_construction_s": round(med("baseline", "from_construction_s"), 3),
            "runs": runs,
        },
    )


async def _remember(path: Path, job_file: Path, text: str) -> None:
    """Leave in the state file what a daemon that read `job_file` in full leaves: its fingerprint."""
    from watcher.sources.file import fingerprint, fingerprint_key
    from watcher.store.sqlite import SqliteStore

    store = SqliteStore(str(path))
    await store.open()
    try:
        await store.set_meta(fingerprint_key(job_file), fingerprint(text))
    finally:
        await store.close()


async def _first_poll(args: dict[str, Any], imported_at: float) -> dict[str, Any]:
    from watcher.config import load_config
    from watcher.daemon import Daemon

    quiet_logging()
    config = load_config(args["config"], env={})
    constructed_at = time.time()
    daemon = Daemon(config)
    seen: dict[str, float] = {}
    tasks: list[asyncio.Future[None]] = []

    def on_poll(_result: str, _seconds: float) -> None:
        if "first_poll_at" not in seen:
            seen["first_poll_at"] = time.time()
            tasks.append(asyncio.ensure_future(stop_once_read()))

    async def stop_once_read() -> None:
        """With a job file: go on polling until it has been read, and count the polls meanwhile."""
        if daemon.sources:
            while not all(source.started for source in daemon.sources):
                await asyncio.sleep(0.01)
            seen["sources_read_at"] = time.time()
            assert daemon.engine is not None
            seen["polls_while_reading"] = sum(daemon.engine.stats.polls.values())
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
