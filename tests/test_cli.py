"""The command line: exit codes, messages without tracebacks, add/status on a real store (the demo: test_demo.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from watcher.cli import build_parser, main, package_version

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
    """healthcheck fails without a heartbeat, passes with a fresh healthy one, fails on a stale or unhealthy one."""
    config = str(write_config(tmp_path))
    assert 1 == main(["healthcheck", "-c", config])
    beat = {"at": time.time(), "owner": "me", "healthy": True, "reason": None}
    (tmp_path / "hb").write_text(json.dumps(beat) + "\n", encoding="utf-8")
    assert 0 == main(["healthcheck", "-c", config])
    (tmp_path / "hb").write_text(json.dumps({**beat, "at": time.time() - 120}) + "\n", encoding="utf-8")
    assert 1 == main(["healthcheck", "-c", config])
    (tmp_path / "hb").write_text(json.dumps({**beat, "healthy": False, "reason": "engine loop down"}) + "\n")
    assert 1 == main(["healthcheck", "-c", config])
    assert "unhealthy: daemon reports: engine loop down" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`--version` prints `import-watcher <version>` and exits 0."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert (0, f"import-watcher {package_version()}\n") == (info.value.code, capsys.readouterr().out)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())


def test_every_command_and_argument_has_help() -> None:
    """Each subcommand and each of its arguments carries a --help text."""
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [a.dest for a in commands._choices_actions if not a.help]
    for name, sub in commands.choices.items():
        missing += [f"{name} {a.dest}" for a in sub._actions if not a.help]
    assert [] == missing
    assert {"run", "check", "add", "status", "digest", "notify-test", "healthcheck", "demo", "fake-sendgrid",
            "import", "export", "backup", "backups", "restore"} == set(
        commands.choices
    )


@pytest.mark.parametrize("command", ["status", "add"])
def test_an_invalid_id_is_a_usage_error_in_every_command(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status ../x` is exit 2 with the invalid-id message, like `add ../x`, not "not tracked"."""
    assert 2 == main([command, "-c", str(write_config(tmp_path)), "../x"])
    assert "invalid job id '../x'" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["memory://", "sqlite:///:memory:"])
def test_add_refuses_a_store_that_keeps_nothing(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`add` against an in-memory store exits 2 instead of saying "now watching" and keeping nothing."""
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(f"sqlite:///{tmp_path}/state.db", f"'{url}'"))
    assert 2 == main(["add", "-c", str(config), "j1"])
    captured = capsys.readouterr()
    assert ("", 1) == (captured.out, len(captured.err.splitlines()))
    assert "nothing `add` stores would be kept" in captured.err


async def _bury(config: str, job_id: str) -> None:
    from watcher.config import load_config
    from watcher.store import open_store

    store = open_store(load_config(config).state.url)
    await store.open()
    assert await store.remove_job(job_id, now=time.time())
    await store.close()


def test_add_of_a_stopped_job_needs_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stopped job is not watched again by a plain `add` (exit 0, nothing new); `add --again` starts a new watch."""
    config = str(write_config(tmp_path))
    assert 0 == main(["add", "-c", config, "j1"])
    asyncio.run(_bury(config, "j1"))
    capsys.readouterr()
    assert 0 == main(["add", "-c", config, "j1"])
    out = capsys.readouterr().out
    assert out.startswith("j1: was stopped at ") and "add --again starts a new watch" in out
    assert 1 == main(["status", "-c", config, "j1"])
    assert "job j1 is not tracked: it was stopped at" in capsys.readouterr().err
    assert 0 == main(["add", "-c", config, "j1", "--again"])
    assert "j1: now watching\n" == capsys.readouterr().out
    assert 0 == main(["status", "-c", config, "j1", "--json"])
    assert ["watching"] == [view["state"] for view in json.loads(capsys.readouterr().out)]


def test_check_warns_without_notifiers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config with no notifier passes `check` (exit 0) with a warning on stderr."""
    path = tmp_path / "quiet.yaml"
    path.write_text("sendgrid:\n  api_key: SG.k-1234\n", encoding="utf-8")
    assert 0 == main(["check", "-c", str(path)])
    captured = capsys.readouterr()
    assert "OK (0 notifiers" in captured.out
    assert [f"{path.resolve()}: warning: no notifiers configured: outcomes are recorded but nobody is told"] == (
        captured.err.splitlines()
    )


def test_check_fails_a_template_that_breaks_only_on_completed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A template reading `data.errors` works for errored jobs but breaks on completed ones: `check` exits 2."""
    config = write_config(tmp_path).read_text().replace(
        "  out: {type: console}\n",
        "  out:\n    type: console\n    templates:\n"
        "      text: \"{% if outcome != 'alert' %}{{ data.errors.rows }} rows rejected{% endif %}\"\n",
    )
    path = tmp_path / "t.yaml"
    path.write_text(config)
    assert 2 == main(["check", "-c", str(path)])
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}:9: notifiers.out.templates.text: template fails on a sample completed event")


def test_status_never_shows_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Neither `status` nor `check` prints the API key."""
    config = str(write_config(tmp_path))
    main(["add", "-c", config, "j1"])
    main(["status", "-c", config, "--json"])
    main(["check", "-c", config])
    captured = capsys.readouterr()
    assert "SG.cli-secret-key" not in captured.out + captured.err


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


async def test_notify_test_sends_every_sample_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`notify-test --event all` sends an outcome, a batch summary, both stuck warnings and a digest, each its own id."""
    from tests.helpers import SECRET, WebhookReceiver
    from watcher.cli import SAMPLES, _notify_test, build_parser
    from watcher.config import load_config

    async with WebhookReceiver() as hook:
        config = tmp_path / "notify.yaml"
        config.write_text(f"sendgrid:\n  api_key: SG.cli-secret-key\nnotifiers:\n"
                          f"  live:\n    type: webhook\n    url: {hook.url}\n    secret: {SECRET}\n", encoding="utf-8")
        args = build_parser().parse_args(["notify-test", "-c", str(config), "--event", "all"])
        assert 0 == await _notify_test(load_config(config, env={}), None, SAMPLES[args.event])
    assert ["contact_import.errored", "contact_import.batch_finished", "contact_import.stuck",
            "contact_import.stuck", "watcher.digest", "contact_export.ready", "contact_export.failure",
            "contact_export.timed_out", "contact_export.not_found", "backup.succeeded",
            "backup.failed"] == [r.body["type"] for r in hook.received]
    assert 11 == len({r.webhook_id for r in hook.received})
    assert ["live: errored: sent", "live: batch_finished: sent", "live: stuck: sent", "live: stuck batch: sent",
            "live: digest: sent", "live: export ready: sent", "live: export failure: sent",
            "live: export timed_out: sent", "live: export not_found: sent", "live: backup succeeded: sent",
            "live: backup failed: sent"] == [line for line in capsys.readouterr().out.splitlines()
                                             if line.startswith("live:")]



def _finished_job(tmp_path: Path, job_id: str, detected_at: float) -> None:
    """Record a failed job in the config's SQLite store, as the daemon would have."""
    from watcher.models import JobRef, Outcome, Snapshot
    from watcher.store.sqlite import SqliteStore

    async def record() -> None:
        store = SqliteStore(str(tmp_path / "state.db"))
        await store.open()
        try:
            await store.add_job(JobRef(job_id), now=detected_at - 60, first_poll_at=detected_at - 60)
            (claimed,) = await store.claim_due_jobs(now=detected_at, limit=1, owner="t", lease=30)
            assert claimed.lease is not None
            assert await store.record_outcome(job_id, token=claimed.lease.token, now=detected_at,
                                              outcome=Outcome.FAILED, snapshot=Snapshot(status="failed"), polls=2,
                                              detected_at=detected_at, deliveries=[])
        finally:
            await store.close()

    asyncio.run(record())


def _queued(tmp_path: Path) -> list[tuple[str, str]]:
    from watcher.store.sqlite import SqliteStore

    async def read() -> list[tuple[str, str]]:
        store = SqliteStore(str(tmp_path / "state.db"))
        await store.open()
        try:
            return sorted((d.notifier, d.event_type) for d in await store.list_deliveries(None, with_events=True))
        finally:
            await store.close()

    return asyncio.run(read())


def test_digest_prints_the_period_up_to_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`digest --since 2h` covers jobs finished in the last two hours only; `--json` prints the event."""
    config = write_config(tmp_path).read_text().replace("notifiers:\n", "notifiers:\n  hook: {type: console}\n")
    path = tmp_path / "c.yaml"
    path.write_text(config)
    _finished_job(tmp_path, "recent-1", time.time() - 3600)
    _finished_job(tmp_path, "old-1", time.time() - 3 * 3600)
    assert 0 == main(["digest", "-c", str(path), "--since", "2h", "--json"])
    event = json.loads(capsys.readouterr().out)
    assert 0 == main(["digest", "-c", str(path), "--since", "2h"])
    text = capsys.readouterr().out
    assert ("watcher.digest", "last-2h", {"failed": 1}) == (event["type"], event["data"]["digest"], event["data"]["jobs"])
    assert "import-watcher digest last-2h" in text
    assert [] == _queued(tmp_path)  # printing sends nothing


def test_digest_send_queues_for_the_configured_digests_notifiers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`digest --send` writes one delivery per notifier of the configured digests (all notifiers when none is)."""
    base = write_config(tmp_path).read_text().replace("notifiers:\n", "notifiers:\n  hook: {type: console}\n")
    with_digest = tmp_path / "with.yaml"
    with_digest.write_text(base + "digests:\n  - {name: morning, schedule: '0 8 * * *', notify: [hook]}\n")
    without = tmp_path / "without.yaml"
    without.write_text(base)
    _finished_job(tmp_path, "recent-1", time.time() - 60)
    assert 0 == main(["digest", "-c", str(with_digest), "--send"])
    assert [("hook", "watcher.digest")] == _queued(tmp_path)
    assert 0 == main(["digest", "-c", str(without), "--send"])
    assert [("hook", "watcher.digest"), ("hook", "watcher.digest"), ("out", "watcher.digest")] == _queued(tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert "digest morning: queued for hook (1 new delivery; the running daemon delivers them)" == out[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--since", "soon"], "import-watcher: --since: expected a duration like 250ms, 5s, 2m, 1h or 1d, got 'soon'"),
    (["--since", "0s"], "import-watcher: --since: must be longer than 0s"),
    (["evening"], "import-watcher: unknown digest 'evening' (configured: none)"),
])
def test_digest_usage_errors_are_one_line(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --since or an unknown digest NAME is exit 2 with one line on stderr."""
    assert 2 == main(["digest", "-c", str(write_config(tmp_path)), *argv])
    assert [message] == capsys.readouterr().err.splitlines()


def test_digest_send_refuses_a_store_that_keeps_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`digest --send` with a memory state store says the digest would never be delivered (exit 2)."""
    path = tmp_path / "mem.yaml"
    path.write_text(write_config(tmp_path).read_text().replace(f"sqlite:///{tmp_path}/state.db", "memory://"))
    assert 2 == main(["digest", "-c", str(path), "--send"])
    assert "would never be delivered" in capsys.readouterr().err
