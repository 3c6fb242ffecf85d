"""The `import` and `export` commands: start a contact job and watch it.

`import` checks the CSV (limits, then columns against the account's field definitions) before it
starts anything, then starts the import, uploads the file and tracks the job: through the daemon's
API (POST /jobs) when `server:` is configured and answers, else in the state store. `--wait` follows
the job in the terminal: through the daemon's API, or the store while a daemon runs, or else by
polling SendGrid itself. Exit codes: 0 completed (an export: ready), 1 otherwise, 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher.config import Config

if TYPE_CHECKING:
    from watcher.accounts import Account
    from watcher.csvimport import MeasuredFile
    from watcher.models import JobRef

COMMANDS: frozenset[str] = frozenset({"import", "export"})
EXIT_OK, EXIT_RUNTIME = 0, 1


def add_parsers(with_config: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser."""
    imp = with_config("import", "start a SendGrid contacts import from a CSV file (mapped, checked, uploaded) "
                                "and watch it")
    imp.add_argument("csv", metavar="CONTACTS.csv", help="the contacts: a header row naming the fields, then one "
                     "contact a row (UTF-8; a .csv.gz is sent as it is)")
    imp.add_argument("--list", dest="lists", action="append", default=[], metavar="ID",
                     help="add every contact to this list (repeatable)")
    imp.add_argument("--map", dest="maps", action="append", default=[], metavar="COLUMN=FIELD",
                     help="map a column to a field (its name or id) when the column's name is not the field's "
                          "(repeatable)")
    imp.add_argument("--skip", dest="skips", action="append", default=[], metavar="COLUMN",
                     help="leave this column out of the import (repeatable)")
    imp.add_argument("--batch", metavar="NAME", help="put the job in this batch (one summary for all its jobs)")
    imp.add_argument("--label", dest="labels", action="append", default=[], metavar="K=V",
                     help="a label shown in notifications and usable in routes (repeatable)")
    _common(imp)
    imp.add_argument("--dry-run", action="store_true",
                     help="print the column mapping and the requests it would send, and send nothing that "
                          "changes anything: it only reads the field definitions (a GET) to map the columns")
    exp = with_config("export", "start a SendGrid contacts export and watch it until its files are ready")
    exp.add_argument("--list", dest="lists", action="append", default=[], metavar="ID",
                     help="export this list (repeatable; no --list and no --segment: every contact)")
    exp.add_argument("--segment", dest="segments", action="append", default=[], metavar="ID",
                     help="export this segment (repeatable)")
    exp.add_argument("--file-type", choices=("csv", "json"), default="csv", help="the files' format (default: csv)")
    _common(exp)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--account", metavar="NAME", help="the configured SendGrid account (default: the first)")
    parser.add_argument("--wait", action="store_true",
                        help="follow the job until it ends; exit 0 if it completed (an export: ready), else 1")


def run(command: str, config: Config, args: argparse.Namespace) -> int:
    """Run one of COMMANDS; returns the exit code."""
    from watcher.cli_commands import say
    from watcher.errors import WatcherError
    from watcher.net import OutboundRefused

    try:
        if command == "import":
            return asyncio.run(_import(config, args, _measured(args.csv)))
        return asyncio.run(_export(config, args))
    except (WatcherError, OutboundRefused) as exc:
        say(str(exc))
        return EXIT_RUNTIME


def _measured(csv_path: str) -> MeasuredFile:
    """The file's header, rows and size, its limits checked: before any request."""
    from watcher.csvimport import measure_csv

    path = Path(csv_path)
    if not path.is_file():
        raise ValueError(f"{csv_path}: no such file")
    return measure_csv(path)


async def _import(config: Config, args: argparse.Namespace, measured: MeasuredFile) -> int:
    from watcher.clock import SystemClock
    from watcher.csvimport import parse_labels, parse_pairs, plan_import
    from watcher.lifecycle import Lifecycle, import_csv
    from watcher.models import JobKind

    path = Path(args.csv)
    maps, labels = parse_pairs(args.maps, "--map"), parse_labels(args.labels, "--label")
    async with _accounts(config) as accounts:
        account = accounts.get(args.account)
        lifecycle = Lifecycle(account, clock=SystemClock())
        definitions = await lifecycle.field_definitions()
        plan = plan_import(path, definitions, maps=maps, skips=args.skips, measured=measured)
        if args.dry_run:
            _print_dry_run(account, plan, args.lists)
            return EXIT_OK
        started = await import_csv(lifecycle, path, plan, list_ids=args.lists)
        print(f"import {started.job_id}: started, {plan.rows:,} contacts uploaded ({account.name})")
        ref = _ref(started.job_id, labels, args.batch, JobKind.IMPORT, account.name)
        via_api = await track(config, ref)
        return await follow(config, account, ref, via_api=via_api) if args.wait else EXIT_OK


async def _export(config: Config, args: argparse.Namespace) -> int:
    from watcher.clock import SystemClock
    from watcher.lifecycle import Lifecycle
    from watcher.models import JobKind

    async with _accounts(config) as accounts:
        account = accounts.get(args.account)
        export_id = await Lifecycle(account, clock=SystemClock()).start_export(
            list_ids=args.lists, segment_ids=args.segments, file_type=args.file_type)
        print(f"export {export_id}: started ({account.name})")
        ref = _ref(export_id, {}, None, JobKind.EXPORT, account.name)
        via_api = await track(config, ref)
        return await follow(config, account, ref, via_api=via_api) if args.wait else EXIT_OK


def _accounts(config: Config) -> Any:
    from watcher.accounts import Accounts
    from watcher.clock import SystemClock

    return Accounts.open(config, clock=SystemClock(), store_url=config.state.url)


def _ref(job_id: str, labels: dict[str, str], batch: str | None, kind: Any, account: str) -> JobRef:
    from watcher.models import JobRef

    return JobRef(job_id, labels, None, batch, kind=kind, account=account)


def _print_dry_run(account: Account, plan: Any, lists: list[str]) -> None:
    from watcher.lifecycle_requests import IMPORTS_PATH, import_request

    body = json.dumps(import_request(plan.field_mappings, lists), indent=2)
    base = account.settings.base_url.rstrip("/")
    sent = "the file as it is (gzip)" if plan.gzipped else "the file gzip-compressed on the fly"
    print(f"{plan.rows:,} contacts, {plan.bytes:,} bytes, {len(plan.columns)} columns:\n{plan.table()}\n")
    print(f"would send (account {account.name}):\nPUT {base}{IMPORTS_PATH}\n{body}\n")
    print(f"then one raw PUT of {sent} to the upload_uri SendGrid answers, with exactly the upload_headers "
          "it answers and Content-Length (never multipart, never the API key)\n(dry run: nothing sent)")


# --- tracking -------------------------------------------------------------------------------


def _daemon_url(config: Config) -> str | None:
    server = config.server
    if server is None:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)  # noqa: S104 - mapped to loopback
    return f"http://{f'[{host}]' if ':' in host else host}:{server.port}"


def _daemon_headers(config: Config) -> dict[str, str]:
    token = config.server.token if config.server is not None else None
    return {"Authorization": f"Bearer {token.reveal()}"} if token is not None else {}


async def track(config: Config, ref: JobRef) -> bool:
    """Hand the job to the daemon's API (True), or else to the store (False)."""
    import aiohttp

    from watcher.cli_commands import say
    from watcher.net import configured_session

    url = _daemon_url(config)
    if url is not None:
        message = {"id": ref.id, "labels": dict(ref.labels), "batch": ref.batch, "kind": ref.kind.value,
                   "account": ref.account}
        try:
            async with configured_session() as session, session.post(
                f"{url}/jobs", json=message, headers=_daemon_headers(config), timeout=aiohttp.ClientTimeout(10)
            ) as response:
                answer = await response.text()
                if response.status in (200, 202):
                    print(f"{ref.id}: watched by the daemon at {url}")
                    return True
                say(f"the daemon at {url} refused the job (HTTP {response.status}): {answer[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            say(f"the daemon at {url} did not answer ({type(exc).__name__}); tracking in the state store")
    await _track_in_store(config, ref)
    return False


async def _track_in_store(config: Config, ref: JobRef) -> None:
    from watcher.cli_commands import keeps_nothing, opened
    from watcher.clock import SystemClock
    from watcher.sources.base import Intake

    if keeps_nothing(config.state.url):
        raise ValueError(f"{ref.id} started but is not tracked: state.url is {config.state.url}, which keeps "
                         "nothing; add it to the daemon (`add`) yourself")
    async with opened(config) as store:
        await Intake(store, config.polling, SystemClock(), config.notifier_names).add(ref)
    print(f"{ref.id}: tracked in the state store")


# --- following ------------------------------------------------------------------------------


async def follow(config: Config, account: Account, ref: JobRef, *, via_api: bool) -> int:
    """Show the job's progress until it ends; the exit code of its outcome."""
    from watcher.heartbeat import check_health

    show = _Progress(ref.id)
    if via_api:
        outcome = await _follow_api(config, ref, show)
    elif check_health(config)[0]:
        outcome = await _follow_store(config, ref, show)
    else:
        outcome = await _follow_sendgrid(config, account, ref, show)
    show.done()
    return EXIT_OK if outcome in ("completed", "ready") else EXIT_RUNTIME


class _Progress:
    """One updating line on a terminal, one line per change otherwise."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.tty = sys.stdout.isatty()
        self.last = ""

    def show(self, state: str, status: str | None, results: Any) -> None:
        text = f"{self.job_id}: {state}{f' ({status})' if status and status != state else ''}{_counts(results)}"
        if text == self.last:
            return
        self.last = text
        if self.tty:
            print(f"\r\x1b[2K{text}", end="", flush=True)
        else:
            print(text, flush=True)

    def done(self) -> None:
        if self.tty and self.last:
            print()


def _counts(results: Any) -> str:
    if not isinstance(results, dict):
        return ""
    parts = [f"{k.removesuffix('_count')} {v}" for k, v in results.items() if k.endswith("_count") and v is not None]
    urls = results.get("urls")
    if isinstance(urls, list) and urls:
        parts.append(f"{len(urls)} file{'s' if len(urls) > 1 else ''}")
    return f": {', '.join(parts)}" if parts else ""


async def _follow_api(config: Config, ref: JobRef, show: _Progress) -> str:
    import aiohttp

    from watcher.net import configured_session

    url = f"{_daemon_url(config)}/jobs/{ref.id}"
    async with configured_session() as session:
        while True:
            async with session.get(url, headers=_daemon_headers(config),
                                   timeout=aiohttp.ClientTimeout(10)) as response:
                view = await response.json() if response.status == 200 else {}
            state = str(view.get("state") or "watching")
            show.show(state, view.get("status"), view.get("results"))
            if state != "watching":
                return state
            await asyncio.sleep(config.polling.min_interval)


async def _follow_store(config: Config, ref: JobRef, show: _Progress) -> str:
    from watcher.cli_commands import opened

    async with opened(config) as store:
        while True:
            job = await store.get_job(ref.id)
            if job is not None:
                snapshot = job.snapshot
                show.show(job.state, snapshot.status if snapshot else None, dict(snapshot.results) if snapshot else {})
                if job.outcome is not None:
                    return job.state
            await asyncio.sleep(config.polling.min_interval)


async def _follow_sendgrid(config: Config, account: Account, ref: JobRef, show: _Progress) -> str:
    """No daemon watches yet: poll SendGrid here until the job ends or polling.deadline passes."""
    import time

    from watcher.errors import ImportNotFound, TryLater
    from watcher.models import JobKind, terminal_statuses

    read = account.client.get_export if ref.kind is JobKind.EXPORT else account.client.get_import
    terminal = terminal_statuses(ref.kind)
    started = time.monotonic()
    while time.monotonic() - started < config.polling.deadline:
        wait = config.polling.min_interval
        try:
            snapshot = await read(ref.id)
        except ImportNotFound:
            if time.monotonic() - started > config.polling.not_found_grace:
                show.show("not_found", None, {})
                return "not_found"
        except TryLater as exc:
            wait = max(wait, exc.retry_after or 0.0)
        else:
            status = snapshot.normalized_status
            outcome = terminal.get(status or "")
            show.show(outcome.value if outcome else "watching", snapshot.status, dict(snapshot.results))
            if outcome is not None:
                return outcome.value
        await asyncio.sleep(wait)
    show.show("timed_out", None, {})
    return "timed_out"
