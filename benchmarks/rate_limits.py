"""Figure 5, rate limits: the share of an advertised limit the daemon uses, and the 429s it earns.

The bundled FakeSendGrid runs in its own process with a fixed-window limit of N
requests per second per key, advertised with X-RateLimit-Limit/Remaining/Reset (an
epoch, as SendGrid sends it). The real `Daemon` watches far more pending jobs than N
per second can poll (demand is several times N), so only the rate budget holds it
back. The achieved rate is the count of 200 answers between two instants half a
second into a window, a whole number of windows apart, divided by the time and by N;
the baseline is N itself. The 429 share counts the whole run, cold start included.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from benchmarks._harness import (
    API_KEY,
    Figure,
    Mode,
    config_file,
    emit,
    fill_store,
    job_ids,
    python,
    quiet_logging,
    worker_env,
    worker_main,
)

TARGET_SHARE = 0.95
TARGET_429 = 0.01


def run(mode: Mode) -> Figure:
    limit = mode.pick(50, 100)
    jobs = mode.pick(300, 1_000)
    warmup = mode.pick(2, 4)
    windows = mode.pick(2, 20)
    now = time.time()
    db = mode.workdir / "rate-limits.db"
    ids = job_ids(jobs)
    fill_store(db, ids, added_at=now - 900, next_poll_at=now)
    fake = subprocess.Popen(
        [python(), "-m", __name__, "--worker", json.dumps({"role": "fake", "limit": limit, "jobs": jobs})],
        stdout=subprocess.PIPE, text=True, env=worker_env(),
    )
    daemon: subprocess.Popen[str] | None = None
    try:
        assert fake.stdout is not None
        base_url = fake.stdout.readline().strip()
        # Polls every 1-2 s per job: demand of about jobs/1.5 per second, several times the limit.
        config = config_file(
            mode.workdir, base_url=base_url, state_path=db,
            polling="  initial_delay: 0s\n  min_interval: 1s\n  max_interval: 2s\n",
        )
        duration = warmup + windows + 2
        daemon = subprocess.Popen(
            [python(), "-m", __name__, "--worker", json.dumps({"role": "daemon", "config": str(config),
                                                               "duration": duration})],
            stdout=subprocess.PIPE, text=True, env=worker_env(),
        )
        started = time.time()
        first_at = _half_window(started + warmup)
        _sleep_until(first_at)
        first = _stats(base_url)
        _sleep_until(first_at + windows)
        second = _stats(base_url)
        elapsed = windows
        daemon_out, _ = daemon.communicate(timeout=duration + 60)
        total = _stats(base_url)
    finally:
        for process in (daemon, fake):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=10)
    ok = _count(second, "200") - _count(first, "200")
    achieved = ok / elapsed
    share = achieved / limit
    requests = total["requests_total"]
    rejected = _count(total, "429")
    reject_share = rejected / requests if requests else 0.0
    daemon_result = json.loads([line for line in daemon_out.splitlines() if line.startswith("{")][-1])
    return Figure(
        key="rate_limits",
        title=f"Rate limit use at N = {limit} requests/s",
        value=round(achieved, 1),
        unit="requests/s answered 200",
        baseline=float(limit),
        baseline_label="N, the advertised limit",
        ratio=round(share, 3),
        target=f"≥ {TARGET_SHARE:.0%} of N, ≤ {TARGET_429:.0%} of requests answered 429",
        met=share >= TARGET_SHARE and reject_share <= TARGET_429,
        summary=f"{share:.1%} of N; {rejected} of {requests} requests answered 429 ({reject_share:.2%})",
        details={
            "limit": limit,
            "jobs": jobs,
            "measured_windows": windows,
            "requests_total": requests,
            "responses_429": rejected,
            "share_429": round(reject_share, 4),
            "responses_by_status": total["responses_by_status"],
            "daemon_polls": daemon_result["polls"],
        },
    )


def _half_window(t: float) -> float:
    """The first instant half a second into a window, at or after `t`."""
    return math.floor(t) + 0.5 if t - math.floor(t) <= 0.5 else math.floor(t) + 1.5


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/_control/stats", timeout=10) as answer:  # noqa: S310 - loopback
        stats: dict[str, Any] = json.loads(answer.read())
    return stats


def _count(stats: dict[str, Any], status: str) -> int:
    return int(stats["responses_by_status"].get(status, 0))


# --- the two processes -----------------------------------------------------------------


async def _fake(args: dict[str, Any]) -> None:
    from watcher.testing.fake_sendgrid import FakeSendGrid

    fake = FakeSendGrid(api_keys=[API_KEY], rate_limit=args["limit"], rate_window=1.0)
    for job_id in job_ids(args["jobs"]):
        fake.script_job(job_id, outcome="pending")
    url = await fake.start()
    print(url, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await fake.close()


async def _daemon(args: dict[str, Any]) -> dict[str, Any]:
    from watcher.config import load_config
    from watcher.daemon import Daemon

    quiet_logging()
    daemon = Daemon(load_config(args["config"], env={}))

    async def stop_later() -> None:
        await asyncio.sleep(args["duration"])
        daemon.stop()

    tasks: list[asyncio.Task[None]] = []
    daemon.on_started.append(lambda _: tasks.append(asyncio.ensure_future(stop_later())))
    await daemon.run(install_signals=False)
    assert daemon.engine is not None
    return {"polls": dict(daemon.engine.stats.polls)}


if __name__ == "__main__":
    parsed = worker_main(sys.argv[1:])
    if parsed["role"] == "fake":
        asyncio.run(_fake(parsed))
    else:
        emit(asyncio.run(_daemon(parsed)))
