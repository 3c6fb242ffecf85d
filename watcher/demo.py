"""`import-watcher demo`: the whole loop on the bundled fake SendGrid, no setup, no network."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from watcher.config import Config, load_config
from watcher.daemon import Daemon
from watcher.logs import configure_logging
from watcher.status import job_views, status_table
from watcher.testing.fake_sendgrid import FakeSendGrid

DEMO_KEY = "SG.fake-key"

# The embedded default configuration: every outcome in a few seconds.
DEMO_CONFIG = """\
sendgrid:
  api_key: ${DEMO_API_KEY}
  base_url: ${DEMO_BASE_URL}
  max_concurrency: 8
  allow_private: true    # the bundled fake serves its errors files on plain-http loopback
  allow_insecure: true
polling:
  initial_delay: 200ms
  min_interval: 300ms
  max_interval: 1s
  deadline: 6s
  not_found_grace: 2s
state:
  url: sqlite:///${DEMO_DIR}/demo-state.db
sources:
  - type: file
    path: ${DEMO_DIR}/jobs.yaml
notifiers:
  console:
    type: console
heartbeat_file: ${DEMO_DIR}/demo.heartbeat
shutdown_grace: 2s
"""

DEMO_JOBS = """\
jobs:
  - id: demo-completed-0001
    labels: {team: growth, list: newsletter}
  - id: demo-errored-0002
    labels: {team: growth, list: webinar}
  - id: demo-failed-0003
    labels: {team: sales}
  - id: demo-never-existed
  - id: demo-stuck-pending
    labels: {note: csv never uploaded}
"""

EXPECTED = {
    "demo-completed-0001": "completed",
    "demo-errored-0002": "errored",
    "demo-failed-0003": "failed",
    "demo-never-existed": "not_found",
    "demo-stuck-pending": "timed_out",
}


def _script(fake: FakeSendGrid) -> None:
    fake.script_job("demo-completed-0001", outcome="completed", pending_for=1.0, requested=1200)
    fake.script_job(
        "demo-errored-0002", outcome="errored", pending_for=2.0, requested=1000, errored=10,
        error_rows=[(f"user{i}@example", "invalid email") for i in range(8)]
        + [("x@example.com", "duplicate contact"), ("y@example.com", "reserved field")],
    )
    fake.script_job("demo-failed-0003", outcome="failed", pending_for=1.5, requested=40, job_type="delete")
    fake.script_job("demo-stuck-pending", outcome="pending")


async def run_demo() -> int:
    """Start the fake, watch five sample jobs to their five outcomes, print a summary."""
    started = time.monotonic()
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory(prefix="import-watcher-demo-") as tmp:
        workdir = Path(tmp)
        async with FakeSendGrid(api_keys=[DEMO_KEY]) as fake:
            _script(fake)
            (workdir / "config.yaml").write_text(DEMO_CONFIG, encoding="utf-8")
            (workdir / "jobs.yaml").write_text(DEMO_JOBS, encoding="utf-8")
            config = load_config(
                workdir / "config.yaml",
                env={"DEMO_API_KEY": DEMO_KEY, "DEMO_BASE_URL": fake.base_url, "DEMO_DIR": str(workdir)},
            )
            print(f"import-watcher demo: fake SendGrid at {fake.base_url}; watching {len(EXPECTED)} jobs\n")
            daemon = Daemon(config, refresh_interval=0.5)
            await daemon.run(until_idle=True, install_signals=False)
            views = await _final_views(config)
    print("\nSummary:\n" + status_table(views))
    outcomes = {v["id"]: v["state"] for v in views}
    missing = {k: v for k, v in EXPECTED.items() if outcomes.get(k) != v}
    elapsed = time.monotonic() - started
    if missing:
        print(f"\ndemo FAILED: unexpected outcomes {missing}", file=sys.stderr)
        return 1
    print(f"\nAll {len(EXPECTED)} outcomes seen and notified in {elapsed:.1f}s.")
    return 0


async def _final_views(config: Config) -> list[dict[str, object]]:
    from watcher.store import open_store

    store = open_store(config.state.url)
    await store.open()
    try:
        return await job_views(store, await store.list_jobs())
    finally:
        await store.close()


__all__ = ["DEMO_CONFIG", "run_demo"]
