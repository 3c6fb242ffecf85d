"""Property-based: whatever a config or job file holds, the answer is a Config or located problems, never a traceback."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.config import load_config
from watcher.errors import ConfigError
from watcher.sources.file import load_job_file

KEYS = ["sendgrid", "api_key", "base_url", "polling", "min_interval", "deadline", "state", "url", "sources",
        "type", "path", "notifiers", "routes", "when", "notify", "status", "labels", "server", "listen",
        "token", "webhook", "slack", "email", "console", "to", "secret", "api_key_file", "templates", "text",
        "max_rate", "max_concurrency", "shutdown_grace", "id", "jobs", "x", "accounts", "on_behalf_of",
        "main", "account", "backups"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.sampled_from(["5s", "2m", "-1s", "1x", "https://api.sendgrid.com", "http://127.0.0.1:1/h", "whsec_AAAA",
                     "${NOPE}", "${X:-3}", "{{ data.job_id", "sqlite:///x.db", "redis://h:1/0", "webhook",
                     "console", "0.0.0.0:80", "", "a b", "ü"]),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    ),
    max_leaves=25,
)
LOCATED = re.compile(r"^.+:\d+: ")
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_config_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path, env={})
        except ConfigError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert LOCATED.match(problem), problem
                assert problem.startswith(f"{path}:")


@FUZZ
@given(documents)
def test_any_config_document_gives_config_or_located_problems(doc: Any) -> None:
    """Random YAML documents never raise anything but ConfigError with FILE:LINE messages."""
    _check_config_text(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), documents, max_size=6))
def test_config_shaped_documents(doc: dict[str, Any]) -> None:
    """Documents with a plausible top level still fail only with located problems."""
    doc.setdefault("sendgrid", {"api_key": "SG.k-1234"})
    _check_config_text(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.one_of(documents, st.dictionaries(st.one_of(st.sampled_from(KEYS), scalars), documents, max_size=4)),
       st.dictionaries(st.sampled_from(KEYS), documents, max_size=3))
def test_sendgrid_accounts(accounts: Any, shared: dict[str, Any]) -> None:
    """Whatever `sendgrid.accounts` and the keys beside it hold, the answer is a Config or located problems."""
    _check_config_text(yaml.safe_dump({"sendgrid": {**shared, "accounts": accounts}}, allow_unicode=True, sort_keys=False))


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    """Arbitrary text, including broken YAML, gives located problems."""
    _check_config_text(text)


@FUZZ
@given(st.one_of(documents, st.fixed_dictionaries({"jobs": st.lists(documents, max_size=6)})))
def test_job_files(doc: Any) -> None:
    """Random job files give valid refs plus located problems, never a traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        refs, problems = load_job_file(path, ("console",))
        for problem in problems:
            assert LOCATED.match(problem), problem
        assert len({r.id for r in refs}) == len(refs)
