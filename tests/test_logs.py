"""Logging: JSON off a terminal, library logs in the same format, secrets masked everywhere."""

from __future__ import annotations

import io
import json
import logging

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
