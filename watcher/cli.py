"""The `import-watcher` command line: run, check, add, status, notify-test, healthcheck, demo, fake-sendgrid."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from watcher.config import Config, FileSourceSettings, load_config
from watcher.errors import ConfigError, InvalidJobId, StoreUnavailable, WatcherError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="import-watcher", description="Watch SendGrid contact import jobs and notify people.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", default=os.environ.get("WATCHER_CONFIG"),
                         help="config file (default: $WATCHER_CONFIG)")
        return sub

    run = with_config("run", "run the daemon")
    run.add_argument(
        "--until-idle", action="store_true", help="exit 0 once every job is final and every notification settled"
    )
    with_config("check", "validate the configuration; exit 2 listing every problem")
    add = with_config("add", "start watching a job (idempotent)")
    add.add_argument("job_id")
    add.add_argument("--label", action="append", default=[], metavar="K=V")
    add.add_argument("--notify", action="append", default=None, metavar="NAME")
    status = with_config("status", "show tracked jobs")
    status.add_argument("job_id", nargs="?")
    status.add_argument("--json", action="store_true")
    test = with_config("notify-test", "send a sample notification through one or all notifiers")
    test.add_argument("name", nargs="?")
    with_config("healthcheck", "exit 0 if the daemon's heartbeat is fresh")
    commands.add_parser("demo", help="watch sample jobs on the bundled fake SendGrid; no setup, no network")
    fake = commands.add_parser("fake-sendgrid", help="serve the bundled fake SendGrid API")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=3030)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except (InvalidJobId, ValueError) as exc:
        print(f"import-watcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        print(f"import-watcher: state store unavailable: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from watcher.demo import run_demo

        return asyncio.run(run_demo())
    if args.command == "fake-sendgrid":
        return _fake_sendgrid(args.host, args.port)
    config = _load(args.config)
    if args.command == "check":
        return _check(config)
    if args.command == "run":
        return _run(config, until_idle=args.until_idle)
    if args.command == "add":
        return asyncio.run(_add(config, args.job_id, args.label, args.notify))
    if args.command == "status":
        return asyncio.run(_status(config, args.job_id, as_json=args.json))
    if args.command == "notify-test":
        return asyncio.run(_notify_test(config, args.name))
    if args.command == "healthcheck":
        return _healthcheck(config)
    raise ValueError(f"unknown command {args.command}")  # pragma: no cover - argparse guards it


def _load(path: str | None) -> Config:
    if not path:
        raise ConfigError(["import-watcher: no config file: pass -c FILE or set WATCHER_CONFIG"])
    return load_config(path)


def _check(config: Config) -> int:
    from watcher.sources.file import check_job_file

    problems: list[str] = []
    for source in config.sources:
        if isinstance(source, FileSourceSettings):
            problems += check_job_file(source.path, config.notifier_names)
    if problems:
        raise ConfigError(problems)
    print(f"{config.path}: OK ({len(config.notifiers)} notifiers, {len(config.sources)} sources)")
    return EXIT_OK


def _run(config: Config, *, until_idle: bool) -> int:
    from watcher.daemon import Daemon
    from watcher.logs import configure_logging

    configure_logging(config.logging.level, config.logging.format)
    try:
        return asyncio.run(Daemon(config).run(until_idle=until_idle))
    except WatcherError as exc:
        print(f"import-watcher: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


async def _add(config: Config, job_id: str, labels: list[str], notify: list[str] | None) -> int:
    from watcher.clock import SystemClock
    from watcher.models import JobRef
    from watcher.sources.base import Intake
    from watcher.store import open_store

    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label expects K=V, got {item!r}")
        parsed[key] = value
    ref = JobRef(job_id, parsed, tuple(notify) if notify else None)
    store = open_store(config.state.url)
    await store.open()
    try:
        intake = Intake(store, config.polling, SystemClock(), config.notifier_names)
        intake.check_notify(ref.notify)
        added = await intake.add(ref)
    finally:
        await store.close()
    print(f"{job_id}: {'now watching' if added else 'already tracked'}")
    return EXIT_OK


async def _status(config: Config, job_id: str | None, *, as_json: bool) -> int:
    from watcher.status import job_views, status_table
    from watcher.store import open_store

    store = open_store(config.state.url)
    await store.open()
    try:
        if job_id is not None:
            job = await store.get_job(job_id)
            if job is None:
                print(f"import-watcher: job {job_id} is not tracked", file=sys.stderr)
                return EXIT_RUNTIME
            jobs = [job]
        else:
            jobs = await store.list_jobs()
        views = await job_views(store, jobs)
    finally:
        await store.close()
    print(json.dumps(views, indent=2) if as_json else status_table(views))
    return EXIT_OK


async def _notify_test(config: Config, name: str | None) -> int:
    import aiohttp

    from watcher.events import delivery_id
    from watcher.models import Delivery
    from watcher.notify.registry import build_notifiers
    from watcher.notify.render import sample_event

    notifiers = build_notifiers(config)
    if name is not None and name not in notifiers:
        raise ValueError(f"unknown notifier {name!r} (configured: {', '.join(notifiers) or 'none'})")
    chosen = [notifiers[name]] if name else list(notifiers.values())
    failures = 0
    now = time.time()
    async with aiohttp.ClientSession() as session:
        for notifier in chosen:
            await notifier.start(session)
            delivery = Delivery(
                id=delivery_id("notify-test", notifier.name, str(now)), notifier=notifier.name,
                event=sample_event(), created_at=now, next_attempt_at=now, deadline_at=now,
            )
            try:
                await notifier.send(delivery)
                print(f"{notifier.name}: sent")
            except Exception as exc:
                failures += 1
                print(f"{notifier.name}: FAILED: {type(exc).__name__}: {exc}")
            finally:
                await notifier.close()
    return EXIT_RUNTIME if failures else EXIT_OK


def _healthcheck(config: Config) -> int:
    from watcher.daemon import HEARTBEAT_STALE, heartbeat_path

    path = heartbeat_path(config)
    try:
        stamp = float(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        print(f"unhealthy: no heartbeat at {path}", file=sys.stderr)
        return EXIT_RUNTIME
    age = time.time() - stamp
    if age > HEARTBEAT_STALE:
        print(f"unhealthy: last heartbeat {age:.0f}s ago", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"healthy: last heartbeat {age:.1f}s ago")
    return EXIT_OK


def _fake_sendgrid(host: str, port: int) -> int:
    from watcher.testing.fake_sendgrid import serve

    def ready(url: str) -> None:
        print(f"fake SendGrid listening on {url} (API key: SG.fake-key)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, on_ready=ready))
    return EXIT_OK


