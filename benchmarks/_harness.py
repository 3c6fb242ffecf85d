"""What every benchmark shares: the figure record, worker processes, job set-up and small statistics.

A measured program runs in a worker process of its own (``python -m benchmarks.<name>
--worker ...``) so that its CPU time and memory are its own: the driver, the servers and
the other side of every connection live in other processes. A worker prints one JSON
object as its last line of output.
"""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def _import_body(status: str, results: dict[str, int], **times: str) -> bytes:
    """An import status body as SendGrid sends it (a real answer's shape and size)."""
    body = {"id": "0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11", "status": status, "job_type": "upsert",
            "results": {"requested_count": 1000, **results}, "started_at": "2026-11-27T10:00:00Z", **times}
    return json.dumps(body, separators=(",", ":")).encode()


#: The body every "still running" poll receives.
PENDING_BODY = _import_body(
    "pending", {"created_count": 0, "updated_count": 0, "deleted_count": 0, "errored_count": 0}
)
#: The same job, finished.
COMPLETED_BODY = _import_body(
    "completed", {"created_count": 990, "updated_count": 10, "deleted_count": 0, "errored_count": 0},
    finished_at="2026-11-27T10:01:00Z",
)

API_KEY = "SG.bench-key"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a test secret for a loopback receiver


@dataclass
class Figure:
    """One measured figure beside its baseline, with its target."""

    key: str
    title: str
    value: float
    unit: str
    baseline: float
    baseline_label: str
    ratio: float | None
    target: str
    met: bool | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Mode:
    """Quick (CI: seconds, small sizes) or full (the committed results)."""

    quick: bool
    workdir: Path
    output: Path

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


# --- worker processes -----------------------------------------------------------------


def python() -> str:
    return sys.executable


def run_worker(module: str, args: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run ``python -m <module> --worker JSON`` and return the JSON object it printed last."""
    command = [python(), "-m", module, "--worker", json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=worker_env())
    if done.returncode != 0:
        raise RuntimeError(f"{module} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module} worker printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def worker_env() -> dict[str, str]:
    """The environment of a worker: this one, with the repository importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def worker_main(argv: Sequence[str]) -> dict[str, Any]:
    """The arguments of a worker invocation; exits with a usage line when this is not one."""
    if len(argv) == 2 and argv[0] == "--worker":
        parsed: dict[str, Any] = json.loads(argv[1])
        return parsed
    sys.exit("usage: python -m benchmarks (this module is run by it)")


def emit(result: dict[str, Any]) -> None:
    """A worker's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def quiet_logging() -> None:
    """Log as the daemon does in production (info, JSON), into /dev/null: the cost stays, the noise goes."""
    from watcher.logs import configure_logging

    configure_logging("info", "json", stream=open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- memory ---------------------------------------------------------------------------


def _proc_status(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; the peak elsewhere)."""
    return _proc_status("VmRSS") or peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The highest resident set size this process reached (VmHWM; ru_maxrss elsewhere)."""
    return _proc_status("VmHWM") or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --- the state store, filled for a benchmark ------------------------------------------------


def job_ids(count: int, prefix: str = "bench") -> list[str]:
    return [f"{prefix}-{i:07d}" for i in range(count)]


def fill_store(path: Path, ids: Sequence[str], *, added_at: float, next_poll_at: Sequence[float] | float) -> None:
    """Create the SQLite state file with the watcher's schema and these unfinished jobs, in one transaction."""
    import asyncio

    from watcher.store.sqlite import SqliteStore

    async def create() -> None:
        store = SqliteStore(str(path))
        await store.open()
        await store.close()

    asyncio.run(create())
    times = [next_poll_at] * len(ids) if isinstance(next_poll_at, float | int) else list(next_poll_at)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO jobs (id, labels, notify, added_at, next_poll_at, due_at) VALUES (?, ?, NULL, ?, ?, ?)",
            ((job_id, '{"team":"bench"}', added_at, at, at) for job_id, at in zip(ids, times, strict=True)),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def config_file(
    workdir: Path,
    *,
    base_url: str,
    state_path: Path,
    polling: str = "",
    notifiers: str = "",
    sendgrid: str = "",
    state_url: str = "",
    sources: str = "",
) -> Path:
    """A daemon configuration as a user writes it; returns its path (named after `state_path`).

    `state_url` replaces the SQLite file at `state_path` (a Redis URL); `sources` is the YAML
    of a `sources:` list, as written under that key."""
    polling = polling or "  initial_delay: 2s\n"
    sources = f"sources:\n{sources}" if sources else ""
    text = (
        "sendgrid:\n"
        f"  api_key: {API_KEY}\n"
        f"  base_url: {base_url}\n"
        f"{sendgrid}"
        f"polling:\n{polling}"
        "state:\n"
        f"  url: {state_url or f'sqlite:///{state_path}'}\n"
        f"heartbeat_file: {workdir / 'heartbeat'}\n"
        "shutdown_grace: 2s\n"
        "logging:\n  level: info\n  format: json\n"
        f"{notifiers}"
        f"{sources}"
    )
    path = workdir / f"config-{state_path.stem}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
