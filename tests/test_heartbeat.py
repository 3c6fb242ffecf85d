"""The heartbeat `healthcheck` reads: private, never written through links, honest about readiness."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import config_text, eventually, make_config
from watcher.config import Config
from watcher.daemon import Daemon
from watcher.errors import WatcherError
from watcher.heartbeat import HEARTBEAT_STALE, check_health, heartbeat_path, write_heartbeat
from watcher.testing.fake_sendgrid import FakeSendGrid


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An XDG_RUNTIME_DIR of our own, so the default heartbeat location is under the test's control."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def default_config(tmp_path: Path) -> Config:
    return make_config(tmp_path, config_text("https://api.sendgrid.com", "memory://"))


def test_the_default_heartbeat_lives_in_a_private_directory(tmp_path: Path, runtime_dir: Path) -> None:
    """Without heartbeat_file the path is per config, in a 0700 directory created on first write."""
    config = default_config(tmp_path)
    path = heartbeat_path(config)
    assert runtime_dir / "import-watcher" == path.parent
    write_heartbeat(path, owner="me", healthy=True, reason=None)
    assert 0o700 == path.parent.stat().st_mode & 0o777
    assert 0o600 == path.stat().st_mode & 0o777
    assert (True, "last heartbeat") == (check_health(config)[0], check_health(config)[1][:14])


def test_a_planted_symlink_directory_is_refused(tmp_path: Path, runtime_dir: Path) -> None:
    """A symlink where the private directory belongs is neither written through nor believed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (runtime_dir / "import-watcher").symlink_to(elsewhere)
    config = default_config(tmp_path)
    with pytest.raises(PermissionError):
        write_heartbeat(heartbeat_path(config), owner="me", healthy=True, reason=None)
    (elsewhere / heartbeat_path(config).name).write_text(json.dumps({"at": time.time(), "healthy": True}))
    assert False is check_health(config)[0]
    assert [] == [p.name for p in elsewhere.iterdir() if p.name.endswith(".tmp")]


def test_a_symlink_at_the_heartbeat_path_is_replaced_not_followed(tmp_path: Path) -> None:
    """Writing replaces a link planted at the file's own path; the link's target is never touched."""
    target = tmp_path / "victim.txt"
    target.write_text("keep me", encoding="utf-8")
    path = tmp_path / "hb.json"
    path.symlink_to(target)
    write_heartbeat(path, owner="me", healthy=True, reason=None)
    assert ("keep me", False) == (target.read_text(encoding="utf-8"), path.is_symlink())


@pytest.mark.parametrize(
    ("beat", "healthy", "says"),
    [
        (None, False, "no heartbeat"),
        ({"at": -HEARTBEAT_STALE - 5, "healthy": True}, False, "stale"),
        ({"at": 0, "healthy": False, "reason": "state store unavailable"}, False, "state store unavailable"),
        ({"at": 0, "healthy": True, "reason": None}, True, "last heartbeat"),
    ],
)
def test_check_health_judges_presence_age_and_the_reported_state(
    tmp_path: Path, beat: dict[str, object] | None, healthy: bool, says: str
) -> None:
    """Missing, stale (over 30 s) or healthy=false is unhealthy, with the reason in the message."""
    path = tmp_path / "hb.json"
    config = make_config(tmp_path, config_text("https://api.sendgrid.com", "memory://", extra=f"heartbeat_file: {path}\n"))
    if beat is not None:
        path.write_text(json.dumps({**beat, "at": time.time() + float(beat["at"])}), encoding="utf-8")  # type: ignore[arg-type]
    ok, message = check_health(config)
    assert (healthy, True) == (ok, says in message), message


async def test_the_daemon_beats_while_it_runs_and_removes_it_at_a_clean_exit(tmp_path: Path) -> None:
    """A healthy heartbeat naming the daemon while it runs; none after a clean stop."""
    path = tmp_path / "hb.json"
    async with FakeSendGrid() as fake:
        config = make_config(tmp_path, config_text(fake.base_url, "memory://", extra=f"heartbeat_file: {path}\n"))
        daemon = Daemon(config)
        running = asyncio.create_task(daemon.run(install_signals=False))
        await eventually(path.exists, timeout=10, what="the first heartbeat")
        assert (True, daemon.owner) == (check_health(config)[0], json.loads(path.read_text())["owner"])
        daemon.stop()
        assert 0 == await asyncio.wait_for(running, 10)
    assert not path.exists()


async def test_a_daemon_that_fails_to_start_leaves_no_heartbeat(tmp_path: Path) -> None:
    """The API port is taken, so `run` fails; healthcheck must not find a heartbeat to call fresh."""
    path = tmp_path / "hb.json"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with FakeSendGrid() as fake:
            config = make_config(tmp_path, config_text(
                fake.base_url, "memory://", extra=f"heartbeat_file: {path}\nserver:\n  listen: 127.0.0.1:{port}\n",
            ))
            with pytest.raises(WatcherError, match="cannot listen"):
                await asyncio.wait_for(Daemon(config).run(install_signals=False), 10)
    assert (False, False) == (path.exists(), check_health(config)[0])


def test_a_fifo_as_heartbeat_file_is_unhealthy_at_once(tmp_path: Path) -> None:
    """A FIFO at heartbeat_file answers "unhealthy" at once instead of hanging the healthcheck."""
    fifo = tmp_path / "hb"
    os.mkfifo(fifo)
    ok, why = check_health(SimpleNamespace(heartbeat_file=fifo, path=None))
    assert (False, True) == (ok, "regular file" in why or "no heartbeat" in why), why
