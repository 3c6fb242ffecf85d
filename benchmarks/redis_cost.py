"""Figure 7, Redis mode: client CPU and Redis commands per poll, one replica and three.

The state lives in Redis (a private redis-server when installed, see `_servers.redis_server`)
under a random prefix, holding N pending jobs that are due again a millisecond after each
poll, so replicas poll as fast as they can. Each replica is the real `Daemon` in a process
of its own (Redis store, shared Redis rate budget, engine, outbox, batch loop, scheduler),
against the same fast local server as figure 1; the baseline is figure 1's bare aiohttp
GET loop in its own process. All processes of a case are started together and measure the
same wall-clock window after a warm-up: CPU time (`time.process_time`) and polls per replica.

Redis commands are counted by Redis itself over that window: `INFO commandstats` before
and after. Redis 7 counts a command a Lua script runs under its own name there too (an
EVALSHA that runs 3 HSETs adds 1 to evalsha and 3 to hset), so commandstats alone cannot
say which commands came from clients. A MONITOR connection, open over the same window,
tells them apart (a script's calls carry `[db lua]`): client commands per poll are those
without it. Both counts are reported, with the client commands by name.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

from benchmarks._harness import (
    PENDING_BODY,
    Figure,
    Mode,
    config_file,
    emit,
    job_ids,
    median,
    python,
    quiet_logging,
    run_worker,
    worker_env,
    worker_main,
)
from benchmarks._servers import fixed_json_server, redis_server

#: Targets of issue 15: client commands per poll, CPU per poll (x bare), 3 replicas' CPU per poll (x 1).
TARGET_COMMANDS = 1.5
TARGET_CPU = 2.0
TARGET_SCALE_CPU = 1.3

_POLLING = "  initial_delay: 0s\n  min_interval: 0.001s\n  max_interval: 0.001s\n"


def run(mode: Mode) -> Figure:
    jobs = mode.pick(500, 2_000)
    rounds = mode.pick(1, 5)
    warmup, window = mode.pick((2.0, 2.0), (4.0, 8.0))
    runs: list[dict[str, Any]] = []
    with fixed_json_server(PENDING_BODY) as served, redis_server() as redis:
        prefix = f"bench-{uuid.uuid4().hex[:10]}"
        state_url = f"{redis.url}?prefix={prefix}"
        try:
            asyncio.run(_fill(state_url, jobs))
            config = config_file(
                mode.workdir, base_url=served.url, state_path=mode.workdir / "redis-cost",
                state_url=state_url, polling=_POLLING,
            )  # fmt: skip
            common = {"url": served.url, "polls": mode.pick(1_000, 10_000), "warmup": mode.pick(300, 2_000),
                      "concurrency": 32, "jobs": jobs}  # fmt: skip
            for _ in range(rounds):
                bare = run_worker("benchmarks.poll_cost", {**common, "side": "bare"}, timeout=300)
                one = _case(redis.url, str(config), 1, warmup, window)
                three = _case(redis.url, str(config), 3, warmup, window)
                runs.append({"bare_cpu_us": bare["cpu_us"], "one": one, "three": three})
        finally:
            asyncio.run(_clean(redis.url, prefix))
    return _figure(mode, runs, jobs=jobs, window=window, server=served.kind, redis=redis.kind)


def _figure(mode: Mode, runs: list[dict[str, Any]], **facts: Any) -> Figure:
    def med(path: str) -> float:
        case, key = path.split(".")
        return median([r[case][key] for r in runs])

    bare_us = median([r["bare_cpu_us"] for r in runs])
    ratios = [r["one"]["cpu_us"] / r["bare_cpu_us"] for r in runs]
    cpu_ratio = median(ratios)
    one_cmds, three_cmds = med("one.client_commands_per_poll"), med("three.client_commands_per_poll")
    rate_ratio = median([r["three"]["polls_per_s"] / r["one"]["polls_per_s"] for r in runs])
    cpu_scale = median([r["three"]["cpu_us"] / r["one"]["cpu_us"] for r in runs])
    met = (
        cpu_ratio <= TARGET_CPU and max(one_cmds, three_cmds) <= TARGET_COMMANDS
        and rate_ratio >= 1.0 and cpu_scale <= TARGET_SCALE_CPU
    )  # fmt: skip
    return Figure(
        key="redis_cost",
        title="Redis mode: cost per poll, one replica and three",
        value=round(med("one.cpu_us"), 1),
        unit="µs CPU/poll (one replica)",
        baseline=round(bare_us, 1),
        baseline_label="bare aiohttp GET loop",
        ratio=round(cpu_ratio, 2),
        target=(
            f"≤ {TARGET_CPU}× the bare loop; ≤ {TARGET_COMMANDS} client Redis commands/poll; three replicas"
            f" ≥ 1× one's polls/s at ≤ {TARGET_SCALE_CPU}× its CPU/poll"
        ),
        met=None if mode.quick else met,
        summary=(
            f"one replica {med('one.cpu_us'):.0f} µs CPU/poll ({cpu_ratio:.2f}× bare {bare_us:.0f} µs),"
            f" {one_cmds:.2f} client Redis commands/poll; three replicas {rate_ratio:.2f}× one's polls/s"
            f" at {cpu_scale:.2f}× its CPU/poll, {three_cmds:.2f} client commands/poll"
        ),
        details={
            **facts,
            "rounds": len(runs),
            "cpu_round_ratios": ", ".join(f"{r:.2f}" for r in ratios),
            "cpu_ratio_spread": round(max(ratios) - min(ratios), 2),
            "one_polls_per_s": round(med("one.polls_per_s")),
            "three_polls_per_s": round(med("three.polls_per_s")),
            "three_vs_one_polls_per_s": round(rate_ratio, 2),
            "three_cpu_us_per_poll": round(med("three.cpu_us"), 1),
            "three_vs_one_cpu_per_poll": round(cpu_scale, 2),
            "one_client_commands_per_poll": round(one_cmds, 2),
            "three_client_commands_per_poll": round(three_cmds, 2),
            "one_commandstats_per_poll": round(med("one.commandstats_per_poll"), 2),
            "three_commandstats_per_poll": round(med("three.commandstats_per_poll"), 2),
            "one_client_commands_by_name_per_poll": _by_name(runs[-1]["one"]),
            "three_client_commands_by_name_per_poll": _by_name(runs[-1]["three"]),
            "runs": runs,
        },
    )


def _by_name(case: dict[str, Any]) -> str:
    """The client commands of a case by name, per poll, most frequent first."""
    polls = max(1, case["polls"])
    ordered = sorted(case["client_commands"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {count / polls:.2f}" for name, count in ordered)


async def _fill(state_url: str, count: int) -> None:
    from watcher.models import JobRef
    from watcher.store import open_store
    from watcher.store.base import AddsJobs

    store = open_store(state_url)
    await store.open()
    try:
        assert isinstance(store, AddsJobs)
        refs = [JobRef(job_id, {"team": "bench"}) for job_id in job_ids(count)]
        for start in range(0, count, 500):
            await store.add_jobs(refs[start : start + 500], now=time.time() - 60, first_poll_at=0.0)
    finally:
        await store.close()


async def _clean(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()


# --- one case: `replicas` daemons over one measured window ---------------------------------


def _case(redis_url: str, config: str, replicas: int, warmup: float, window: float) -> dict[str, Any]:
    import redis

    args = json.dumps({"config": config})
    workers = [
        subprocess.Popen([python(), "-m", __name__, "--worker", args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=worker_env())
        for _ in range(replicas)
    ]  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    monitor = _Monitor(redis_url)
    try:
        for worker in workers:  # each says when its daemon has started; then all measure one window
            assert worker.stdout is not None and worker.stdin is not None
            if worker.stdout.readline().strip() != "started":
                raise RuntimeError(f"redis_cost worker did not start:\n{_result(worker)}")
        begin = time.time() + warmup
        end = begin + window
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(json.dumps({"begin": begin, "end": end}) + "\n")
            worker.stdin.flush()
        time.sleep(max(0.0, begin - time.time()))
        before = _commandstats(client)
        monitor.start()
        time.sleep(max(0.0, end - time.time()))
        after = _commandstats(client)
        monitor.stop()
        results = [_result(worker) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        client.close()
    polls = sum(r["polls"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    wall = median([r["wall_s"] for r in results])
    total = sum(after.values()) - sum(before.values()) - 1  # less our own INFO
    client_commands = Counter({k: v for k, v in monitor.client.items() if k not in ("info",)})
    return {
        "replicas": replicas,
        "polls": polls,
        "polls_per_s": polls / wall,
        "cpu_us": cpu / max(1, polls) * 1e6,
        "commandstats_per_poll": total / max(1, polls),
        "client_commands_per_poll": sum(client_commands.values()) / max(1, polls),
        "script_calls_per_poll": monitor.scripted / max(1, polls),
        "client_commands": dict(client_commands),
        "per_replica_polls": [r["polls"] for r in results],
    }


def _result(worker: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = worker.communicate(timeout=60)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if worker.returncode != 0 or not lines:
        raise RuntimeError(f"redis_cost worker failed ({worker.returncode}):\n{err[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _commandstats(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


_MONITOR_LINE = re.compile(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


class _Monitor:
    """Counts the commands Redis executes while open: by clients (by name), and run by scripts."""

    def __init__(self, url: str) -> None:
        import redis

        self._connection = redis.Redis.from_url(url).connection_pool.get_connection("MONITOR")
        self._running = False
        self.client: Counter[str] = Counter()
        self.scripted = 0
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self._connection.send_command("MONITOR")
        self._connection.read_response()  # OK
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=10)
        self._connection.disconnect()

    def _read(self) -> None:
        while self._running:
            try:
                line = self._connection.read_response()
            except Exception:
                return
            text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
            found = _MONITOR_LINE.match(text)
            if found is None:
                continue
            if found.group(1) == "lua":
                self.scripted += 1
            else:
                self.client[found.group(2).lower()] += 1


# --- the worker: one daemon replica --------------------------------------------------------


async def _replica(args: dict[str, Any]) -> dict[str, Any]:
    from watcher.config import load_config
    from watcher.daemon import Daemon

    quiet_logging()
    daemon = Daemon(load_config(args["config"], env={}))
    polls = [0]
    marks: dict[str, tuple[float, float, int]] = {}
    tasks: list[asyncio.Future[None]] = []

    def on_poll(_result: str, _seconds: float) -> None:
        polls[0] += 1

    async def measure() -> None:
        print("started", flush=True)
        window = json.loads(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        for name in ("begin", "end"):
            await asyncio.sleep(max(0.0, window[name] - time.time()))
            marks[name] = (time.process_time(), time.perf_counter(), polls[0])
        daemon.stop()

    def started(_: Daemon) -> None:
        assert daemon.engine is not None
        daemon.engine.on_poll = on_poll
        tasks.append(asyncio.ensure_future(measure()))

    daemon.on_started.append(started)
    await daemon.run(install_signals=False)
    (cpu0, wall0, polls0), (cpu1, wall1, polls1) = marks["begin"], marks["end"]
    return {"polls": polls1 - polls0, "cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0}


if __name__ == "__main__":
    parsed = worker_main(sys.argv[1:])
    emit(asyncio.run(_replica(parsed)))
