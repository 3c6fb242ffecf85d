"""Notifier types from entry points (group `import_watcher.notifiers`).

Built-ins register themselves in pyproject.toml exactly like third-party
packages do, so there is one way in. Two packages claiming one type name is a
start-up error, not a log line: silently picking one would route
notifications somewhere nobody chose.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

from watcher.errors import ConfigError
from watcher.notify.base import Notifier

if TYPE_CHECKING:
    from watcher.config import Config, NotifierSettings

GROUP = "import_watcher.notifiers"
_REQUIRED = ("start", "close", "send", "describe", "check")


@functools.cache
def load_notifier_types() -> dict[str, type[Notifier]]:
    """Every registered notifier type by name; ConfigError lists every problem found.

    Cached for the process; tests call `load_notifier_types.cache_clear()`.
    Callers must not mutate the returned dict.
    """
    problems: list[str] = []
    targets: dict[str, str] = {}
    types: dict[str, type[Notifier]] = {}
    for entry in metadata.entry_points(group=GROUP):
        known = targets.get(entry.name)
        if known is not None:
            if known != entry.value:  # one dist seen twice on sys.path is harmless
                problems.append(f"notifier type '{entry.name}' is registered twice: {known} and {entry.value}")
            continue
        targets[entry.name] = entry.value
        try:
            types[entry.name] = _load(entry)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return types


def _load(entry: metadata.EntryPoint) -> type[Notifier]:
    where = f"notifier type '{entry.name}' ({entry.value})"
    try:
        loaded: Any = entry.load()
    except Exception as exc:  # a broken plugin is a config problem, reported with its name
        raise ConfigError([f"{where} failed to import: {type(exc).__name__}: {exc}"]) from exc
    if not isinstance(loaded, type):
        raise ConfigError([f"{where} is not a class"])
    missing = [name for name in _REQUIRED if not callable(getattr(loaded, name, None))]
    if missing or not isinstance(getattr(loaded, "fields", None), tuple):
        lacks = ", ".join(missing) if missing else "a `fields` tuple"
        raise ConfigError([f"{where} is not a notifier: it lacks {lacks}"])
    declared = getattr(loaded, "type_name", "")
    if declared and declared != entry.name:
        raise ConfigError([f"{where} declares type_name '{declared}'; they must match"])
    return cast("type[Notifier]", loaded)


def build_notifiers(config: Config) -> dict[str, Notifier]:
    """Instantiate the configured notifiers from the registry."""
    types = load_notifier_types()
    built: dict[str, Notifier] = {}
    for spec in config.notifiers:
        settings = dict(spec.settings)
        if spec.type == "email" and settings.get("transport") == "sendgrid":
            _inherit_sendgrid(settings, config)
        built[spec.name] = _instantiate(types[spec.type], replace(spec, settings=settings))
    return built


def _inherit_sendgrid(settings: dict[str, Any], config: Config) -> None:
    """E-mail through SendGrid uses the `sendgrid:` key and host (EU accounts) unless it names its own."""
    if not settings.get("api_key"):
        settings["api_key"] = config.sendgrid.api_key
    if not settings.get("api_base_url"):
        settings["api_base_url"] = config.sendgrid.base_url
        settings["allow_insecure"] = config.sendgrid.allow_insecure


def _instantiate(cls: Any, spec: NotifierSettings) -> Notifier:
    notifier: Notifier = cls(
        spec.name, spec.settings, delivery_deadline=spec.delivery_deadline, templates=spec.templates
    )
    return notifier
