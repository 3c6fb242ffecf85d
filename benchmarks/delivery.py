"""Figure 4, delivery latency: from the poll that sees the final status to the webhook's arrival.

Three processes: the fast local server answering `completed`, a webhook receiver that
records the arrival time of every body (by `data.job_id`), and the real `Daemon` with
one signed webhook notifier. The daemon's SQLite store is subclassed only to note the
`detected_at` it is asked to write with each outcome (the engine's clock reading right
after the poll that saw `completed`). Jobs are added a few milliseconds apart so each
latency is one notification's, not a queue's. Latency = arrival - detected_at, both
from the same system clock. The baseline is a bare aiohttp POST of a body of the same
size to the same receiver, timed from send to answer, one at a time at the same pace.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from benchmarks._harness import (
    COMPLETED_BODY,
    WEBHOOK_SECRET,
    Figure,
    Mode,
    config_file,
    emit,
    percentile,
    python,
    quiet_logging,
    run_worker,
    worker_env,
    worker_main,
)
from benchmarks._servers import fixed_json_server

TARGET_P99_MS = 50.0


def run(mode: Mode) -> Figure:
    jobs = mode.pick(60, 400)
    spacing = mode.pick(0.02, 0.025)
    receiver = subprocess.Popen(
        [python(), "-m", __name__, "--worker", json.dumps({"role": "receiver"})],
        stdout=subprocess.PIPE, text=True, env=worker_env(),
    )
    try:
        assert receiver.stdout is not None
        hook_url = receiver.stdout.readline().strip()
        bare = {"role": "bare", "url": hook_url, "count": jobs, "spacing": spacing}
        baseline = run_worker(__name__, bare, timeout=120)
        with fixed_json_server(COMPLETED_BODY) as served:
            db = mode.workdir / "delivery.db"
            notifiers = (
                f"notifiers:\n  hook:\n    type: webhook\n    url: {hook_url}\n    secret: {WEBHOOK_SECRET}\n"
            )
            config = config_file(mode.workdir, base_url=served.url, state_path=db, notifiers=notifiers)
            watched = run_worker(
                __name__,
                {"role": "daemon", "config": str(config), "db": str(db), "count": jobs, "spacing": spacing},
                timeout=180,
            )
        with urllib.request.urlopen(hook_url.replace("/hook", "/arrivals"), timeout=10) as answer:  # noqa: S310 - loopback
            arrivals: dict[str, float] = json.loads(answer.read())
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)
    latencies = [
        (arrivals[job_id] - detected) * 1000
        for job_id, detected in watched["detected"].items()
        if job_id in arrivals
    ]
    if len(latencies) < jobs:
        raise RuntimeError(f"only {len(latencies)} of {jobs} notifications arrived")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    base_p50, base_p99 = percentile(baseline["rtt_ms"], 50), percentile(baseline["rtt_ms"], 99)
    return Figure(
        key="delivery",
        title="Delivery latency, final poll to webhook arrival",
        value=round(p99, 2),
        unit="ms p99",
        baseline=round(base_p99, 2),
        baseline_label="bare aiohttp POST round trip, p99",
        ratio=round(p99 / base_p99, 2),
        target=f"p99 < {TARGET_P99_MS:.0f} ms",
        met=p99 < TARGET_P99_MS,
        summary=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms vs bare POST p50 {base_p50:.1f} ms, p99 {base_p99:.1f} ms",
        details={
            "jobs": jobs,
            "spacing_s": spacing,
            "server": served.kind,
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(latencies), 2),
            "baseline_p50_ms": round(base_p50, 2),
            "baseline_p99_ms": round(base_p99, 2),
        },
    )


# --- the receiver -------------------------------------------------------------------


async def _receiver() -> None:
    from aiohttp import web

    arrivals: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        arrived = time.time()
        data = json.loads(raw).get("data") or {}
        arrivals[str(data.get("job_id"))] = arrived
        return web.Response(status=204)

    async def listing(_: web.Request) -> web.Response:
        return web.json_response(arrivals)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/arrivals", listing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"http://127.0.0.1:{port}/hook", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# --- the baseline: bare POSTs ---------------------------------------------------------


async def _bare(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    body = json.dumps({"type": "contact_import.completed", "data": {"job_id": "x", "pad": "p" * 600}}).encode()
    rtt: list[float] = []
    async with aiohttp.ClientSession() as session:
        for index in range(args["count"] + 5):
            started = time.perf_counter()
            async with session.post(args["url"], data=body, headers={"Content-Type": "application/json"}) as answer:
                await answer.read()
            if index >= 5:  # the first ones open the connection
                rtt.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(args["spacing"])
    return {"rtt_ms": rtt}


# --- the daemon -------------------------------------------------------------------------


async def _daemon(args: dict[str, Any]) -> dict[str, Any]:
    from watcher.config import load_config
    from watcher.daemon import Daemon
    from watcher.models import JobRef
    from watcher.store.sqlite import SqliteStore

    detected: dict[str, float] = {}

    class NotingStore(SqliteStore):
        """The real SQLite store, noting the detected_at of each outcome it writes."""

        async def record_outcome(self, job_id: str, **kwargs: Any) -> bool:
            written = await super().record_outcome(job_id, **kwargs)
            if written:
                detected[job_id] = kwargs["detected_at"]
            return written

    quiet_logging()
    daemon = Daemon(load_config(args["config"], env={}), store=NotingStore(args["db"]))
    count, spacing = args["count"], args["spacing"]

    async def add_and_wait() -> None:
        now = time.time()
        for index in range(count):
            job = JobRef(f"dl-{index:05d}")
            await daemon.store.add_job(job, now=now, first_poll_at=now + 0.3 + index * spacing)
        assert daemon.engine is not None
        daemon.engine.wake()
        deadline = time.monotonic() + 60 + count * spacing
        while time.monotonic() < deadline:
            counts = await daemon.store.counts()
            if counts.watching == 0 and counts.pending_deliveries == 0:
                break
            await asyncio.sleep(0.1)
        daemon.stop()

    tasks: list[asyncio.Task[None]] = []
    daemon.on_started.append(lambda _: tasks.append(asyncio.ensure_future(add_and_wait())))
    await daemon.run(install_signals=False)
    return {"detected": detected}


def _main(args: dict[str, Any]) -> None:
    role = args["role"]
    if role == "receiver":
        asyncio.run(_receiver())
    elif role == "bare":
        emit(asyncio.run(_bare(args)))
    else:
        emit(asyncio.run(_daemon(args)))


if __name__ == "__main__":
    parsed = worker_main(sys.argv[1:])
    _main(parsed)
