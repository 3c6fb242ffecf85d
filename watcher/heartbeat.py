"""The heartbeat file `import-watcher healthcheck` reads: one JSON line, rewritten every 5 s.

Written only once the daemon is fully started, and removed at a clean exit, so a daemon
that failed to start or has stopped is never reported healthy. Without
`heartbeat_file`, it lives in a private directory ($XDG_RUNTIME_DIR, or
<tempdir>/import-watcher-<uid>, mode 0700) that must not be a symlink nor someone
else's; every write goes to a new temp file (O_EXCL|O_NOFOLLOW) renamed over the old
one, so nobody can make us write through a link they planted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import structlog

log = structlog.get_logger("watcher.heartbeat")

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_STALE = 30.0
#: A heartbeat file bigger than this is not ours.
MAX_BYTES = 64 * 1024


class HasHeartbeatSettings(Protocol):
    @property
    def heartbeat_file(self) -> Path | None: ...

    @property
    def path(self) -> Path | None: ...


def heartbeat_path(config: HasHeartbeatSettings) -> Path:
    """Where this config's daemon writes its heartbeat: `heartbeat_file`, or a file per config
    in the private directory."""
    if config.heartbeat_file is not None:
        return config.heartbeat_file
    key = hashlib.sha256(str(config.path or "default").encode()).hexdigest()[:12]
    return _private_dir() / f"heartbeat-{key}.json"


def _private_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute():
        return Path(runtime) / "import-watcher"
    return Path(tempfile.gettempdir()) / f"import-watcher-{os.getuid()}"


def _ensure_private(directory: Path) -> None:
    """Create the directory 0700, or refuse one that is a symlink, not ours, or open to others."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=False)
    info = directory.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{directory} is not a plain directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"{directory} belongs to another user")
    if info.st_mode & 0o077:
        raise PermissionError(f"{directory} is open to other users (expected mode 0700)")


def write_heartbeat(path: Path, *, owner: str, healthy: bool, reason: str | None) -> None:
    """Replace the heartbeat atomically with one JSON line; OSError when it cannot be written."""
    directory = path.parent
    if directory == _private_dir():
        _ensure_private(directory)
    else:
        directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"at": round(time.time(), 3), "owner": owner, "healthy": healthy, "reason": reason})
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def beat(path: Path, *, owner: str, reason: str | None) -> None:
    """The daemon's periodic write: healthy when `reason` is None; a failed write is logged, and
    `healthcheck` then sees the heartbeat go stale."""
    try:
        write_heartbeat(path, owner=owner, healthy=reason is None, reason=reason)
    except OSError as exc:
        log.warning("daemon.heartbeat_failed", path=str(path), error=str(exc))


def remove_heartbeat(path: Path) -> None:
    """A clean exit: nothing left for `healthcheck` to call fresh."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_heartbeat(path: Path) -> dict[str, Any]:
    """The last heartbeat (no links followed); OSError or ValueError when there is none usable."""
    # O_NONBLOCK and a regular-file check: a FIFO or a device at a configured heartbeat_file must
    # not hang `healthcheck` (a Docker HEALTHCHECK that hangs is killed, not answered).
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("heartbeat file is not a regular file")
        raw = source.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ValueError("heartbeat file is too big")
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("at"), int | float):
        raise ValueError("heartbeat file holds no time")
    return data


def check_health(config: HasHeartbeatSettings, *, now: float | None = None) -> tuple[bool, str]:
    """(healthy, why) from the daemon's heartbeat: unhealthy when missing, stale or reported unhealthy."""
    path = heartbeat_path(config)
    try:
        if path.parent == _private_dir() and path.parent.exists():
            _ensure_private(path.parent)  # a planted directory could hold a planted heartbeat
        beat = read_heartbeat(path)
    except FileNotFoundError:
        return False, f"no heartbeat at {path} (the daemon is not running or has not started)"
    except (OSError, ValueError) as exc:
        return False, f"unreadable heartbeat at {path}: {exc}"
    age = (time.time() if now is None else now) - float(beat["at"])
    if age > HEARTBEAT_STALE:
        return False, f"last heartbeat {age:.0f}s ago (stale after {HEARTBEAT_STALE:.0f}s)"
    if beat.get("healthy") is not True:
        return False, f"daemon reports: {beat.get('reason') or 'unhealthy'}"
    return True, f"last heartbeat {max(age, 0.0):.1f}s ago"
