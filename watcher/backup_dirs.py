"""A backup's place on disk: dated directories, the manifest, verification and rotation.

Layout: `<destination>/<name>/<UTC timestamp>/` holds the export's files and `manifest.json`;
a backup being written is `<destination>/<name>/.<UTC timestamp>.<random>.tmp/` (unique: two runs of the
same second never share one), renamed when complete.
Invariant: a directory named by a timestamp (no leading dot) is a complete backup; only the final
rename creates one, so a crash or a full disk leaves a hidden temporary directory, never a half
backup that looks complete.

A backup directory is read as untrusted (it may have been tampered with): a listed file is opened
without following a symlink and without blocking, must be a regular file, and is read no further
than its listed size plus one byte.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.strictjson import strict_json

MANIFEST = "manifest.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
#: A run's temporary directory: `.<stamp>.<mkdtemp's random part>.tmp` (older runs: `.<stamp>.tmp`).
TMP = re.compile(r"\.([0-9]{8}T[0-9]{6}Z)(?:\.[A-Za-z0-9_]+)?\.tmp")
#: Files in a backup are named by the watcher, so a manifest naming anything else is not ours.
FILE_NAME = re.compile(r"contacts-[0-9]{3}\.(csv|json)(\.gz)?")
#: A manifest is a few hundred bytes per file; anything far larger is not one.
MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 20


def stamp(ts: float) -> str:
    """A backup directory's name: its UTC time, sortable as text."""
    return datetime.fromtimestamp(ts, UTC).strftime(STAMP_FORMAT)


def stamp_time(name: str) -> float | None:
    """The time a directory name stands for; None when it is no real time (`20261399T000000Z`)."""
    try:
        return datetime.strptime(name, STAMP_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def make_tmp_dir(directory: Path, run: str) -> Path:
    """A new temporary directory for run `run` under `directory` (created), unique to the caller."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{run}.", suffix=".tmp", dir=directory))


@dataclass(frozen=True, slots=True)
class BackupFile:
    """One file of a backup as its manifest lists it."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """`manifest.json`: DESIGN.md's shape."""

    backup: str
    export_id: str
    account: str
    created_at: str
    contact_count: int | None
    files: tuple[BackupFile, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup": self.backup, "export_id": self.export_id, "account": self.account,
            "created_at": self.created_at, "contact_count": self.contact_count,
            "files": [{"name": f.name, "bytes": f.bytes, "sha256": f.sha256} for f in self.files],
        }

    @property
    def size(self) -> int:
        return sum(f.bytes for f in self.files)


class BadBackup(Exception):
    """A backup directory that cannot be trusted: no or unreadable manifest, a missing or altered file."""


def write_manifest(directory: Path, manifest: Manifest) -> str:
    """Write and fsync `manifest.json`; its SHA-256."""
    body = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()
    path = directory / MANIFEST
    with path.open("wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    return hashlib.sha256(body).hexdigest()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(directory: Path) -> Manifest:
    """The manifest of a backup directory (BadBackup when it is missing or not one)."""
    path = directory / MANIFEST
    try:
        with path.open("rb") as source:
            raw = source.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BadBackup(f"{directory}: no readable {MANIFEST} ({exc.strerror or exc})") from None
    try:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        return _manifest(strict_json(raw))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise BadBackup(f"{directory}: {MANIFEST} is not a backup manifest ({exc})") from None


def _manifest(data: Any) -> Manifest:
    if not isinstance(data, Mapping) or not isinstance(data["files"], list):
        raise ValueError("expected an object with files")
    files = []
    for item in data["files"]:
        name, size, digest = item["name"], item["bytes"], item["sha256"]
        if not (isinstance(name, str) and FILE_NAME.fullmatch(name)):
            raise ValueError(f"unexpected file name {name!r}")
        if isinstance(size, bool) or not isinstance(size, int) or not isinstance(digest, str):
            raise ValueError(f"bad entry for {name}")
        files.append(BackupFile(name, size, digest))
    count = data.get("contact_count")
    return Manifest(str(data["backup"]), str(data["export_id"]), str(data["account"]), str(data["created_at"]),
                    count if isinstance(count, int) and not isinstance(count, bool) else None, tuple(files))


def file_sha256(path: Path, *, max_bytes: int) -> tuple[int, str]:
    """Bytes and SHA-256 of the regular file at `path` (not through a symlink), reading at most
    `max_bytes`; BadBackup when it is anything else (a FIFO, a device, a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadBackup(f"{path}: is a symbolic link, not a file the backup wrote") from None
        raise
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadBackup(f"{path}: is not a regular file")
        digest, size = hashlib.sha256(), 0
        while size < max_bytes and (chunk := source.read(min(_CHUNK, max_bytes - size))):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def verify(directory: Path) -> Manifest:
    """The manifest, once every file it lists is present with its size and SHA-256 (BadBackup otherwise)."""
    manifest = read_manifest(directory)
    for item in manifest.files:
        path = directory / item.name
        try:
            size, digest = file_sha256(path, max_bytes=item.bytes + 1)  # one more tells a longer file
        except OSError as exc:
            raise BadBackup(f"{path}: missing or unreadable ({exc.strerror or exc})") from None
        if (size, digest) != (item.bytes, item.sha256):
            raise BadBackup(f"{path}: does not match its manifest (sha256 {digest[:12]}..., expected "
                            f"{item.sha256[:12]}...; {size} bytes, expected {item.bytes})")
    return manifest


def complete_backups(directory: Path) -> list[Path]:
    """The complete backups under one backup's directory, oldest first."""
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [p for p in entries if STAMP.fullmatch(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)


def rotate(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete backups; the ones deleted."""
    gone = complete_backups(directory)[:-keep] if keep > 0 else []
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def remove_stale(directory: Path, *, now: float, older_than: float, running: Collection[Path] = ()) -> list[Path]:
    """Delete temporary directories left by runs that started over `older_than` seconds before `now`
    (a crash, a kill); a running backup's (`running`) is never touched."""
    try:
        entries: Sequence[Path] = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    gone = []
    for path in entries:
        match = TMP.fullmatch(path.name)
        started = stamp_time(match.group(1)) if match else None  # a name that is no time is not ours
        if started is not None and path not in running and now - started > older_than:
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def discard(path: Path) -> None:
    """Remove a temporary directory, whatever is left in it."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        shutil.rmtree(path)
