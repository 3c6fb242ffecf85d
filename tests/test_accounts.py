"""Several SendGrid accounts: the `sendgrid.accounts` config, one budget per account, a daemon polling each."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.helpers import SECRET, WebhookReceiver, make_config
from watcher.accounts import Accounts
from watcher.clock import SystemClock
from watcher.config import load_config
from watcher.daemon import Daemon
from watcher.errors import ConfigError
from watcher.notify.outbox import Backoff
from watcher.testing.fake_sendgrid import FakeSendGrid

KEY_A, KEY_B = "SG.account-a-key", "SG.account-b-key"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value.problems


def accounts_text(url_a: str, url_b: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        sendgrid:
          request_timeout: 2s
          allow_insecure: true
          allow_private: true
          accounts:
            main: {{api_key: {KEY_A}, base_url: {url_a}, on_behalf_of: sub-a}}
            eu-brand: {{api_key: {KEY_B}, base_url: {url_b}, on_behalf_of: sub-b}}
        """) + textwrap.dedent(extra)


# --- config ---------------------------------------------------------------------


def test_top_level_api_key_is_one_account_named_default(tmp_path: Path) -> None:
    """The single-account form gives one account, "default", which `sendgrid` is."""
    config = load_config(write(tmp_path, "sendgrid:\n  api_key: SG.one\n  on_behalf_of: sub\n"), env={})
    assert ["default"] == list(config.accounts)
    assert "default" == config.default_account
    assert config.accounts["default"] is config.sendgrid
    assert "sub" == config.sendgrid.on_behalf_of


def test_accounts_in_file_order_share_the_other_keys(tmp_path: Path) -> None:
    """Accounts keep file order, the first is the default, and the shared keys apply to each."""
    secret = tmp_path / "eu.key"
    secret.write_text("SG.from-file\n", encoding="utf-8")
    path = write(tmp_path, f"""\
        sendgrid:
          request_timeout: 3s
          max_rate: 4
          accounts:
            zeta: {{api_key: SG.zeta}}
            alpha:
              api_key_file: {secret}
              base_url: https://api.eu.sendgrid.com
              on_behalf_of: brand-eu
        """)
    config = load_config(path, env={})
    assert ["zeta", "alpha"] == list(config.accounts)
    assert "zeta" == config.default_account
    assert config.accounts["zeta"] is config.sendgrid
    alpha = config.accounts["alpha"]
    assert ("SG.from-file", "https://api.eu.sendgrid.com", "brand-eu") == (
        alpha.api_key.reveal(), alpha.base_url, alpha.on_behalf_of)
    assert [(3.0, 4.0)] * 2 == [(a.request_timeout, a.max_rate) for a in config.accounts.values()]
    assert "https://api.sendgrid.com" == config.sendgrid.base_url


def test_account_problems_are_located(tmp_path: Path) -> None:
    """Both forms at once, an unknown key, a bad base_url, a missing key and a bad name: each at its line."""
    path = write(tmp_path, """\
        sendgrid:
          api_key: SG.top
          accounts:
            main: {api_key: SG.main, colour: red}
            eu:
              api_key: SG.eu
              base_url: http://api.eu.sendgrid.com
            nokey: {on_behalf_of: x}
            "bad name": {api_key: SG.x}
        """)
    assert [
        f"{path}:2: sendgrid.api_key: give either this or `sendgrid.accounts`, not both",
        f"{path}:4: sendgrid.accounts.main.colour: unknown key (expected one of api_key, base_url, on_behalf_of)",
        f"{path}:7: sendgrid.accounts.eu.base_url: must use https (plain http only to a loopback host, "
        "or set allow_insecure: true)",
        f"{path}:8: sendgrid.accounts.nokey: missing required key `api_key`",
        f"{path}:9: sendgrid.accounts.bad name: invalid account name 'bad name': "
        "expected 1 to 64 characters of A-Z a-z 0-9 - _ .",
    ] == problems_of(path)


def test_empty_accounts_and_unreadable_key_file(tmp_path: Path) -> None:
    """`accounts:` must name at least one account; an unreadable api_key_file is located at its key."""
    path = write(tmp_path, "sendgrid:\n  accounts: {}\n")
    assert [f"{path}:2: sendgrid.accounts: expected a mapping of account name -> {{api_key, base_url, on_behalf_of}}"
            ] == problems_of(path)
    path = write(tmp_path, f"sendgrid:\n  accounts:\n    a:\n      api_key_file: {tmp_path}/missing\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:4: sendgrid.accounts.a.api_key_file: cannot read secret file ")


def test_control_characters_in_a_key_or_on_behalf_of_are_located_problems(tmp_path: Path) -> None:
    """A CR/LF (or any control character) in an API key, a key file or on_behalf_of would break every
    request's headers: each is refused at its key, and the key itself is never shown."""
    two_lines = tmp_path / "two-lines.key"
    two_lines.write_text("SG.first-line\nSG.second-line\n", encoding="utf-8")  # the last newline is stripped
    path = write(tmp_path, f"""\
        sendgrid:
          accounts:
            a: {{api_key: "SG.key\\r\\nX-Injected: 1"}}
            b: {{api_key_file: {two_lines}}}
            c: {{api_key: SG.fine, on_behalf_of: "sub\\r\\nX-Injected: 1"}}
            d: {{api_key: SG.fine, on_behalf_of: "sub\\x7f"}}
        """)
    problems = problems_of(path)
    header = "must not contain control characters (a line break, a tab): it is sent in an HTTP header"
    assert [
        f"{path}:3: sendgrid.accounts.a.api_key: the API key {header}",
        f"{path}:4: sendgrid.accounts.b.api_key: the API key {header}",
        f"{path}:5: sendgrid.accounts.c.on_behalf_of: on_behalf_of {header}",
        f"{path}:6: sendgrid.accounts.d.on_behalf_of: on_behalf_of {header}",
    ] == problems
    assert not any("SG.key" in p or "first-line" in p for p in problems)
    single = tmp_path / "one-line.key"
    single.write_text("SG.one-line\n", encoding="utf-8")
    config = load_config(write(tmp_path, f"sendgrid:\n  api_key_file: {single}\n"), env={})
    assert "SG.one-line" == config.sendgrid.api_key.reveal()


def test_a_backup_names_a_configured_account(tmp_path: Path) -> None:
    """`backups:` is accepted and checked against the configured account names."""
    text = accounts_text("https://a.example", "https://b.example", f"""\
        backups:
          - {{name: nightly, schedule: "30 2 * * *", account: eu-brand, destination: {tmp_path}}}
          - {{name: other, schedule: "30 3 * * *", account: nowhere, destination: {tmp_path}}}
        """)
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:10: backups[1].account: unknown account 'nowhere'")


async def test_accounts_get_names_the_configured_ones(tmp_path: Path) -> None:
    """get(None) is the default account, get(name) that one; an unknown name is a ValueError listing them."""
    config = make_config(tmp_path, accounts_text("https://a.example", "https://b.example"))
    async with Accounts.open(config, clock=SystemClock()) as accounts:
        assert ("main", "eu-brand") == accounts.names
        assert "main" == accounts.get(None).name == accounts.default
        assert "eu-brand" == accounts.get("eu-brand").name
        assert accounts.get("main").budget is not accounts.get("eu-brand").budget
        with pytest.raises(ValueError, match=r"^unknown account 'x' \(configured: main, eu-brand\)$"):
            accounts.get("x")
        sessions = [account.session for account in accounts]
    assert all(session.closed for session in sessions)


# --- separate budgets -------------------------------------------------------------


async def test_one_account_out_of_budget_does_not_slow_another(tmp_path: Path) -> None:
    """Account A's rate limit used up (its fake's X-RateLimit headers) holds A's next poll, not B's polls."""
    await _separate_budgets(tmp_path, None)


async def test_redis_shared_budgets_are_one_window_per_account(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """With a Redis state store each account's window is its own Redis key, and A's exhaustion spares B."""
    await _separate_budgets(tmp_path, (redis_url, redis_prefix))


async def _separate_budgets(tmp_path: Path, redis: tuple[str, str] | None) -> None:
    store_url = f"{redis[0]}?prefix={redis[1]}" if redis else None
    async with (
        FakeSendGrid(api_keys=[KEY_A], rate_limit=2, rate_window=3600) as fake_a,
        FakeSendGrid(api_keys=[KEY_B], rate_limit=2, rate_window=3600) as fake_b,
    ):
        fake_a.script_job("job-a")
        fake_b.script_job("job-b")
        config = make_config(tmp_path, accounts_text(fake_a.base_url, fake_b.base_url))
        async with Accounts.open(config, clock=SystemClock(), store_url=store_url) as accounts:
            a, b = accounts.get("main").client, accounts.get("eu-brand").client
            for _ in range(2):
                await a.get_import("job-a")
            held = asyncio.create_task(a.get_import("job-a"))
            try:
                # B's own window (limit 2, refilled by the fake each hour): two polls, neither waits for A.
                await asyncio.wait_for(asyncio.gather(*(b.get_import("job-b") for _ in range(2))), 5)
                assert not held.done()
            finally:
                held.cancel()
            if redis:
                client = aioredis.Redis.from_url(redis[0])
                try:
                    keys = sorted([k.decode() async for k in client.scan_iter(match=f"{redis[1]}:ratelimit*")])
                finally:
                    await client.aclose()
                assert [f"{redis[1]}:ratelimit:eu-brand", f"{redis[1]}:ratelimit:main"] == keys
    assert (2, 2) == (fake_a.requests_total, fake_b.requests_total)
    assert {"job-a": 2} == dict(fake_a.polls) and {"job-b": 2} == dict(fake_b.polls)


# --- the daemon ------------------------------------------------------------------


async def test_daemon_polls_each_job_in_its_account(tmp_path: Path) -> None:
    """Jobs of two accounts (named in the job file) are polled at each account's base URL with its own key and
    On-Behalf-Of; the intake refuses an account that is not configured."""
    async with (
        FakeSendGrid(api_keys=[KEY_A]) as fake_a,
        FakeSendGrid(api_keys=[KEY_B]) as fake_b,
        WebhookReceiver() as hook,
    ):
        fake_a.script_job("job-main", pending_for=0.1)
        fake_a.script_job("job-default", outcome="failed")
        fake_b.script_job("job-eu", outcome="errored", errored=1, error_rows=[("x@y", "invalid email")])
        jobs = tmp_path / "jobs.yaml"
        jobs.write_text("jobs:\n  - {id: job-main, account: main}\n  - job-default\n"
                        "  - {id: job-eu, account: eu-brand}\n", encoding="utf-8")
        config = make_config(tmp_path, accounts_text(fake_a.base_url, fake_b.base_url, f"""\
            polling: {{initial_delay: 0s, min_interval: 50ms, max_interval: 200ms, deadline: 5s}}
            state: {{url: "memory://"}}
            sources: [{{type: file, path: {jobs}}}]
            notifiers:
              hook: {{type: webhook, url: {hook.url}, secret: {SECRET}}}
            """))
        daemon = Daemon(config, delivery_backoff=Backoff(initial=0.05, maximum=0.2))
        refused: list[str] = []

        def check_intake(running: Daemon) -> None:
            intake = running.intake
            assert intake is not None
            intake.check_account("eu-brand")
            with pytest.raises(ValueError) as info:
                intake.check_account("nowhere")
            refused.append(str(info.value))

        daemon.on_started.append(check_intake)
        assert 0 == await asyncio.wait_for(daemon.run(until_idle=True, install_signals=False), 20)
    assert ["unknown account 'nowhere' (configured: main, eu-brand)"] == refused
    assert {"job-main": "completed", "job-default": "failed", "job-eu": "errored"} == hook.statuses()
    assert {"job-main", "job-default"} == set(fake_a.polls) and {"job-eu"} == set(fake_b.polls)
    assert ("sub-a", "sub-b") == (fake_a.last_on_behalf_of, fake_b.last_on_behalf_of)
    assert 0 == fake_a.responses_by_status[401] + fake_b.responses_by_status[401]
