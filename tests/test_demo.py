"""`import-watcher demo`: every outcome, then an import, an export, a backup and its restore, with no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from watcher.demo import SAMPLE_CSV

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="module")
def demo() -> DemoRun:
    """One run of the demo as a user starts it, with no WATCHER_* setting and no config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "watcher", "demo"], capture_output=True, text=True, timeout=90, env=env, check=False,
    )
    return DemoRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def test_demo_exits_0_quickly_without_tracebacks(demo: DemoRun) -> None:
    """The demo ends with exit 0, its summary line, nothing on stderr, within 30 s."""
    assert 0 == demo.returncode, demo.stderr
    assert "" == demo.stderr
    assert demo.seconds < 30
    assert re.search(r"^All 5 outcomes seen and notified; a CSV imported, contacts exported, backed up and "
                     r"restored, in [\d.]+s\.$", demo.stdout, re.M), demo.stdout


def test_demo_shows_all_five_outcomes(demo: DemoRun) -> None:
    """Part 1 prints one console notification per sample job, each with its outcome."""
    for outcome, job in (("completed", "demo-completed-0001"), ("errored", "demo-errored-0002"),
                         ("failed", "demo-failed-0003"), ("not_found", "demo-never-existed"),
                         ("timed_out", "demo-stuck-pending")):
        assert re.search(rf"^\S+ {outcome}\s+job={job}\b", demo.stdout, re.M), (outcome, demo.stdout)


def test_demo_imports_the_sample_csv(demo: DemoRun) -> None:
    """Part 2 maps the CSV's reserved and custom columns to field ids, uploads it, and the import completes."""
    out = demo.stdout
    assert "── 2/5 " in out
    assert re.search(r"^email\s+->\s+_rf2_T \(email\)$", out, re.M), out
    assert re.search(r"^favorite_color\s+->\s+e1_T \(favorite_color\)$", out, re.M), out
    assert re.search(r"^import \S+: started, 6 contacts uploaded$", out, re.M), out
    assert re.search(r"^✔ completed\s+job=\S+ upsert requested=6 created=6 updated=0 .*labels=source=demo$", out,
                     re.M), out


def test_demo_exports_backs_up_and_restores(demo: DemoRun) -> None:
    """Parts 3 to 5: the export is ready, the backup succeeds and is listed verified, and its restore
    updates the same six contacts as one batch, each told by the console notifier."""
    out = demo.stdout
    assert re.search(r"^✔ ready\s+export=\S+ contacts=6 files=1 ", out, re.M), out
    assert re.search(r"^✔ succeeded\s+backup=nightly contacts=6 files=1 bytes=\d+ path=\S+/nightly/\d{8}T\d{6}Z$",
                     out, re.M), out
    assert re.search(r"^nightly  \d{8}T\d{6}Z  6 contacts, .* verified  ", out, re.M), out
    assert re.search(r"^✔ completed\s+job=\S+ upsert requested=6 created=0 updated=6 .*labels=restore=nightly$",
                     out, re.M), out
    assert re.search(r"^✔ completed\s+batch=restore:nightly:\d{8}T\d{6}Z jobs=1 completed=1", out, re.M), out


def test_sample_csv_ships_as_package_data() -> None:
    """The demo's CSV matches a package-data pattern of pyproject.toml, so installed copies have it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["watcher"]
    assert SAMPLE_CSV.is_file()
    assert any(SAMPLE_CSV in (ROOT / "watcher").glob(pattern) for pattern in patterns), (SAMPLE_CSV, patterns)
