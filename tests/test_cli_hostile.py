"""The real console script against hostile and careless input: one clear line and an exit code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("import-watcher")
CANARY = "canary-pw-8c1f"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `import-watcher ARGS` as a user would; stdin closed, environment without WATCHER_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER", "SENDGRID"))}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})},
        stdin=subprocess.DEVNULL, check=False,
    )


def assert_refused(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> str:
    """Exit `code`, no traceback, and the last stderr line a clear message holding `fragment`."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (code, True) == (proc.returncode, bool(lines)), proc.stderr
    assert fragment in lines[-1], proc.stderr
    return lines[-1]


def config(tmp_path: Path, body: str = "", *, state: str | None = None, sendgrid: str = "") -> str:
    """A config file with the given extra top-level `body` and `sendgrid` keys; its path."""
    path = tmp_path / "config.yaml"
    state_url = state or f"sqlite:///{tmp_path}/state.db"
    path.write_text(
        f"sendgrid:\n  api_key: SG.hostile-key\n{sendgrid}state:\n  url: '{state_url}'\nheartbeat_file: {tmp_path}/hb\n"
        f"logging:\n  level: error\n{body}",
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture
def not_redis() -> Iterator[int]:
    """A local port whose server answers like a web server, not like Redis."""
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()


def test_version() -> None:
    """`import-watcher --version` prints the name and the version."""
    proc = cli("--version")
    assert (0, "import-watcher ") == (proc.returncode, proc.stdout[:15])


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory"])
def test_check_of_a_special_file_answers_at_once(tmp_path: Path, kind: str) -> None:
    """`check -c /dev/zero` and `check -c <fifo>` exit 2 at once instead of eating memory or hanging."""
    target = {"dev-zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    # The timeout is the test: reading /dev/zero or opening a FIFO for reading would never end.
    proc = cli("check", "-c", str(target), timeout=20)
    assert_refused(proc, 2, f"{target}:1: cannot read the config file: not a regular file")


def test_a_fifo_as_job_file_answers_at_once(tmp_path: Path) -> None:
    """A job file that is a FIFO is a located problem, never a hang."""
    fifo = tmp_path / "jobs.fifo"
    os.mkfifo(fifo)
    proc = cli("check", "-c", config(tmp_path, f"sources:\n  - type: file\n    path: {fifo}\n"), timeout=20)
    assert_refused(proc, 2, f"{fifo}:1: cannot read the job file: not a regular file (a FIFO)")


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("source", ["{type: file}", "{type: file, path: ''}", "{type: file, path: [x]}"])
def test_a_file_source_without_a_usable_path(tmp_path: Path, command: str, source: str) -> None:
    """`sources: [{type: file}]` with no, an empty or a non-string path: exit 2 from check and run, located."""
    proc = cli(command, "-c", config(tmp_path, f"sources:\n  - {source}\n"))
    assert_refused(proc, 2, ":9: sources[0]")


def test_an_unclosed_variable_is_not_the_key(tmp_path: Path) -> None:
    """`api_key: ${SENDGRID_API_KEY` (no closing brace) fails check instead of becoming the key."""
    path = tmp_path / "c.yaml"
    path.write_text("sendgrid:\n  api_key: ${SENDGRID_API_KEY\n", encoding="utf-8")
    proc = cli("check", "-c", str(path), env={"SENDGRID_API_KEY": "SG.from-env"})
    assert_refused(proc, 2, f"{path}:2: sendgrid.api_key: malformed ${{...}}")


def test_a_numeric_job_id_gets_a_hint(tmp_path: Path) -> None:
    """`- 12345` in a job file is refused with a hint to quote it."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  - 12345\n", encoding="utf-8")
    proc = cli("check", "-c", config(tmp_path, f"sources:\n  - type: file\n    path: {jobs}\n"))
    assert_refused(proc, 2, f"{jobs}:2: jobs[0]: a job id must be a string, got the number 12345: quote it")


def test_a_short_token_off_loopback_fails_check(tmp_path: Path) -> None:
    """A one-character token on 0.0.0.0 does not pass `check`."""
    proc = cli("check", "-c", config(tmp_path, "server:\n  listen: 0.0.0.0:8080\n  token: x\n"))
    assert_refused(proc, 2, "server.token: must be at least 32 characters")


@pytest.mark.parametrize(("url", "fragment"), [("http://api.example.com", "https"), ("https://api.example.com/v3", "/v3")])
def test_an_unsafe_base_url_fails_check(tmp_path: Path, url: str, fragment: str) -> None:
    """Plain http off loopback (the key in clear) and a doubled /v3 are refused by `check`."""
    proc = cli("check", "-c", config(tmp_path, sendgrid=f"  base_url: {url}\n"))
    assert_refused(proc, 2, "sendgrid.base_url")
    assert fragment in proc.stderr


@pytest.mark.parametrize("command", ["status", "add"])
def test_an_invalid_id_is_exit_2(tmp_path: Path, command: str) -> None:
    """`status ../x` says the id is invalid (exit 2), like `add ../x`."""
    assert_refused(cli(command, "-c", config(tmp_path), "../x"), 2, "invalid job id '../x'")


def test_a_label_that_is_not_text(tmp_path: Path) -> None:
    """A label from bytes that are not UTF-8 (a lone surrogate once decoded) is exit 2, nothing stored."""
    proc = subprocess.run(
        [os.fsencode(SCRIPT), b"add", b"-c", os.fsencode(config(tmp_path)), b"j1", b"--label", b"k=\xff"],
        capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert (2, False) == (proc.returncode, "Traceback" in err)
    assert "labels must be valid Unicode text" in err


def test_add_against_memory_refuses(tmp_path: Path) -> None:
    """`add` with `state.url: memory://` refuses instead of saying "now watching" and keeping nothing."""
    proc = cli("add", "-c", config(tmp_path, state="memory://"), "j1")
    assert "" == proc.stdout
    assert_refused(proc, 2, "nothing `add` stores would be kept")


@pytest.mark.parametrize("command", [["status"], ["add", "j1"], ["run"]])
def test_a_corrupt_state_file_is_one_line(tmp_path: Path, command: list[str]) -> None:
    """A state file that is not SQLite: one clear line and exit 1 from status, add and run."""
    (tmp_path / "state.db").write_bytes(b"this is not a database, just text\n" * 200)
    proc = cli(command[0], "-c", config(tmp_path), *command[1:])
    assert_refused(proc, 1, "state")


@pytest.mark.parametrize("command", [["status"], ["add", "j1"], ["run"]])
def test_a_state_url_that_is_not_redis_is_one_line(tmp_path: Path, command: list[str], not_redis: int) -> None:
    """`state.url` naming a port that is not Redis: one clear line and exit 1, never a traceback or a hang."""
    proc = cli(command[0], "-c", config(tmp_path, state=f"redis://127.0.0.1:{not_redis}/0"), *command[1:])
    line = assert_refused(proc, 1, "state")
    assert str(not_redis) in line


def test_healthcheck_after_a_failed_start_is_unhealthy(tmp_path: Path) -> None:
    """`run` that failed to start leaves `healthcheck` unhealthy (exit 1)."""
    (tmp_path / "state.db").write_bytes(b"garbage\n" * 500)
    path = config(tmp_path)
    assert 1 == cli("run", "-c", path).returncode
    assert_refused(cli("healthcheck", "-c", path), 1, "unhealthy: no heartbeat")


def test_notify_test_hides_passwords_and_respects_the_log_level(tmp_path: Path) -> None:
    """notify-test never prints a URL's password, logs to stderr at `info`, and nothing below `warning` there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    body = (f"notifiers:\n  hook:\n    type: webhook\n    url: http://ops:{CANARY}@127.0.0.1:{port}/hook\n"
            "    timeout: 2s\n")
    path = Path(config(tmp_path, body))
    text = path.read_text()
    path.write_text(text.replace("level: error", "level: warning"))
    quiet = cli("notify-test", "-c", str(path))
    assert (1, ["hook: FAILED"], "") == (quiet.returncode, [ln[:12] for ln in quiet.stdout.splitlines()], quiet.stderr)
    path.write_text(text.replace("level: error", "level: info"))
    loud = cli("notify-test", "-c", str(path))
    assert (1, False, False) == (loud.returncode, CANARY in loud.stdout + loud.stderr, "Traceback" in loud.stderr)
    assert "notify.webhook_failed" in loud.stderr
    assert "hook: FAILED: " in loud.stdout


def test_fake_sendgrid_that_cannot_listen_is_one_line() -> None:
    """`fake-sendgrid` on a port in use, an address not of this machine, or a port out of range: one line."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert_refused(cli("fake-sendgrid", "--port", port, timeout=10), 1,
                       f"cannot listen on 127.0.0.1 port {port}: Address already in use")
    assert_refused(cli("fake-sendgrid", "--host", "192.0.2.1", "--port", "0", timeout=10), 1,
                   "cannot listen on 192.0.2.1 port 0: Cannot assign requested address")
    for port in ("99999", "-1"):
        assert_refused(cli("fake-sendgrid", "--port", port, timeout=10), 2,
                       f"--port {port}: expected a port number from 0 (any free one) to 65535")
