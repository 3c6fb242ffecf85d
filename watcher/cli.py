"""The `import-watcher` command line: run, check, add, status, notify-test, healthcheck, demo, fake-sendgrid.

Every failure a user can cause (a bad config, an invalid id, a corrupt state file, a
state URL that is not Redis) is one clear line on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, NoReturn

from watcher.config import Config, FileSourceSettings, load_config
from watcher.errors import ConfigError, InvalidJobId, StoreBroken, StoreUnavailable, WatcherError
from watcher.models import validate_job_id

if TYPE_CHECKING:
    from watcher.store.base import StateStore

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def package_version() -> str:
    """The installed distribution's version (`0+unknown` when run from an uninstalled tree)."""
    try:
        return version("import-watcher")
    except PackageNotFoundError:
        return "0+unknown"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Every command and argument, each with its --help text."""
    parser = _Parser(prog="import-watcher", description="Watch SendGrid contact import jobs and notify people.")
    parser.add_argument("--version", action="version", version=f"import-watcher {package_version()}",
                        help="print `import-watcher <version>` and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", default=os.environ.get("WATCHER_CONFIG"), metavar="FILE",
                         help="the YAML config file (default: $WATCHER_CONFIG)")
        return sub

    run = with_config("run", "run the daemon until SIGTERM or SIGINT")
    run.add_argument("--until-idle", action="store_true",
                     help="exit 0 once every job is final and every notification delivered or dead")
    with_config("check", "validate the configuration and its job files; exit 2 listing every problem")
    add = with_config("add", "start watching a job (idempotent), straight in the state store")
    add.add_argument("job_id", metavar="JOB_ID", help="the SendGrid import job id (1 to 64 of A-Z a-z 0-9 - _)")
    add.add_argument("--label", action="append", default=[], metavar="K=V",
                     help="a label shown in notifications and usable in routes (repeatable)")
    add.add_argument("--notify", action="append", default=None, metavar="NAME",
                     help="notify only this configured notifier, instead of the routes (repeatable)")
    add.add_argument("--again", action="store_true",
                     help="start a new watch even if the job was stopped or has finished")
    status = with_config("status", "show tracked jobs: state, polls, next poll, deliveries")
    status.add_argument("job_id", nargs="?", metavar="JOB_ID", help="show only this job (exit 1 if not tracked)")
    status.add_argument("--json", action="store_true", help="print a JSON array, one object per job")
    test = with_config("notify-test", "send a sample notification through one or all notifiers")
    test.add_argument("name", nargs="?", metavar="NAME", help="only this notifier (default: every one)")
    with_config("healthcheck", "exit 0 if the daemon is fully started and its heartbeat is fresh")
    commands.add_parser("demo", help="watch sample jobs on the bundled fake SendGrid; no setup, no network",
                        description="watch sample jobs on the bundled fake SendGrid; no setup, no network")
    fake = commands.add_parser("fake-sendgrid", help="serve the bundled fake SendGrid API",
                               description="serve the bundled fake SendGrid API, for your own tests")
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    fake.add_argument("--port", type=int, default=3030, help="port to listen on (default: 3030)")
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
        _say(str(exc))
        return EXIT_USAGE
    except StoreBroken as exc:
        _say(f"the state store cannot be used: {exc}")
        return EXIT_RUNTIME
    except StoreUnavailable as exc:
        _say(f"state store unavailable: {exc}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK


def _say(message: str) -> None:
    from watcher.net import mask_urls_in_text
    from watcher.schema import redact

    print(f"import-watcher: {redact(mask_urls_in_text(message))}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from watcher.demo import run_demo

        return asyncio.run(run_demo())
    if args.command == "fake-sendgrid":
        return _fake_sendgrid(args.host, args.port)
    # An invalid id is a usage error before the config is even read, in every command.
    if getattr(args, "job_id", None) is not None:
        validate_job_id(args.job_id)
    config = _load(args.config)
    _configure_logging(config)
    if args.command == "check":
        return _check(config)
    if args.command == "run":
        return _run(config, until_idle=args.until_idle)
    if args.command == "add":
        return asyncio.run(_add(config, args.job_id, args.label, args.notify, again=args.again))
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


class _Stderr:
    """Whatever sys.stderr is at each write: logging set up by one `main()` call must not keep
    writing to a stream that was swapped out and closed since (embedding, tests)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def _configure_logging(config: Config) -> None:
    """Every command logs as `run` does, at the configured level (debug lines stay hidden at info)."""
    from watcher.logs import configure_logging

    configure_logging(config.logging.level, config.logging.format, stream=_Stderr())  # type: ignore[arg-type]


def _check(config: Config) -> int:
    from watcher.sources.file import check_job_file

    problems: list[str] = []
    for source in config.sources:
        if isinstance(source, FileSourceSettings):
            problems += check_job_file(source.path, config.notifier_names)
    if problems:
        raise ConfigError(problems)
    if not config.notifiers:
        print(f"{config.path}: warning: no notifiers configured: outcomes are recorded but nobody is told",
              file=sys.stderr)
    print(f"{config.path}: OK ({len(config.notifiers)} notifiers, {len(config.sources)} sources)")
    return EXIT_OK


def _run(config: Config, *, until_idle: bool) -> int:
    from watcher.daemon import Daemon

    try:
        return asyncio.run(Daemon(config).run(until_idle=until_idle))
    except (StoreBroken, StoreUnavailable, ConfigError):
        raise  # main() prints these
    except WatcherError as exc:
        _say(str(exc))
        return EXIT_RUNTIME


def keeps_nothing(state_url: str) -> bool:
    """A state URL whose store ends with the process: `add` would keep nothing."""
    scheme, _, rest = state_url.partition("://")
    return scheme.lower() == "memory" or (scheme.lower() == "sqlite" and rest in ("", "/:memory:"))


@contextlib.asynccontextmanager
async def _opened(config: Config) -> AsyncIterator[StateStore]:
    """The configured store, opened and closed again; its errors reach main() as they are."""
    from watcher.store import open_store

    store = open_store(config.state.url)
    await store.open()
    try:
        yield store
    finally:
        with contextlib.suppress(StoreUnavailable, StoreBroken):
            await store.close()


def _labels(items: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label expects K=V, got {item!r}")
        parsed[key] = value
    return parsed


async def _add(config: Config, job_id: str, labels: list[str], notify: list[str] | None, *, again: bool) -> int:
    from watcher.clock import SystemClock
    from watcher.models import JobRef
    from watcher.sources.base import Intake, check_label_text

    if keeps_nothing(config.state.url):
        raise ValueError(f"state.url is {config.state.url}: nothing `add` stores would be kept; "
                         "point state.url at the daemon's SQLite file or Redis")
    parsed = _labels(labels)
    check_label_text(parsed)
    ref = JobRef(job_id, parsed, tuple(notify) if notify else None)
    async with _opened(config) as store:
        intake = Intake(store, config.polling, SystemClock(), config.notifier_names)
        intake.check_notify(ref.notify)
        if not again and (tomb := (await store.tombstones([job_id])).get(job_id)) is not None:
            print(f"{job_id}: {_buried(tomb.reason.value, tomb.at)}; nothing new (add --again starts a new watch)")
            return EXIT_OK
        if await intake.add(ref, again=again):
            print(f"{job_id}: now watching")
            return EXIT_OK
        job = await store.get_job(job_id)
    if job is not None and job.outcome is not None and not again:
        print(f"{job_id}: already finished ({job.outcome.value}); nothing new (add --again starts a new watch)")
    else:
        print(f"{job_id}: already tracked")
    return EXIT_OK


def _buried(reason: str, at: float) -> str:
    from watcher.events import iso

    return f"was stopped at {iso(at)}" if reason == "stopped" else f"already finished (purged at {iso(at)})"


async def _status(config: Config, job_id: str | None, *, as_json: bool) -> int:
    from watcher.status import job_views, status_table

    async with _opened(config) as store:
        if job_id is not None:
            job = await store.get_job(job_id)
            if job is None:
                _say(await _untracked(store, job_id))
                return EXIT_RUNTIME
            jobs = [job]
        else:
            jobs = await store.list_jobs()
        views = await job_views(store, jobs)
    print(json.dumps(views, indent=2) if as_json else status_table(views))
    return EXIT_OK


async def _untracked(store: StateStore, job_id: str) -> str:
    tomb = (await store.tombstones([job_id])).get(job_id)
    if tomb is None:
        return f"job {job_id} is not tracked"
    return f"job {job_id} is not tracked: it {_buried(tomb.reason.value, tomb.at)}"


async def _notify_test(config: Config, name: str | None) -> int:
    import aiohttp

    from watcher.events import delivery_id
    from watcher.models import Delivery
    from watcher.net import mask_urls_in_text
    from watcher.notify.registry import build_notifiers
    from watcher.notify.render import sample_event
    from watcher.schema import redact

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
            except Exception as exc:  # every failure is reported per notifier, the others still tried
                failures += 1
                why = redact(mask_urls_in_text(f"{type(exc).__name__}: {exc}"))
                print(f"{notifier.name}: FAILED: {why}")
            finally:
                await notifier.close()
    return EXIT_RUNTIME if failures else EXIT_OK


def _healthcheck(config: Config) -> int:
    from watcher.heartbeat import check_health

    healthy, message = check_health(config)
    if healthy:
        print(f"healthy: {message}")
        return EXIT_OK
    print(f"unhealthy: {message}", file=sys.stderr)
    return EXIT_RUNTIME


def _fake_sendgrid(host: str, port: int) -> int:
    from watcher.testing.fake_sendgrid import serve

    def ready(url: str) -> None:
        print(f"fake SendGrid listening on {url} (API key: SG.fake-key)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, on_ready=ready))
    return EXIT_OK
