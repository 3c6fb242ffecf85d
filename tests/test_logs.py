"""Logging: JSON off a terminal, library logs in the same format, secrets masked everywhere."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from watcher.logs import configure_logging
from watcher.schema import Secret


def test_library_logs_share_the_json_format_and_redaction() -> None:
    """A stdlib warning (e.g. from APScheduler) comes out as redacted JSON beside structlog events."""
    Secret("SG.logs-test-secret")
    out = io.StringIO()
    root_handlers, root_level = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        configure_logging("info", "json", out)
        logging.getLogger("apscheduler.scheduler").warning("skipped run of %s", "SG.logs-test-secret")
        logging.getLogger("apscheduler.scheduler").info("Running job every 2 seconds")
        structlog.get_logger("watcher.test").info("job.finished", job_id="j-1", key=Secret("SG.logs-test-secret"))
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = root_handlers
        logging.getLogger().setLevel(root_level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert ["skipped run of ********", "job.finished"] == [line["event"] for line in lines]
    assert "apscheduler.scheduler" == lines[0]["logger"]
    assert {"job_id": "j-1", "key": "********", "level": "info"} == {k: lines[1][k] for k in ("job_id", "key", "level")}
    assert "SG.logs-test-secret" not in out.getvalue()


def test_urls_are_masked_in_every_field_nested_values_and_tracebacks() -> None:
    """Userinfo and secret query values are masked in strings, nested values, exceptions and tracebacks."""
    out = io.StringIO()
    root_handlers, root_level = logging.getLogger().handlers[:], logging.getLogger().level
    url = "https://ops:CANARY1@hooks.example.com/x?token=CANARY2&page=2"
    try:
        configure_logging("debug", "json", out)
        log = structlog.get_logger("watcher.test")
        log.info("notify.sent", url=url, nested={"urls": [url, ("a", url)]}, error=ValueError(f"bad {url}"))
        try:
            raise RuntimeError(f"cannot reach {url}")
        except RuntimeError:
            log.exception("loop.crashed")
        logging.getLogger("aiohttp.client").warning("retrying %s", url)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = root_handlers
        logging.getLogger().setLevel(root_level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    masked = "https://***@hooks.example.com/x?token=***&page=2"
    assert masked == lines[0]["url"]
    assert {"urls": [masked, ["a", masked]]} == lines[0]["nested"]
    assert f"ValueError: bad {masked}" == lines[0]["error"]
    assert f"RuntimeError: cannot reach {masked}" in lines[1]["exception"]
    assert f"retrying {masked}" == lines[2]["event"]
    assert "CANARY" not in out.getvalue()


def test_non_finite_numbers_keep_the_json_line_valid() -> None:
    """NaN and Infinity in a log field come out as strings, so every line stays strict JSON."""
    out = io.StringIO()
    root_handlers, root_level = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        configure_logging("info", "json", out)
        structlog.get_logger("watcher.test").info("odd.numbers", big=float("inf"), nested={"x": [float("nan")]})
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = root_handlers
        logging.getLogger().setLevel(root_level)

    line = json.loads(out.getvalue(), parse_constant=lambda name: pytest.fail(f"{name} in a log line"))

    assert ("inf", {"x": ["nan"]}) == (line["big"], line["nested"])
