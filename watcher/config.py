"""YAML configuration -> validated, frozen settings; every problem reported at once with FILE:LINE."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from watcher import net
from watcher import schema as s
from watcher.backups_config import BackupSettings, parse_backups
from watcher.config_accounts import DEFAULT_ACCOUNT, parse_sendgrid
from watcher.errors import ConfigError
from watcher.notify.base import DEFAULT_DELIVERY_DEADLINE
from watcher.outcomes import BatchChoice, parse_batch_choice
from watcher.policy import PollPolicy, Target, parse_target_delay
from watcher.routing import Route
from watcher.schedules import DigestSettings, parse_digests
from watcher.schema import Field, Secret, Validator
from watcher.sendgrid import SendGridSettings
from watcher.yamlloc import CONFIG_MAX_BYTES, FileRefused, Path_, Problems, load_located, read_capped

DEFAULT_STATE_URL = "sqlite:///import-watcher.db"
#: A shorter API token off loopback can be guessed; 32 characters is `openssl rand -hex 16`.
MIN_TOKEN_LENGTH = 32


@dataclass(frozen=True, slots=True)
class StateSettings:
    url: str = DEFAULT_STATE_URL
    retention: float = 7 * 86400.0  # finished jobs are kept this long for `status`
    lease: float = 60.0  # a claimed poll or delivery is another replica's to take after this
    tombstone_retention: float = 90 * 86400.0  # stopped and purged job ids are not re-added for this long


@dataclass(frozen=True, slots=True)
class FileSourceSettings:
    path: Path
    type: str = "file"


@dataclass(frozen=True, slots=True)
class RedisSourceSettings:
    url: str
    stream: str = "import-watcher:jobs"
    group: str = "import-watcher"
    consumer: str | None = None
    block: float = 5.0
    claim_idle: float = 60.0
    type: str = "redis"


SourceSettings = FileSourceSettings | RedisSourceSettings


@dataclass(frozen=True, slots=True)
class NotifierSettings:
    name: str
    type: str
    settings: Mapping[str, Any]
    delivery_deadline: float = DEFAULT_DELIVERY_DEADLINE
    templates: Mapping[str, str] = field(default_factory=dict)
    batches: BatchChoice = field(default_factory=BatchChoice)  # what it gets for jobs in a batch


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    token: Secret | None = None
    max_body: int = 64 * 1024
    public_url: str | None = None  # where people reach the status page: links in batch summaries


@dataclass(frozen=True, slots=True)
class BatchSettings:
    settle: float = 60.0  # a batch is finished when all its jobs are final and none joined for this long


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    format: str = "auto"  # auto: readable on a terminal, JSON otherwise


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon needs, validated."""

    sendgrid: SendGridSettings
    polling: PollPolicy = field(default_factory=PollPolicy)
    state: StateSettings = field(default_factory=StateSettings)
    sources: tuple[SourceSettings, ...] = ()
    notifiers: tuple[NotifierSettings, ...] = ()
    routes: tuple[Route, ...] = ()
    server: ServerSettings | None = None
    shutdown_grace: float = 20.0
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    heartbeat_file: Path | None = None
    batches: BatchSettings = field(default_factory=BatchSettings)
    digests: tuple[DigestSettings, ...] = ()
    path: Path | None = None
    #: Every account by name, in file order; `sendgrid` is always the first (the default).
    accounts: Mapping[str, SendGridSettings] = field(default_factory=dict)
    backups: tuple[BackupSettings, ...] = ()

    def __post_init__(self) -> None:
        accounts = dict(self.accounts) or {DEFAULT_ACCOUNT: self.sendgrid}
        if next(iter(accounts.values())) is not self.sendgrid:
            raise ValueError("Config.sendgrid must be the first (default) account")
        object.__setattr__(self, "accounts", MappingProxyType(accounts))

    @property
    def notifier_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.notifiers)

    @property
    def default_account(self) -> str:
        """The account of a job that names none: the only or first one configured."""
        return next(iter(self.accounts))


POLLING_FIELDS = (
    Field("initial_delay", s.duration(), default=2.0),
    Field("min_interval", s.duration(0.001), default=5.0),
    Field("max_interval", s.duration(0.001), default=300.0),
    Field("deadline", s.duration(0.001), default=86400.0),
    Field("not_found_grace", s.duration(), default=120.0),
    Field("growth", s.number(0.01), default=0.2),
    Field("warn_after", s.duration(0.001)),  # None: no stuck warnings
    Field("target_delay", parse_target_delay, default=Target()),  # a share in (0, 1] or a duration like 30s
    Field("learn", s.boolean, default=True),  # schedule from the run times of finished jobs
)
BATCH_FIELDS = (Field("settle", s.duration(), default=60.0),)
STATE_FIELDS = (
    Field("url", s.string, default=DEFAULT_STATE_URL),
    Field("retention", s.duration(), default=7 * 86400.0),
    Field("lease", s.duration(1.0), default=60.0),
    Field("tombstone_retention", s.duration(), default=90 * 86400.0),
)
FILE_SOURCE_FIELDS = (Field("type", s.string), Field("path", s.path_text, required=True))
REDIS_SOURCE_FIELDS = (
    Field("type", s.string),
    Field("url", s.url("redis", "rediss", "unix"), required=True),
    Field("stream", s.name_text, default="import-watcher:jobs"),
    Field("group", s.name_text, default="import-watcher"),
    Field("consumer", s.name_text),
    Field("block", s.duration(0.001), default=5.0),
    Field("claim_idle", s.duration(0.001), default=60.0),
)
SERVER_FIELDS = (
    Field("listen", s.string, required=True),
    Field("token", s.secret, secret=True),
    Field("max_body", s.integer(1024), default=64 * 1024),
    Field("public_url", s.url("https", "http")),
)
LOGGING_FIELDS = (
    Field("level", s.choice("debug", "info", "warning", "error"), default="info"),
    Field("format", s.choice("auto", "json", "console"), default="auto"),
)
COMMON_NOTIFIER_KEYS = {"type", "delivery_deadline", "templates", "batches"}
TOP_LEVEL = {
    "sendgrid", "polling", "state", "sources", "notifiers", "routes", "server",
    "shutdown_grace", "logging", "heartbeat_file", "batches", "digests", "backups",
}


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    file = Path(path)
    problems = Problems(str(path))
    try:
        text = read_capped(file, CONFIG_MAX_BYTES)
    except FileRefused as exc:
        raise ConfigError([f"{path}:1: cannot read the config file: {exc}"]) from None
    data = load_located(text, problems, env=env)
    config = build_config(data, problems, base_dir=file.parent.resolve()) if not problems else None
    if problems or config is None:
        raise ConfigError(problems.sorted() or [f"{path}:1: empty configuration"])
    return _replace_path(config, file.resolve())


def build_config(data: Any, problems: Problems, *, base_dir: Path) -> Config | None:
    """Validate parsed YAML; problems are collected, None is returned when there are any."""
    from watcher.notify.registry import load_notifier_types

    if not isinstance(data, dict):
        problems.add((), "the configuration must be a mapping with at least a `sendgrid:` section")
        return None
    for key in data:
        if key not in TOP_LEVEL:
            problems.add((key,), f"unknown key (expected one of {', '.join(sorted(TOP_LEVEL))})")
    ctx = Validator(problems, base_dir)
    sendgrid, accounts = parse_sendgrid(ctx, data.get("sendgrid"))
    polling = ctx.section(data, ("polling",), POLLING_FIELDS)
    state = ctx.section(data, ("state",), STATE_FIELDS)
    logging = ctx.section(data, ("logging",), LOGGING_FIELDS)
    batches = ctx.section(data, ("batches",), BATCH_FIELDS)
    grace = ctx.value(data, ("shutdown_grace",), s.duration(), 20.0)
    heartbeat = ctx.value(data, ("heartbeat_file",), s.optional_string, None)
    try:  # every notifier plugin (and Jinja2) is imported only for a config that has notifiers
        types = load_notifier_types() if data.get("notifiers") else {}
    except ConfigError as exc:
        for message in exc.problems:
            problems.add(("notifiers",), message)
        types = {}
    notifiers = _notifiers(ctx, data.get("notifiers"), types)
    names = {n.name for n in notifiers}
    routes = _routes(ctx, data.get("routes"), names)
    digests = parse_digests(data.get("digests"), problems, names)
    backups = parse_backups(data.get("backups"), problems, names, tuple(accounts))
    sources = _sources(ctx, data.get("sources"))
    server = _server(ctx, data.get("server"))
    _check_polling(ctx, polling)
    _check_state_url(ctx, state)
    _check_lease(ctx, state, sendgrid, notifiers)
    if problems or not accounts:
        return None
    return Config(
        sendgrid=next(iter(accounts.values())),
        accounts=accounts,
        backups=tuple(backups),
        polling=PollPolicy(**(polling or {})),
        state=StateSettings(**(state or {})),
        sources=tuple(sources),
        notifiers=tuple(notifiers),
        routes=tuple(routes),
        server=server,
        shutdown_grace=grace,
        logging=LoggingSettings(**(logging or {})),
        heartbeat_file=ctx.resolve(heartbeat) if heartbeat else None,
        batches=BatchSettings(**(batches or {})),
        digests=tuple(digests),
    )


def _notifiers(ctx: Validator, raw: Any, types: Mapping[str, Any]) -> list[NotifierSettings]:
    from watcher.notify.render import validate_templates

    if raw is None:
        return []
    if not isinstance(raw, dict):
        ctx.problems.add(("notifiers",), "expected a mapping of notifier name -> settings")
        return []
    out: list[NotifierSettings] = []
    for name, settings in raw.items():
        path: Path_ = ("notifiers", name)
        if not isinstance(settings, dict):
            ctx.problems.add(path, "expected a mapping with at least `type`")
            continue
        kind = settings.get("type")
        cls = types.get(kind) if isinstance(kind, str) else None
        if cls is None:
            ctx.problems.add((*path, "type"), f"unknown notifier type {kind!r} (known: {', '.join(sorted(types))})")
            continue
        parsed = ctx.fields(settings, path, tuple(cls.fields), extra_ok=frozenset(COMMON_NOTIFIER_KEYS))
        deadline = ctx.value(settings, (*path, "delivery_deadline"), s.duration(1.0), DEFAULT_DELIVERY_DEADLINE)
        templates = ctx.value(settings, (*path, "templates"), s.string_map, {})
        for key, message in validate_templates(templates):
            ctx.problems.add((*path, "templates", key), message)
        choice = parse_batch_choice(settings.get("batches"), (*path, "batches"), ctx.problems, str(kind))
        if parsed is None:
            continue
        for key, message in cls.check(parsed):
            ctx.problems.add((*path, key), message)
        out.append(NotifierSettings(str(name), str(kind), parsed, deadline, templates, choice))
    return out


def _routes(ctx: Validator, raw: Any, names: set[str]) -> list[Route]:
    from watcher.routing import parse_route

    if raw is None:
        return []
    if not isinstance(raw, list):
        ctx.problems.add(("routes",), "expected a list of routes")
        return []
    routes = []
    for i, item in enumerate(raw):
        route = parse_route(item, ("routes", i), ctx.problems, names)
        if route is not None:
            routes.append(route)
    return routes


def _sources(ctx: Validator, raw: Any) -> list[SourceSettings]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        ctx.problems.add(("sources",), "expected a list of sources")
        return []
    out: list[SourceSettings] = []
    for i, item in enumerate(raw):
        path: Path_ = ("sources", i)
        kind = item.get("type") if isinstance(item, dict) else None
        before = len(ctx.problems.messages)
        if kind == "file":
            parsed = ctx.fields(item, path, FILE_SOURCE_FIELDS)
            if parsed and len(ctx.problems.messages) == before:
                out.append(FileSourceSettings(path=ctx.resolve(parsed["path"])))
        elif kind == "redis":
            parsed = ctx.fields(item, path, REDIS_SOURCE_FIELDS)
            if parsed and len(ctx.problems.messages) == before:
                parsed.pop("type")
                out.append(RedisSourceSettings(**parsed))
        elif not isinstance(item, dict):
            ctx.problems.add(path, "expected a mapping with `type: file` or `type: redis`")
        else:
            ctx.problems.add((*path, "type"), f"unknown source type {_shown(kind)} (expected file or redis)")
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _server(ctx: Validator, raw: Any) -> ServerSettings | None:
    if raw is None:
        return None
    parsed = ctx.fields(raw, ("server",), SERVER_FIELDS)
    if not parsed or not parsed["listen"]:
        return None
    host, _, port_text = str(parsed["listen"]).rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ":8080" means every interface, as in most servers
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        ctx.problems.add(("server", "listen"), "expected HOST:PORT, e.g. 127.0.0.1:8080")
        return None
    token: Secret | None = parsed["token"]
    if not net.is_loopback_host(host):
        if token is None:
            ctx.problems.add(("server", "token"), "required when server.listen is not a loopback address")
        elif len(token.reveal()) < MIN_TOKEN_LENGTH:
            ctx.problems.add(
                ("server", "token"),
                f"must be at least {MIN_TOKEN_LENGTH} characters when server.listen is not a loopback address "
                "(e.g. the output of `openssl rand -hex 32`)",
            )
    return ServerSettings(host, int(port_text), parsed["token"], parsed["max_body"], parsed["public_url"])


def _check_polling(ctx: Validator, polling: Mapping[str, Any] | None) -> None:
    if not polling:
        return
    if polling["growth"] > 10:
        ctx.problems.add(("polling", "growth"), "must be at most 10 (the wait is growth × the job's age)")
    if polling["min_interval"] > polling["max_interval"]:
        ctx.problems.add(("polling", "min_interval"), "must not be larger than polling.max_interval")
    if polling["warn_after"] is not None and polling["warn_after"] >= polling["deadline"]:
        ctx.problems.add(("polling", "warn_after"), "must be shorter than polling.deadline (the job times out first)")


def _check_state_url(ctx: Validator, state: Mapping[str, Any] | None) -> None:
    url = str((state or {}).get("url") or "")
    if not url.startswith(("sqlite:///", "redis://", "rediss://", "memory://")):
        ctx.problems.add(
            ("state", "url"),
            "expected sqlite:///relative.db, sqlite:////absolute.db, redis://host:port/db or memory://",
        )
    elif url.startswith("redis"):
        try:
            s.url("redis", "rediss")(url)
        except ValueError as exc:
            ctx.problems.add(("state", "url"), str(exc))


def _check_lease(
    ctx: Validator,
    state: Mapping[str, Any] | None,
    sendgrid: Mapping[str, Any] | None,
    notifiers: list[NotifierSettings],
) -> None:
    """The lease must outlast one SendGrid request, named when it does not.

    Slow sends, errors-file downloads and budget waits do not count: work in flight renews
    its lease every third of it (watcher.claimloop), so only a request whose answer must be
    recorded before the first renewal could come back to a lapsed lease.
    """
    if not state or not sendgrid:
        return
    timeout = float(sendgrid["request_timeout"])
    if state["lease"] <= timeout:
        ctx.problems.add(("state", "lease"), f"must be longer than sendgrid.request_timeout ({timeout:g}s)")


def _replace_path(config: Config, path: Path) -> Config:
    from dataclasses import replace

    return replace(config, path=path)
