"""Figure, page load: polls per second with the status page open in 3 tabs, at 100,000 jobs, vs closed.

Each case is a fresh daemon process (SQLite store, engine, outbox, HTTP server on
loopback without a token) over a fresh copy of one state file holding N unfinished jobs
that are due again every 1-2 s, so the engine polls as fast as it can against the fast
local server. In the ``page`` case a separate process plays 3 open tabs of the status
page, each asking what the page asks (`GET /summary` and one page `GET /jobs?limit=50`),
every 0.5 s instead of the page's 5 s: ten times the load of three real tabs. The
baseline is the same daemon with no tab open. Polls are counted by the engine over the
same window after the same warm-up.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
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
    free_port,
    job_ids,
    median,
    percentile,
    python,
    quiet_logging,
    run_worker,
    wait_for_port,
    worker_env,
    worker_main,
)
from benchmarks._servers import fixed_json_server

TARGET_RATIO = 0.9
TABS = 3
EVERY_S = 0.5  # the page refreshes every 5 s; compressed tenfold
PAGE_SIZE = 50  # what the page asks for


def run(mode: Mode) -> Figure:
    jobs = mode.pick(2_000, 100_000)
    warmup, window = mode.pick((0.5, 1.5), (5.0, 20.0))
    now = time.time()
    template = mode.workdir / "page-load-template.db"
    fill_store(template, job_ids(jobs), added_at=now - 3600, next_poll_at=[now - 60 * i / jobs for i in range(jobs)])
    # ABBA twice in full mode: whatever drifts on the machine during the runs weighs on both cases alike,
    # and the median of four runs a case (one run varies by +-10 % on 2 cores, the target's margin).
    order = mode.pick(["closed", "page"], ["closed", "page", "page", "closed"] * 2)
    runs: dict[str, list[dict[str, Any]]] = {"closed": [], "page": []}
    with fixed_json_server(PENDING_BODY) as served:
        for index, case in enumerate(order):
            db = mode.workdir / f"page-load-{index}.db"
            shutil.copyfile(template, db)
            config = config_file(
                mode.workdir, base_url=served.url, state_path=db,
                polling="  initial_delay: 0s\n  min_interval: 1s\n  max_interval: 2s\n",
            )
            port = free_port()
            config.write_text(config.read_text(encoding="utf-8") + f"server:\n  listen: 127.0.0.1:{port}\n",
                              encoding="utf-8")
            args = {"role": "daemon", "config": str(config), "port": port, "warmup": warmup, "window": window,
                    "tabs": case == "page"}
            runs[case].append(run_worker(__name__, args, timeout=warmup + window + 120))
    closed, page = (median([r["polls_per_s"] for r in runs[case]]) for case in ("closed", "page"))
    ratio = page / closed if closed else 0.0
    results = {case: {"runs": found} for case, found in runs.items()}
    tabs = runs["page"][-1].get("tabs", {})
    return Figure(
        key="page_load",
        title=f"Polling with the status page open, {jobs:,} jobs",
        value=round(page, 1),
        unit="polls/s with 3 tabs refreshing every 0.5 s",
        baseline=round(closed, 1),
        baseline_label="the same daemon with no tab open",
        ratio=round(ratio, 3),
        target=f">= {TARGET_RATIO} of the baseline (at 100,000 jobs)",
        met=None if mode.quick else ratio >= TARGET_RATIO,
        summary=(
            f"{page:.0f} vs {closed:.0f} polls/s; page requests p95 {tabs.get('p95_ms', float('nan')):.0f} ms "
            f"over {tabs.get('requests', 0)} requests"
        ),
        details={"jobs": jobs, "warmup_s": warmup, "window_s": window, "tabs": TABS, "every_s": EVERY_S,
                 "server": served.kind, "cases": results},
    )


# --- worker: the daemon ---------------------------------------------------------------------


async def _daemon(args: dict[str, Any]) -> dict[str, Any]:
    from watcher.config import load_config
    from watcher.daemon import Daemon

    quiet_logging()
    daemon = Daemon(load_config(args["config"], env={}))
    seen: dict[str, Any] = {}

    def polls() -> int:
        return sum(daemon.engine.stats.polls.values()) if daemon.engine is not None else 0

    async def measure() -> None:
        tabs = _start_tabs(args["port"], args["warmup"] + args["window"]) if args["tabs"] else None
        try:
            await asyncio.sleep(args["warmup"])
            first, started = polls(), time.monotonic()
            await asyncio.sleep(args["window"])
            seen["polls"], seen["seconds"] = polls() - first, time.monotonic() - started
            if tabs is not None:
                out, _ = await asyncio.to_thread(tabs.communicate, timeout=30)
                seen["tabs"] = json.loads(out.strip().splitlines()[-1])
        finally:
            daemon.stop()

    daemon.on_started.append(lambda _: seen.setdefault("task", asyncio.ensure_future(measure())))
    await daemon.run(install_signals=False)
    result = {"polls": seen["polls"], "polls_per_s": seen["polls"] / seen["seconds"]}
    if "tabs" in seen:
        result["tabs"] = seen["tabs"]
    return result


def _start_tabs(port: int, duration: float) -> subprocess.Popen[str]:
    """The open tabs, in a process of their own (a browser is not the daemon)."""
    args = json.dumps({"role": "tabs", "port": port, "duration": duration})
    return subprocess.Popen(
        [python(), "-m", "benchmarks.page_load", "--worker", args], stdout=subprocess.PIPE, text=True, env=worker_env(),
    )


# --- worker: the tabs -----------------------------------------------------------------------


async def _tabs(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    base = f"http://127.0.0.1:{args['port']}"
    wait_for_port("127.0.0.1", args["port"])
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + args["duration"]

    async def tab(index: int, http: aiohttp.ClientSession) -> None:
        nonlocal errors
        after = ""  # the second tab looks at the second page, as a person paging would
        while time.monotonic() < deadline:
            began = time.monotonic()
            for path in ("/summary", f"/jobs?limit={PAGE_SIZE}{after}"):
                async with http.get(base + path) as response:
                    await response.read()
                    errors += response.status != 200
                    cursor = response.headers.get("X-Next-Cursor")
                    if index == 1 and cursor and not after:
                        after = f"&after={cursor}"
            latencies.append((time.monotonic() - began) * 1000)
            await asyncio.sleep(max(0.0, EVERY_S - (time.monotonic() - began)))

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(tab(i, http) for i in range(TABS)))
    return {"requests": 2 * len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95)}


if __name__ == "__main__":
    parsed = worker_main(sys.argv[1:])
    emit(asyncio.run(_tabs(parsed) if parsed["role"] == "tabs" else _daemon(parsed)))
