"""The command line: exit codes, messages without tracebacks, add/status on a real store, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from watcher.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"sendgrid:\n  api_key: SG.cli-secret-key\nstate:\n  url: sqlite:///{tmp_path}/state.db\n"
        f"notifiers:\n  out: {{type: console}}\nheartbeat_file: {tmp_path}/hb\n{extra}",
        encoding="utf-8",
    )
    return path


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid config passes `check` with exit 0."""
    assert 0 == main(["check", "-c", str(write_config(tmp_path))])
    assert "OK" in capsys.readouterr().out


def test_check_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken config exits 2 and prints each problem with its line, no traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text("sendgrid:\n  api_key: k-1234\n  max_rate: fast\npolling:\n  deadline: forever\n", encoding="utf-8")
    assert 2 == main(["check", "-c", str(path)])
    err = capsys.readouterr().err.splitlines()
    assert [f"{path}:3: sendgrid.max_rate: expected a number, got 'fast'",
            f"{path}:5: polling.deadline: expected a duration like 250ms, 5s, 2m, 1h or 1d, got 'forever'"] == err


def test_check_includes_job_file_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` also validates the job files of file sources."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  - ok-1\n  - 'no/slashes'\n", encoding="utf-8")
    config = write_config(tmp_path, f"sources:\n  - type: file\n    path: {jobs}\n")
    assert 2 == main(["check", "-c", str(config)])
    assert [f"{jobs}:3: jobs[1]: invalid job id 'no/slashes': expected 1 to 64 characters of A-Z a-z 0-9 - _"] == capsys.readouterr().err.splitlines()


def test_missing_config_argument(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without -c or $WATCHER_CONFIG the command says so and exits 2."""
    monkeypatch.delenv("WATCHER_CONFIG", raising=False)
    assert 2 == main(["check"])
    assert "no config file" in capsys.readouterr().err


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-c defaults to $WATCHER_CONFIG."""
    monkeypatch.setenv("WATCHER_CONFIG", str(write_config(tmp_path)))
    assert 0 == main(["check"])


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is a usage error with exit 2."""
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert 2 == info.value.code


def test_add_then_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`add` stores a job once; `status --json` shows it with the contract's fields."""
    config = str(write_config(tmp_path))
    assert 0 == main(["add", "-c", config, "job-abc_1", "--label", "team=growth", "--notify", "out"])
    assert 0 == main(["add", "-c", config, "job-abc_1"])
    out = capsys.readouterr().out
    assert "job-abc_1: now watching\njob-abc_1: already tracked\n" == out
    assert 0 == main(["status", "-c", config, "--json"])
    [view] = json.loads(capsys.readouterr().out)
    assert {"id": "job-abc_1", "state": "watching", "polls": 0, "labels": {"team": "growth"},
            "finished_at": None, "detected_at": None, "deliveries": []} == {
        k: view[k] for k in ("id", "state", "polls", "labels", "finished_at", "detected_at", "deliveries")}
    assert view["added_at"].endswith("Z")
    assert 0 == main(["status", "-c", config])
    assert "job-abc_1" in capsys.readouterr().out
    assert 1 == main(["status", "-c", config, "nope"])


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "../../etc", "a/b", "ü"])
def test_add_rejects_bad_ids(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Invalid job ids are refused with exit 2 before anything is stored."""
    config = str(write_config(tmp_path))
    assert 2 == main(["add", "-c", config, bad])
    assert "invalid job id" in capsys.readouterr().err
    assert 0 == main(["status", "-c", config, "--json"])
    assert [] == json.loads(capsys.readouterr().out)


def test_add_rejects_unknown_notifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--notify must name a configured notifier."""
    assert 2 == main(["add", "-c", str(write_config(tmp_path)), "j1", "--notify", "pager"])
    assert "unknown notifier 'pager'" in capsys.readouterr().err


def test_healthcheck(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """healthcheck fails without a heartbeat, passes with a fresh one and fails with a stale one."""
    config = str(write_config(tmp_path))
    assert 1 == main(["healthcheck", "-c", config])
    (tmp_path / "hb").write_text(f"{time.time()} me\n", encoding="utf-8")
    assert 0 == main(["healthcheck", "-c", config])
    (tmp_path / "hb").write_text(f"{time.time() - 120} me\n", encoding="utf-8")
    assert 1 == main(["healthcheck", "-c", config])


def test_status_never_shows_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Neither `status` nor `check` prints the API key."""
    config = str(write_config(tmp_path))
    main(["add", "-c", config, "j1"])
    main(["status", "-c", config, "--json"])
    main(["check", "-c", config])
    captured = capsys.readouterr()
    assert "SG.cli-secret-key" not in captured.out + captured.err


def test_demo_shows_all_five_outcomes() -> None:
    """`import-watcher demo` exits 0 after seeing every outcome, with no network and no config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "watcher", "demo"], capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert 0 == proc.returncode, proc.stderr
    assert time.monotonic() - started < 30
    for outcome in ("completed", "errored", "failed", "not_found", "timed_out"):
        assert outcome in proc.stdout
    assert "All 5 outcomes seen" in proc.stdout


async def test_notify_test_reports_success_and_exact_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """notify-test sends a signed sample to a live receiver and names the error of a dead one."""
    from tests.helpers import SECRET, WebhookReceiver
    from watcher.cli import _notify_test
    from watcher.config import load_config

    async with WebhookReceiver() as hook:
        config = tmp_path / "notify.yaml"
        config.write_text(
            "sendgrid:\n  api_key: SG.cli-secret-key\nnotifiers:\n"
            f"  live:\n    type: webhook\n    url: {hook.url}\n    secret: {SECRET}\n"
            "  dead:\n    type: webhook\n    url: http://127.0.0.1:9/hook\n",
            encoding="utf-8",
        )
        loaded = load_config(config, env={})
        assert 0 == await _notify_test(loaded, "live")
        assert 1 == await _notify_test(loaded, None)
    out = capsys.readouterr().out
    assert "live: sent" in out
    assert "dead: FAILED: RetryableDeliveryError" in out
    assert "contact_import.errored" == hook.received[0].body["type"]


def test_check_catches_template_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken notifier template is a `check` error, not a 3 a.m. surprise."""
    config = write_config(tmp_path).read_text().replace(
        "  out: {type: console}\n", "  out:\n    type: console\n    templates:\n      text: '{{ data.job_id '\n")
    path = tmp_path / "t.yaml"
    path.write_text(config)
    assert 2 == main(["check", "-c", str(path)])
    err = capsys.readouterr().err
    assert f"{path}:9: notifiers.out.templates.text: template syntax error" in err
