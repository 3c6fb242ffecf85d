"""The `import-watcher` command line: run, check, add, status, digest, notify-test, healthcheck, demo, fake-sendgrid.

Every failure a user can cause (a bad config, an invalid id, a corrupt state file, a
state URL that is not Redis) is one clear line on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn, Protocol

from watcher import cli_backups, cli_jobs
from watcher.cli_commands import (
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    SAMPLES,
    parse_since,
    say,
    store_command,
)
from watcher.cli_commands import notify_test as _notify_test  # noqa: F401 - tests call it as watcher.cli._notify_test
from watcher.config import Config, FileSourceSettings, load_config
from watcher.errors import ConfigError, InvalidJobId, StoreBroken, StoreUnavailable, WatcherError
from watcher.models import validate_batch_name, validate_job_id


class _CommandModule(Protocol):
    COMMANDS: frozenset[str]

    def add_parsers(self, with_config: Callable[[str, str], argparse.ArgumentParser]) -> None: ...

    def run(self, command: str, config: Config, args: argparse.Namespace) -> int: ...


#: Modules adding commands of their own: import/export (cli_jobs), backup/backups/restore (cli_backups).
_COMMAND_MODULES: tuple[_CommandModule, ...] = (cli_jobs, cli_backups)


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
    add.add_argument("--batch", metavar="NAME",
                     help="put the job in this batch: one summary for all its jobs (1 to 128 of A-Z a-z 0-9 - _ . :)")
    add.add_argument("--kind", choices=("import", "export"), default="import",
                     help="import (default: also upserts and deletes) or export: which SendGrid job it is")
    add.add_argument("--account", metavar="NAME",
                     help="the configured SendGrid account (sendgrid.accounts) it belongs to (default: the first)")
    status = with_config("status", "show tracked jobs: state, polls, next poll, deliveries")
    status.add_argument("job_id", nargs="?", metavar="JOB_ID", help="show only this job (exit 1 if not tracked)")
    status.add_argument("--batch", metavar="NAME",
                        help="show this batch (one line) and its jobs (exit 1 if not known); with --json: "
                             '{"batch": {name, state, jobs, outcomes, totals, ...}, "jobs": [...]}')
    status.add_argument("--json", action="store_true", help="print a JSON array, one object per job")
    digest = with_config("digest", "print a digest of the period up to now, or send it with --send")
    digest.add_argument("--since", default="24h", metavar="DURATION",
                        help="the period: from now minus this until now, e.g. 24h, 7d (default: 24h)")
    digest.add_argument("name", nargs="?", metavar="NAME",
                        help="a configured digest: its name, and its notifiers with --send (default: the "
                             "notifiers of every configured digest, or every notifier when none is configured; "
                             "named after the one digest, or else the period, e.g. last-24h)")
    digest.add_argument("--send", action="store_true",
                        help="queue it in the state store's outbox for those notifiers (the running daemon "
                             "delivers it, with retries) instead of printing it")
    digest.add_argument("--json", action="store_true", help="print the watcher.digest event as JSON")
    test = with_config("notify-test", "send a sample notification through one or all notifiers")
    test.add_argument("name", nargs="?", metavar="NAME", help="only this notifier (default: every one)")
    test.add_argument("--event", choices=tuple(SAMPLES), default="outcome",
                      help="which sample: a job's outcome (default), a batch summary, stuck warnings (one job, "
                           "and several of one batch), a digest, export outcomes, backup results, or all of them")
    with_config("healthcheck", "exit 0 if the daemon is fully started and its heartbeat is fresh")
    for module in _COMMAND_MODULES:
        module.add_parsers(with_config)
    demo_text = ("every outcome, then an import, an export, a backup and its restore, on the bundled fake "
                 "SendGrid; no setup, no network")
    commands.add_parser("demo", help=demo_text, description=demo_text)
    fake = commands.add_parser("fake-sendgrid", help="serve the bundled fake SendGrid API",
                               description="serve the bundled fake SendGrid API, for your own tests")
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    fake.add_argument("--port", type=int, default=3030, help="port to listen on, 0 for any free one (default: 3030)")
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
        say(str(exc))
        return EXIT_USAGE
    except StoreBroken as exc:
        say(f"the state store cannot be used: {exc}")
        return EXIT_RUNTIME
    except StoreUnavailable as exc:
        say(f"state store unavailable: {exc}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from watcher.demo import run_demo

        return asyncio.run(run_demo())
    if args.command == "fake-sendgrid":
        return _fake_sendgrid(args.host, args.port)
    since = _check_arguments(args)
    config = _load(args.config)
    _configure_logging(config)
    if args.command == "check":
        return _check(config)
    if args.command == "run":
        return _run(config, until_idle=args.until_idle)
    if args.command == "healthcheck":
        return _healthcheck(config)
    for module in _COMMAND_MODULES:
        if args.command in module.COMMANDS:
            return module.run(args.command, config, args)
    return asyncio.run(store_command(config, args, since))


def _check_arguments(args: argparse.Namespace) -> float:
    """Usage errors before the config is even read, in every command; `digest --since` in seconds."""
    if getattr(args, "job_id", None) is not None:
        validate_job_id(args.job_id)
    if getattr(args, "batch", None) is not None:
        try:
            validate_batch_name(args.batch)
        except ValueError as exc:
            raise ValueError(f"--batch: {exc}") from None
    if args.command == "status" and args.job_id is not None and args.batch is not None:
        raise ValueError("status takes a JOB_ID or --batch NAME, not both")
    return parse_since(args.since) if args.command == "digest" else 0.0


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
        say(str(exc))
        return EXIT_RUNTIME


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

    if not 0 <= port <= 65535:
        say(f"--port {port}: expected a port number from 0 (any free one) to 65535")
        return EXIT_USAGE

    def ready(url: str) -> None:
        print(f"fake SendGrid listening on {url} (API key: SG.fake-key)", flush=True)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(host, port, on_ready=ready))
    except OSError as exc:  # the port in use, an address not of this machine, a host that does not resolve
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)  # gaierror: < 0
        say(f"cannot listen on {host} port {port}: {reason}")
        return EXIT_RUNTIME
    return EXIT_OK
