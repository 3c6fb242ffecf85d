"""Configuration: every problem reported at once with FILE:LINE, secrets never shown."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from watcher.config import load_config
from watcher.errors import ConfigError
from watcher.notify.registry import load_notifier_types
from watcher.sources.file import load_job_file
from watcher.yamlloc import Problems, load_located

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = "sendgrid:\n  api_key: SG.test-key-123\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.problems


def test_example_config_is_valid() -> None:
    """The shipped example uses every key and validates with only the API key set."""
    config = load_config(ROOT / "config" / "example.yaml", env={"SENDGRID_API_KEY": "SG.example"})
    assert ("team-slack", "audit-hook", "console", "ops-email") == config.notifier_names
    assert 300.0 == config.polling.max_interval
    assert 3 == len(config.routes)
    assert config.server is not None and config.server.token is None


def test_notifier_example_has_every_type_and_validates() -> None:
    """config/notifiers.example.yaml shows one notifier of every registered type, and `check` accepts it."""
    from watcher.notify.registry import load_notifier_types

    config = load_config(ROOT / "config" / "notifiers.example.yaml", env={"SENDGRID_API_KEY": "SG.example"})
    assert sorted(load_notifier_types()) == sorted({n.type for n in config.notifiers})


def test_example_job_file_is_valid() -> None:
    """The shipped job file parses with both a full entry and a bare id."""
    refs, problems = load_job_file(ROOT / "config" / "jobs.example.yaml", ("team-slack",))
    assert [] == problems
    assert ["0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11", "3c2d7f0e-1111-4d2b-8a7e-5f0b2e9c4d22"] == [r.id for r in refs]


def test_defaults(tmp_path: Path) -> None:
    """A minimal config takes the documented defaults."""
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert "https://api.sendgrid.com" == config.sendgrid.base_url
    assert (2.0, 5.0, 300.0, 86400.0, 120.0) == (
        config.polling.initial_delay, config.polling.min_interval, config.polling.max_interval,
        config.polling.deadline, config.polling.not_found_grace,
    )
    assert 32 == config.sendgrid.max_concurrency
    assert "sqlite:///import-watcher.db" == config.state.url
    assert 20.0 == config.shutdown_grace
    assert 0.2 == config.polling.growth


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    """A config with several mistakes gets all of them, in line order, as FILE:LINE: path: message."""
    known_types = ", ".join(sorted(load_notifier_types()))  # other helpers add types
    path = write(tmp_path, """\
        sendgrid:
          api_key: SG.key-1234
          max_concurrency: lots
          colour: blue
        polling:
          min_interval: 5 parsecs
          deadline: -3s
        notifiers:
          hook:
            type: webhook
            url: https://hooks.example.com/x
            retries: 3
          pager:
            type: carrier-pigeon
        routes:
          - notify: [nobody]
        shutdown_grace: soon
        surprise: true
        """)
    problems = problems_of(path)
    assert [
        f"{path}:3: sendgrid.max_concurrency: expected a whole number, got str 'lots'",
        f"{path}:4: sendgrid.colour: unknown key (expected one of accounts, allow_insecure, allow_private, api_key, base_url, max_concurrency, max_rate, on_behalf_of, request_timeout)",
        f"{path}:6: polling.min_interval: expected a duration like 250ms, 5s, 2m, 1h or 1d, got '5 parsecs'",
        f"{path}:7: polling.deadline: expected a duration like 250ms, 5s, 2m, 1h or 1d, got '-3s'",
        f"{path}:12: notifiers.hook.retries: unknown key (expected one of allow_insecure, headers, secret, timeout, url)",
        f"{path}:14: notifiers.pager.type: unknown notifier type 'carrier-pigeon' (known: {known_types})",
        f"{path}:16: routes[0].notify: unknown notifier 'nobody' (configured: hook)",
        f"{path}:17: shutdown_grace: expected a duration like 250ms, 5s, 2m, 1h or 1d, got 'soon'",
        f"{path}:18: surprise: unknown key (expected one of backups, batches, digests, heartbeat_file, logging, notifiers, polling, routes, sendgrid, server, shutdown_grace, sources, state)",
    ] == problems


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    """Broken YAML is one problem with the line of the break, not a traceback."""
    path = write(tmp_path, "sendgrid:\n  api_key: [unclosed\npolling: {}\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:3: not valid YAML")


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    """A missing or empty config file is a clear problem."""
    assert problems_of(tmp_path / "nope.yaml")[0].startswith(f"{tmp_path / 'nope.yaml'}:1: cannot read")
    assert [f"{tmp_path / 'config.yaml'}:1: the configuration must be a mapping with at least a `sendgrid:` section"] == problems_of(write(tmp_path, ""))


def test_required_section_and_key(tmp_path: Path) -> None:
    """No sendgrid section, or no api_key, is reported."""
    assert [f"{tmp_path / 'config.yaml'}:1: sendgrid: this section is required"] == problems_of(write(tmp_path, "polling: {}\n"))
    path = write(tmp_path, "sendgrid:\n  base_url: https://api.eu.sendgrid.com\n", "b.yaml")
    assert [f"{path}:1: sendgrid: missing required key `api_key`"] == problems_of(path)


def test_environment_expansion(tmp_path: Path) -> None:
    """${VAR} and ${VAR:-default} are expanded; a missing variable without default is an error."""
    path = write(tmp_path, """\
        sendgrid:
          api_key: ${KEY}
          base_url: ${BASE:-https://api.eu.sendgrid.com}
          max_concurrency: ${CONC:-7}
        """)
    config = load_config(path, env={"KEY": "SG.from-env"})
    assert "SG.from-env" == config.sendgrid.api_key.reveal()
    assert "https://api.eu.sendgrid.com" == config.sendgrid.base_url
    assert 7 == config.sendgrid.max_concurrency
    assert [f"{path}:2: sendgrid.api_key: environment variable KEY is not set"] == problems_of(path, {})


def test_secret_from_file(tmp_path: Path) -> None:
    """`api_key_file` reads the secret from a file (Docker and Kubernetes secrets)."""
    secret = tmp_path / "key.txt"
    secret.write_text("SG.from-file\n", encoding="utf-8")
    config = load_config(write(tmp_path, f"sendgrid:\n  api_key_file: {secret}\n"), env={})
    assert "SG.from-file" == config.sendgrid.api_key.reveal()
    path = write(tmp_path, f"sendgrid:\n  api_key_file: {tmp_path}/missing\n", "b.yaml")
    assert problems_of(path)[0].startswith(f"{path}:2: sendgrid.api_key_file: cannot read secret file")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("90", 90.0), ("1.5", 1.5)],
)
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    """Durations accept ms, s, m, h, d and plain seconds."""
    config = load_config(write(tmp_path, MINIMAL + f"polling:\n  initial_delay: {text}\n"), env={})
    assert seconds == config.polling.initial_delay


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    """The API key does not appear in the repr of the loaded config."""
    config = load_config(write(tmp_path, "sendgrid:\n  api_key: SG.super-secret-value\n"), env={})
    assert "SG.super-secret-value" not in repr(config)


def test_server_token_required_off_loopback(tmp_path: Path) -> None:
    """Listening beyond loopback without a token is a config error."""
    path = write(tmp_path, MINIMAL + "server:\n  listen: 0.0.0.0:8080\n")
    assert [f"{path}:3: server.token: required when server.listen is not a loopback address"] == problems_of(path)
    ok = load_config(write(tmp_path, MINIMAL + "server:\n  listen: 127.0.0.1:8080\n", "b.yaml"), env={})
    assert ok.server is not None and ("127.0.0.1", 8080) == (ok.server.host, ok.server.port)


def test_routes_conditions(tmp_path: Path) -> None:
    """Routes parse status, labels and job_type conditions and reject unknown outcomes."""
    path = write(tmp_path, MINIMAL + textwrap.dedent("""\
        notifiers:
          out: {type: console}
        routes:
          - when: {status: [errored, exploded], labels: {team: growth}, job_type: delete}
            notify: out
        """))
    assert [f"{path}:6: routes[0].when.status: unknown status 'exploded' (expected completed, errored, failed, failure, not_found, pending, ready, timed_out)"] == problems_of(path)


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    """A key given twice is reported rather than silently overwritten."""
    path = write(tmp_path, "sendgrid:\n  api_key: a-key-1\n  api_key: a-key-2\n")
    assert [f"{path}:3: sendgrid.api_key: duplicate key"] == problems_of(path)


def test_job_file_problems(tmp_path: Path) -> None:
    """Bad job entries are located; good ones are still returned."""
    path = write(tmp_path, """\
        jobs:
          - good-1
          - id: "bad id!"
          - {id: good-2, labels: {team: a}, notify: [ghost]}
          - {id: good-3, colour: red}
          - good-1
          - 12345
        """, "jobs.yaml")
    refs, problems = load_job_file(path, ("console",))
    assert ["good-1", "12345"] != [r.id for r in refs]
    assert ["good-1"] == [r.id for r in refs]
    assert [
        f"{path}:3: jobs[1]: invalid job id 'bad id!': expected 1 to 64 characters of A-Z a-z 0-9 - _",
        f"{path}:4: jobs[2].notify: unknown notifier 'ghost'",
        f"{path}:5: jobs[3]: unknown key 'colour' (expected id, labels, notify, batch, kind, account)",
        f"{path}:6: jobs[4]: job good-1 is listed twice",
        f"{path}:7: jobs[5]: a job id must be a string, got the number 12345: quote it, e.g. '12345'",
    ] == problems


def test_hostile_yaml_is_refused_quickly(tmp_path: Path) -> None:
    """A self-referencing alias and an alias bomb are located problems, not a crash or a hang."""
    path = write(tmp_path, "a: &x [*x]\n")
    assert [f"{path}:1: a YAML alias refers to itself"] == problems_of(path)
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    rows += [f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 9)]
    bomb = write(tmp_path, "\n".join(rows) + "\n", "bomb.yaml")
    [problem] = problems_of(bomb)
    assert "too large" in problem


def test_python_tags_construct_nothing(tmp_path: Path) -> None:
    """YAML tags that would build Python objects are never executed: the command they name never runs."""
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"sendgrid: !!python/object/apply:os.system ['touch {marker}']\n")
    assert problems_of(path)[0].startswith(f"{path}:1: ")
    assert not marker.exists()  # an unsafe loader would have run `touch` before any problem was found


def test_text_libyaml_cannot_take_is_a_located_problem() -> None:
    """libyaml reads UTF-8 only; a str with a lone surrogate (from no UTF-8 file, but a str can hold
    one) falls back to the Python parser and is a problem, not a UnicodeEncodeError."""
    problems = Problems("f.yaml")
    assert None is load_located("a: b\nc: \ud800\n", problems, env={})
    [problem] = problems.sorted()
    assert problem.startswith("f.yaml:1: not valid YAML: unacceptable character #xd800")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{type: file}", "sources[0]: missing required key `path`"),
        ("{type: file, path: ''}", "sources[0].path: must not be empty"),
        ("{type: file, path: [a, b]}", "sources[0].path: expected a string, got a list"),
        ("{type: file, path: 5}", "sources[0].path: expected a string, got int 5"),
        ("{type: file, path: \"a\\0b\"}", "sources[0].path: a file path must not contain NUL bytes"),
        ("{type: redis}", "sources[0]: missing required key `url`"),
        ("{type: redis, url: ''}", "sources[0].url: must not be empty"),
        ("{type: redis, url: {a: 1}}", "sources[0].url: expected a string, got a mapping"),
        ("{type: redis, url: 'redis://h:1/0', stream: 7}", "sources[0].stream: expected a string, got int 7"),
        ("{type: redis, url: 'redis://h:1/0', group: ' '}", "sources[0].group: must not be empty"),
        ("just-a-string", "sources[0]: expected a mapping with `type: file` or `type: redis`"),
        ("{type: [file]}", "sources[0].type: unknown source type ['file'] (expected file or redis)"),
    ],
)
def test_every_source_field_is_validated(tmp_path: Path, source: str, message: str) -> None:
    """A source with a missing, empty or mistyped field is one located problem, never a traceback."""
    path = write(tmp_path, MINIMAL + f"sources:\n  - {source}\n")
    assert [f"{path}:4: {message}"] == problems_of(path)


def test_a_short_token_off_loopback_is_refused(tmp_path: Path) -> None:
    """A token shorter than 32 characters is an error when the API listens beyond loopback, fine on loopback."""
    path = write(tmp_path, MINIMAL + "server:\n  listen: 0.0.0.0:8080\n  token: x\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:5: server.token: must be at least 32 characters")
    assert "x" not in problem.rpartition(":")[2].split()
    long_enough = write(tmp_path, MINIMAL + "server:\n  listen: 0.0.0.0:8080\n  token: " + "t" * 32 + "\n", "b.yaml")
    assert load_config(long_enough, env={}).server is not None
    loopback = write(tmp_path, MINIMAL + "server:\n  listen: 127.0.0.1:8080\n  token: x\n", "c.yaml")
    assert load_config(loopback, env={}).server is not None


@pytest.mark.parametrize(
    ("base_url", "fragment"),
    [
        ("http://api.sendgrid.com", "must use https"),
        ("https://api.sendgrid.com/v3", "must not end in /v3"),
        ("https://api.sendgrid.com/v3/", "must not end in /v3"),
        ("https://user:pw@api.sendgrid.com", "user name or password"),
    ],
)
def test_base_url_follows_the_url_policy(tmp_path: Path, base_url: str, fragment: str) -> None:
    """sendgrid.base_url in plain http off loopback, with /v3 or with userinfo is a located error."""
    path = write(tmp_path, MINIMAL + f"  base_url: {base_url}\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:3: sendgrid.base_url: ") and fragment in problem
    assert "pw" not in problem


def test_plain_http_base_url_on_loopback_or_allowed(tmp_path: Path) -> None:
    """Plain http is fine to loopback (the fake SendGrid) and elsewhere with allow_insecure."""
    for i, extra in enumerate(["  base_url: http://127.0.0.1:3030\n",
                               "  base_url: http://mirror.internal\n  allow_insecure: true\n"]):
        assert load_config(write(tmp_path, MINIMAL + extra, f"{i}.yaml"), env={}).sendgrid.base_url


def test_the_lease_must_outlast_a_request(tmp_path: Path) -> None:
    """state.lease not longer than sendgrid.request_timeout is refused; slow notifiers are not its concern (renewal)."""
    path = write(tmp_path, MINIMAL + textwrap.dedent("""\
          request_timeout: 20s
        state:
          lease: 15s
        notifiers:
          slow: {type: webhook, url: 'https://hooks.example.com/x', timeout: 30s}
        """))
    assert [f"{path}:5: state.lease: must be longer than sendgrid.request_timeout (20s)"] == problems_of(path)
    fine = write(tmp_path, MINIMAL + "  request_timeout: 1s\nstate:\n  lease: 2s\n", "b.yaml")
    assert 2.0 == load_config(fine, env={}).state.lease


@pytest.mark.parametrize("value", ["${SENDGRID_API_KEY", "pre-${1BAD}", "${}", "${A:-x"])
def test_a_malformed_variable_is_an_error(tmp_path: Path, value: str) -> None:
    """An unclosed or malformed `${` never becomes the value itself."""
    path = write(tmp_path, f"sendgrid:\n  api_key: '{value}'\n")
    [problem] = problems_of(path, env={"SENDGRID_API_KEY": "SG.real-key", "A": "a"})
    assert problem.startswith(f"{path}:2: sendgrid.api_key: malformed ${{...}}")


def test_dollars_still_work(tmp_path: Path) -> None:
    """`$$` is a literal dollar and a `$` not followed by `{` stays as written."""
    path = write(tmp_path, "sendgrid:\n  api_key: 'pa$$word-$x-${K}'\n")
    assert "pa$word-$x-v" == load_config(path, env={"K": "v"}).sendgrid.api_key.reveal()


def test_config_and_secret_files_must_be_small_regular_files(tmp_path: Path) -> None:
    """A FIFO, a device, a directory or an oversized file is refused at once with a located message."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    with big.open("wb") as out:
        out.truncate(1024 * 1024 + 1)
    for path, why in [(fifo, "not a regular file (a FIFO)"), (Path("/dev/zero"), "a character device"),
                      (tmp_path, "a directory"), (big, "too large: 1048577 bytes")]:
        [problem] = problems_of(path)
        assert problem.startswith(f"{path}:1: cannot read the config file: ") and why in problem
    secret = write(tmp_path, f"sendgrid:\n  api_key_file: {fifo}\n", "s.yaml")
    assert [f"{secret}:2: sendgrid.api_key_file: cannot read secret file {fifo}: not a regular file (a FIFO)"] == (
        problems_of(secret)
    )


def test_a_url_with_a_bad_port_is_located(tmp_path: Path) -> None:
    """A source URL whose port is no number is a config problem (its password not shown), not a crash later."""
    path = write(tmp_path, MINIMAL + "sources:\n  - {type: redis, url: 'redis://:pw@h:notaport/0'}\n")
    assert [f"{path}:4: sources[0].url: the port is not a number from 0 to 65535 in redis://h:notaport/…"] == (
        problems_of(path)
    )


def test_a_state_url_with_a_bad_port_is_located(tmp_path: Path) -> None:
    """state.url naming Redis with a port that is no number is a config problem, its password not shown."""
    path = write(tmp_path, MINIMAL + "state:\n  url: 'redis://:pw@h:99999/0'\n")
    assert [f"{path}:4: state.url: the port is not a number from 0 to 65535 in redis://h:99999/…"] == problems_of(path)


def test_batch_stuck_and_digest_settings_have_documented_defaults(tmp_path: Path) -> None:
    """Without the new keys: settle 60 s, no stuck warnings, no digests, no public URL; chat notifiers
    get summaries and early failures only, webhook and console every event."""
    config = load_config(write(tmp_path, MINIMAL + textwrap.dedent("""\
        notifiers:
          chat: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/x"}
          hook: {type: webhook, url: "https://h.example/x"}
          out: {type: console}
        server:
          listen: 127.0.0.1:8080
        """)), env={})
    assert (60.0, None, (), None) == (
        config.batches.settle, config.polling.warn_after, config.digests, config.server and config.server.public_url
    )
    choices = {n.name: (n.batches.per_job, n.batches.summary, sorted(n.batches.early)) for n in config.notifiers}
    assert {"chat": (False, True, ["failed"]), "hook": (True, True, ["failed"]), "out": (True, True, ["failed"])} == choices


def test_batch_stuck_and_digest_settings_are_read(tmp_path: Path) -> None:
    """Given values are taken: settle, warn_after, a notifier's batches, a digest, the public URL."""
    config = load_config(write(tmp_path, MINIMAL + textwrap.dedent("""\
        polling: {warn_after: 2h}
        batches: {settle: 5m}
        notifiers:
          hook: {type: webhook, url: "https://h.example/x", batches: {per_job: false, early: [failed, errored]}}
        server: {listen: 127.0.0.1:8080, public_url: "https://watcher.example.com"}
        digests:
          - {name: morning, schedule: "0 8 * * 1-5", timezone: Europe/Berlin, notify: [hook], skip_empty: false}
        """)), env={})
    [hook], [digest] = config.notifiers, config.digests
    assert (7200.0, 300.0) == (config.polling.warn_after, config.batches.settle)
    assert (False, True, {"failed", "errored"}) == (hook.batches.per_job, hook.batches.summary, set(hook.batches.early))
    assert ("morning", "0 8 * * 1-5", "Europe/Berlin", ("hook",), False) == (
        digest.name, digest.schedule, digest.timezone, digest.notify, digest.skip_empty
    )
    assert config.server is not None and "https://watcher.example.com" == config.server.public_url


def test_batch_and_stuck_problems_are_located(tmp_path: Path) -> None:
    """Every problem with batches, warn_after, a notifier's batches and public_url names its line."""
    path = write(tmp_path, MINIMAL + textwrap.dedent("""\
        polling: {warn_after: 2d}
        batches: {settle: soon, size: 3}
        notifiers:
          hook:
            type: webhook
            url: "https://h.example/x"
            batches: {per_job: sometimes, early: [exploded], late: true}
        server: {listen: 127.0.0.1:8080, public_url: "ftp://watcher.example.com"}
        """))
    assert [
        f"{path}:3: polling.warn_after: must be shorter than polling.deadline (the job times out first)",
        f"{path}:4: batches.size: unknown key (expected one of settle)",
        f"{path}:4: batches.settle: expected a duration like 250ms, 5s, 2m, 1h or 1d, got 'soon'",
        f"{path}:9: notifiers.hook.batches.late: unknown key (expected early, per_job, summary)",
        f"{path}:9: notifiers.hook.batches.per_job: expected true or false, got 'sometimes'",
        f"{path}:9: notifiers.hook.batches.early: unknown outcome 'exploded' "
        "(expected completed, errored, failed, failure, not_found, ready, timed_out)",
        f"{path}:10: server.public_url: expected a https or http URL, got ftp://watcher.example.com/…",
    ] == problems_of(path)


def test_a_careless_or_hostile_notifier_setting_is_a_located_problem_that_shows_no_secret(tmp_path: Path) -> None:
    """A header with CR/LF is refused by check (not at every send); a URL typed without https:// is
    refused without echoing its token; a 5,000-digit number is a located problem, not a bare error."""
    path = write(tmp_path, MINIMAL + textwrap.dedent("""\
        notifiers:
          hook:
            type: webhook
            url: https://hooks.example.com/x
            headers: {Authorization: "Bearer T\\r\\nX-Injected: 1"}
          mm:
            type: mattermost
            webhook_url: mattermost.example.com/hooks/MMSECRETTOKEN
        """))
    found = problems_of(path)
    assert any(":7: notifiers.hook.headers: header 'Authorization'" in p for p in found), found
    assert any(":10: notifiers.mm.webhook_url: " in p and "no scheme://host" in p for p in found), found
    assert not any("MMSECRET" in p for p in found), found
    huge = write(tmp_path, MINIMAL + "shutdown_grace: 1" + "0" * 5000 + "\n", "huge.yaml")
    [problem] = problems_of(huge)
    assert problem.startswith(f"{huge}:3: shutdown_grace: bad value"), problem
