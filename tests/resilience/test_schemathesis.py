"""Schemathesis against the daemon's own /openapi.json: no 500s, and every answer matches the document."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers import make_config, write_jobs
from tests.serving import FAST, TOKEN, server_config_text
from watcher.daemon import Daemon
from watcher.server import openapi_document
from watcher.status import encode_cursor
from watcher.testing.fake_sendgrid import FakeSendGrid

from .conftest import TROUBLE_EVENTS, counted_log_events

pytestmark = pytest.mark.resilience

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The daemon's notifiers: its /openapi.json lists them as the names `notify` accepts.
NOTIFIERS = ("console",)
BATCH = "known:batch.1"


class DaemonThread(threading.Thread):
    """A Daemon with its HTTP API on a free port, run in its own event loop: schemathesis calls are blocking."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(name="watcher-daemon", daemon=True)
        self.tmp_path = tmp_path
        self.url = ""
        self.failure: BaseException | None = None
        self._serving = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemon: Daemon | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to the test thread
            self.failure = exc
        finally:
            self._serving.set()

    async def _serve(self) -> None:
        async with FakeSendGrid() as fake:
            # Jobs in several states, with deliveries, so GET /jobs answers carry every field.
            fake.script_job("known-1", outcome="errored", errored=2)
            fake.script_job("known-2", outcome="pending")
            jobs = write_jobs(self.tmp_path / "jobs.yaml", ["known-1", "known-2", "ghost-1"])
            # All three in one batch, so the batch routes answer with data too (the file's `batch:`).
            jobs.write_text(f"batch: {BATCH}\n{jobs.read_text()}", encoding="utf-8")
            notifiers = "".join(f"  {name}:\n    type: console\n" for name in NOTIFIERS)
            text = server_config_text(fake.base_url, self.tmp_path, jobs_file=jobs, extra=f"notifiers:\n{notifiers}")
            daemon = Daemon(make_config(self.tmp_path, text), delivery_backoff=FAST)
            daemon.on_started.append(self._on_started)
            self._daemon = daemon
            await daemon.run(install_signals=False)

    def _on_started(self, daemon: Daemon) -> None:
        assert daemon.server is not None
        self.url = daemon.server.url
        self._loop = asyncio.get_running_loop()
        self._serving.set()

    def wait_started(self, timeout: float) -> str:
        """The API's base URL once the daemon serves it."""
        if not self._serving.wait(timeout) or not self.url:
            raise RuntimeError(f"the daemon did not start: {self.failure!r}")
        return self.url

    def stop(self, timeout: float) -> None:
        if self._loop is not None and self._daemon is not None:
            self._loop.call_soon_threadsafe(self._daemon.stop)
        self.join(timeout)


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of one daemon's HTTP API, shared by every operation's test; its log is counted, not printed."""
    thread = DaemonThread(tmp_path_factory.mktemp("schemathesis"))
    with counted_log_events() as events:
        thread.start()
        try:
            yield thread.wait_started(15)
        finally:
            thread.stop(15)
    assert not thread.is_alive(), "the daemon did not stop"
    assert thread.failure is None
    failed = (*TROUBLE_EVENTS, "http.handler_failed")
    assert {name: 0 for name in failed} == {name: events[name] for name in failed}


# The document the daemon serves, built as the server builds it: parametrize() needs it at
# collection, before any daemon runs. test_the_daemon_serves_this_document ties the two together.
DOCUMENT = openapi_document(NOTIFIERS, accounts=("default",))


def _checks_config() -> SchemathesisConfig:
    """Schemathesis' defaults, plus 413 as an answer to a body over `server.max_body` (2048 bytes here):
    a documented refusal that no JSON Schema can express, so it rejects invalid data and may meet valid data."""
    checks = SchemathesisConfig().projects.default.checks
    return SchemathesisConfig.from_dict({"checks": {
        name: {"expected-statuses": [*getattr(checks, name).expected_statuses, "413"]}
        for name in ("negative_data_rejection", "positive_data_acceptance")
    }})


# `after` is opaque: valid values are only those the server hands out, so generated "valid"
# cursors are made the server's way (any place in the order is a valid place to start after).
schemathesis.openapi.format("import-watcher-cursor", st.builds(
    encode_cursor,
    st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False),
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
))
schema = schemathesis.openapi.from_dict(DOCUMENT, config=_checks_config())


def test_the_daemon_serves_this_document(api_url: str) -> None:
    """GET /openapi.json is the packaged document with the daemon's notifiers, apart from the version filled in at start."""
    served = requests.get(f"{api_url}/openapi.json", timeout=10).json()
    assert _without_version(DOCUMENT) == _without_version(served)
    assert list(NOTIFIERS) == served["components"]["schemas"]["NotifierName"]["enum"]


def _without_version(document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "info": {k: v for k, v in document["info"].items() if k != "version"}}


# Where the document and the server disagree without either being broken, the check that
# would flag it is left out for that operation only (reported to the document's owner).
# `notify` names are an enum of the configured notifiers, null is documented for `notify` and
# `labels`, `state=` is documented as "all", and the page's `state` is free. Left: a CSV that
# fits the schema (any file) is refused with 400 `invalid_csv` unless its columns map to fields,
# which no JSON Schema can say.
KNOWN_GAPS: dict[str, list[Any]] = {"POST /imports": [positive_data_acceptance]}


@schema.parametrize()
# SCHEMATHESIS_EXAMPLES=300 for a deeper run than CI's.
@settings(max_examples=int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25")), deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: Any, api_url: str) -> None:
    """Generated requests, valid and invalid, never get a 5xx and every answer matches /openapi.json."""
    # A DELETE has no body, so nothing in the document makes schemathesis send the Content-Type the
    # API requires of it (described in the operation); a real client sends it, as here.
    headers = {**AUTH, "Content-Type": "application/json"} if case.method == "DELETE" else AUTH
    case.call_and_validate(base_url=api_url, headers=headers, timeout=10,
                           excluded_checks=KNOWN_GAPS.get(case.operation.label, []))


@pytest.mark.parametrize(("path", "query"), [
    ("/batches/{name}", {}), ("/batches", {}), ("/batches", {"state": "open"}), ("/jobs", {"batch": BATCH}),
])
def test_batch_answers_with_data_match_the_document(path: str, query: dict[str, str], api_url: str) -> None:
    """The batch routes' answers about a batch that exists (generated names rarely hit one) match the document."""
    parameters = {"name": BATCH} if "{name}" in path else {}
    case = schema[path]["GET"].Case(path_parameters=parameters, query=query)
    response = case.call_and_validate(base_url=api_url, headers=AUTH, timeout=10)
    body = response.json()
    assert (200, True) == (response.status_code, bool(body))
    assert 3 == (body["jobs"] if isinstance(body, dict) else len(body) if path == "/jobs" else body[0]["jobs"])


def _nested(levels: int) -> bytes:
    return b'{"id": "deep-1", "labels": {"n": ' + b"[" * levels + b"]" * levels + b"}}"


# Inputs no JSON Schema generator makes: not strict JSON, each a 400 `invalid_json` and never a 500.
HOSTILE_BODIES = {
    "lone surrogate": b'{"id": "h-1", "labels": {"team": "\\ud800"}}',
    "NaN": b'{"id": "h-1", "labels": {"n": NaN}}',
    "Infinity": b'{"id": "h-1", "labels": {"n": Infinity}}',
    "-Infinity": b'{"id": "h-1", "labels": {"n": -Infinity}}',
    "1e400": b'{"id": "h-1", "labels": {"n": 1e400}}',
    "long integer": b'{"id": "h-1", "labels": {"n": ' + b"9" * 1500 + b"}}",
    "over-deep nesting": _nested(900),
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_bodies_are_clean_400s(body: bytes, api_url: str) -> None:
    """Bodies that are not strict JSON get a documented JSON 400 `invalid_json`, checked like every generated case."""
    case = schema["/jobs"]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(base_url=api_url, headers=AUTH, timeout=10)
    assert (400, "invalid_json") == (response.status_code, response.json()["error"])


@pytest.mark.parametrize(("name", "value"), [("limit", "9" * 5000), ("after", "A" * 5000), ("after", "%00")])
def test_absurd_query_values_are_clean_400s(name: str, value: str, api_url: str) -> None:
    """A 5000-digit `limit` or a giant `after` is a documented JSON 400, not a 500."""
    case = schema["/jobs"]["GET"].Case(query={name: value})
    response = case.call_and_validate(base_url=api_url, headers=AUTH, timeout=10)
    assert 400 == response.status_code
