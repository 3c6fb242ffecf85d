"""structlog set-up: JSON off a terminal, readable on one, secrets redacted everywhere."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from yarl import URL

from watcher.net import mask_urls_in_text
from watcher.schema import Secret, redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask every known secret value, and the userinfo and secret query values of every URL,
    wherever they show up in an event (nested values and exception text included)."""
    for key, value in event.items():
        event[key] = _redact_nested(value)
    return event


def _clean(text: str) -> str:
    return mask_urls_in_text(redact(text))


def _redact_nested(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, Secret):
        return "********"
    if isinstance(value, BaseException):
        return _clean(f"{type(value).__name__}: {value}")
    if isinstance(value, URL):
        return _clean(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # a JSON log line never carries NaN or Infinity
    if isinstance(value, dict):
        return {k: _redact_nested(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_nested(v) for v in value]
    return value


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process; `fmt` is auto, json or console."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _route_stdlib_logging(out, shared, renderer, level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def _route_stdlib_logging(out: TextIO, shared: list[Any], renderer: Any, level: str) -> None:
    """Send libraries' stdlib logging (APScheduler, aiohttp, asyncio) through the same renderer."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # APScheduler logs every periodic run at INFO: only its warnings are news.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))


class CachedLogger:
    """A structlog proxy's logger, assembled once per logging configuration instead of per call.

    ``structlog.get_logger(...)`` returns a lazy proxy that, with
    ``cache_logger_on_first_use=False``, assembles a new bound logger (and output logger)
    on every ``bind`` and every logging call, so that a later ``configure`` still applies.
    This keeps that guarantee at the cost of one ``get_config`` per use: the assembled
    logger is reused while the configuration (processors, context class, wrapper class,
    logger factory) is the same objects, and assembled afresh when any of them changes.
    """

    __slots__ = ("_debug", "_key", "_logger", "_proxy")

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy
        self._key: tuple[Any, Any, Any, Any] | None = None
        self._logger: Any = None
        self._debug = True

    def get(self) -> Any:
        config = structlog.get_config()
        key = self._key
        if (
            key is None
            or key[0] is not config["processors"]
            or key[1] is not config["context_class"]
            or key[2] is not config["wrapper_class"]
            or key[3] is not config["logger_factory"]
        ):
            self._logger = self._proxy.bind()
            self._key = (
                config["processors"], config["context_class"], config["wrapper_class"], config["logger_factory"]
            )  # fmt: skip
            enabled = getattr(self._logger, "is_enabled_for", None)
            self._debug = True if enabled is None else bool(enabled(logging.DEBUG))
        return self._logger

    def debug_enabled(self) -> bool:
        """Whether a debug event would get past the level filter (so its fields are worth computing)."""
        self.get()
        return self._debug


class JobLog:
    """What ``log.bind(job_id=...)`` gives, without a bind per job: the same events, fields in the same order.

    Hot paths (one per poll) make one of these instead of binding, which assembled a
    logger (and its context) per poll even when nothing was logged.
    """

    __slots__ = ("_logger", "job_id")

    def __init__(self, logger: CachedLogger, job_id: str) -> None:
        self._logger = logger
        self.job_id = job_id

    def debug(self, event: str, **fields: Any) -> Any:
        return self._logger.get().debug(event, job_id=self.job_id, **fields)

    def info(self, event: str, **fields: Any) -> Any:
        return self._logger.get().info(event, job_id=self.job_id, **fields)

    def warning(self, event: str, **fields: Any) -> Any:
        return self._logger.get().warning(event, job_id=self.job_id, **fields)

    def error(self, event: str, **fields: Any) -> Any:
        return self._logger.get().error(event, job_id=self.job_id, **fields)
