"""`import-watcher demo`: the whole loop on the bundled fake SendGrid, no setup, no network.

Five parts, each watched by the daemon until idle and told by the console notifier: sample jobs
covering every import outcome; an import started from the bundled sample CSV; an export; a backup
taken and listed; that backup restored. Parts 2 to 5 call what the `import`, `export`, `backup`,
`backups` and `restore` commands call (watcher.lifecycle, watcher.backups, watcher.backup_restore),
so the demo runs the real paths, with the fake's timings.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.config import Config, load_config
from watcher.daemon import Daemon
from watcher.logs import configure_logging
from watcher.models import JobKind, JobRef
from watcher.status import job_views, status_table
from watcher.store import open_store
from watcher.store.base import StateStore
from watcher.testing.fake_sendgrid import FakeSendGrid

if TYPE_CHECKING:
    from watcher.accounts import Account
    from watcher.lifecycle import Lifecycle

DEMO_KEY = "SG.fake-key"
#: The bundled contacts the demo imports: reserved fields and the fake's custom fields, mapped by name.
SAMPLE_CSV = Path(__file__).parent / "static" / "demo-contacts.csv"

# The embedded default configuration: every outcome in a few seconds.
DEMO_CONFIG = """\
sendgrid:
  api_key: ${DEMO_API_KEY}
  base_url: ${DEMO_BASE_URL}
  max_concurrency: 8
  allow_private: true    # the bundled fake serves its files and upload link on plain-http loopback
  allow_insecure: true
polling:
  initial_delay: 200ms
  min_interval: 300ms
  max_interval: 1s
  deadline: 6s
  not_found_grace: 2s
batches:
  settle: 300ms
state:
  url: sqlite:///${DEMO_DIR}/demo-state.db
sources:
  - type: file
    path: ${DEMO_DIR}/jobs.yaml
notifiers:
  console:
    type: console
backups:
  - name: nightly
    schedule: "30 2 * * *"
    destination: ${DEMO_DIR}/backups
    keep: 3
    notify: [console]
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
    """Start the fake, watch the sample jobs to their five outcomes, then import, export, back up and
    restore; print a summary. Exit code 0 when every part ended as expected."""
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
            print(f"import-watcher demo: fake SendGrid at {fake.base_url}; work directory {workdir}")
            _header(1, f"watching {len(EXPECTED)} sample jobs, one per outcome",
                    "import-watcher run -c config.yaml --until-idle")
            await _watch(config)
            problems: list[str] = []
            expected = {**EXPECTED, **await _lifecycle_parts(config, workdir, problems)}
            views = await _final_views(config)
    print("\nSummary:\n" + status_table(views))
    outcomes = {v["id"]: v["state"] for v in views}
    if missing := {k: v for k, v in expected.items() if outcomes.get(k) != v}:
        problems.append(f"unexpected outcomes {missing}")
    elapsed = time.monotonic() - started
    if problems:
        print(f"\ndemo FAILED: {'; '.join(problems)}", file=sys.stderr)
        return 1
    print(f"\nAll {len(EXPECTED)} outcomes seen and notified; a CSV imported, contacts exported, backed up and "
          f"restored, in {elapsed:.1f}s.")
    return 0


async def _lifecycle_parts(config: Config, workdir: Path, problems: list[str]) -> dict[str, str]:
    """Parts 2 to 5; the job ids they started and the outcome each must reach (what went wrong
    otherwise is added to `problems`)."""
    from watcher.accounts import Accounts
    from watcher.clock import SystemClock
    from watcher.csvimport import plan_import
    from watcher.lifecycle import Lifecycle, import_csv

    clock = SystemClock()
    async with Accounts.open(config, clock=clock) as accounts:
        account = accounts.get(None)
        lifecycle = Lifecycle(account, clock=clock)

        csv_path = workdir / SAMPLE_CSV.name
        csv_path.write_bytes(SAMPLE_CSV.read_bytes())
        _header(2, "importing a CSV: columns mapped to field ids by name, the file uploaded gzipped",
                f"import-watcher import -c config.yaml {csv_path.name} --label source=demo")
        plan = plan_import(csv_path, await lifecycle.field_definitions())
        print(f"{plan.rows} contacts, {len(plan.columns)} columns:\n{plan.table()}")
        imported = await import_csv(lifecycle, csv_path, plan)
        print(f"import {imported.job_id}: started, {plan.rows} contacts uploaded")
        await _track(config, JobRef(imported.job_id, {"source": "demo"}, kind=JobKind.IMPORT, account=account.name))
        await _watch(config)

        _header(3, "exporting every contact", "import-watcher export -c config.yaml")
        export_id = await lifecycle.start_export()
        print(f"export {export_id}: started")
        await _track(config, JobRef(export_id, kind=JobKind.EXPORT, account=account.name))
        await _watch(config)

        _header(4, "a backup taken: export, download, checksums, manifest", "import-watcher backup -c config.yaml")
        backup = await _backup(config, account, lifecycle)
        await _watch(config)
    expected = {imported.job_id: "completed", export_id: "ready"}
    if backup is None:
        problems.append("the backup failed")
        return expected

    _header(5, "the backup restored: verified, then imported again as one batch",
            f"import-watcher restore -c config.yaml {backup}")
    restored = await _restore(config, backup)
    if not restored:
        problems.append("the restore started no import")
    await _watch(config)
    return {**expected, **dict.fromkeys(restored, "completed")}


async def _backup(config: Config, account: Account, lifecycle: Lifecycle) -> Path | None:
    """Take the configured backup now and list what is kept; its directory, or None if it failed."""
    from watcher.backups import run_backup
    from watcher.cli_backups import describe, list_backups
    from watcher.clock import SystemClock

    settings = config.backups[0]
    async with _store(config) as store:
        result = await run_backup(settings, account=account, lifecycle=lifecycle, clock=SystemClock(), store=store,
                                  recipients={n.name: n for n in config.notifiers}, policy=config.polling)
    if result.path is None or result.manifest is None:
        print(f"backup {settings.name} failed: {result.reason}", file=sys.stderr)
        return None
    print(f"backup {settings.name}: {result.path} ({describe(result.manifest)})")
    print("\n$ import-watcher backups -c config.yaml")
    list_backups(config)
    return result.path


async def _restore(config: Config, backup: Path) -> list[str]:
    """Restore the backup as the `restore` command does; the ids of the imports it started."""
    from watcher.backup_restore import restore

    if await restore(config, backup) != 0:
        return []
    async with _store(config) as store:
        return [job.id for job in await store.list_jobs() if job.batch and job.batch.startswith("restore:")]


async def _track(config: Config, ref: JobRef) -> None:
    """Hand a started job to the state store, where the daemon picks it up (no `server:` in the demo)."""
    from watcher.clock import SystemClock
    from watcher.sources.base import Intake

    async with _store(config) as store:
        await Intake(store, config.polling, SystemClock(), config.notifier_names).add(ref)


async def _watch(config: Config) -> None:
    """The daemon until every job is final and every notification delivered."""
    print()
    await Daemon(config, refresh_interval=0.5).run(until_idle=True, install_signals=False)


def _header(part: int, title: str, command: str) -> None:
    print(f"\n── {part}/5 {title}\n$ {command}")


async def _final_views(config: Config) -> list[dict[str, object]]:
    async with _store(config) as store:
        return await job_views(store, await store.list_jobs())


@contextlib.asynccontextmanager
async def _store(config: Config) -> AsyncIterator[StateStore]:
    """The demo's state store, opened for one step (the daemon runs hold it between them)."""
    store = open_store(config.state.url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


__all__ = ["DEMO_CONFIG", "SAMPLE_CSV", "run_demo"]
