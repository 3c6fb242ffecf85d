"""Backups against the bundled fake SendGrid: files, manifest and checksums, failures, expiring URLs, rotation, a full disk."""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.helpers import config_text, fill, make_config, mounted_tmpfs, serve_app
from watcher import backup_dirs
from watcher.accounts import Accounts
from watcher.backup_dirs import MANIFEST, complete_backups, stamp, verify
from watcher.backups import BackupResult, run_backup
from watcher.backups_config import BackupSettings
from watcher.clock import SystemClock
from watcher.config import Config
from watcher.lifecycle import Lifecycle
from watcher.store import SqliteStore
from watcher.testing.fake_sendgrid import FakeSendGrid

CONTACTS = [
    {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"},
    {"email": "alan@example.com", "first_name": "Alan", "city": "Wilmslow"},
    {"email": "grace@example.com", "first_name": "Grace", "country": "US"},
]
T0 = 1_800_000_000.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeSendGrid]:
    async with FakeSendGrid() as fake:
        fake.set_lifecycle(export_seconds=0.05, import_seconds=0.05)
        fake.add_contacts(CONTACTS)
        yield fake


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(str(tmp_path / "state.db"))
    await opened.open()
    yield opened
    await opened.close()


def backup_config(tmp_path: Path, base_url: str, destination: Path, *, keep: int = 3, file_type: str = "csv") -> Config:
    extra = f"""\
    backups:
      - name: nightly
        schedule: "30 2 * * *"
        destination: {destination}
        keep: {keep}
        file_type: {file_type}
        notify: [hook]
    """
    text = config_text(base_url, f"sqlite:///{tmp_path}/state.db", hook_url="https://hooks.example.com/x", extra=extra)
    return make_config(tmp_path, text)


Take = Callable[..., Awaitable[BackupResult]]


@pytest.fixture
def take(store: SqliteStore) -> Take:
    """Run one backup of the config's first entry, as the CLI and the schedule do."""

    async def run(config: Config, *, now: float | None = None, clock: Any = None,
                  settings: BackupSettings | None = None, **options: Any) -> BackupResult:
        clock = clock or SystemClock()
        chosen = settings or config.backups[0]
        async with Accounts.open(config, clock=clock, store=store) as accounts:
            account = accounts.get(chosen.account)
            return await run_backup(chosen, account=account, lifecycle=Lifecycle(account, clock=clock), clock=clock,
                                    store=store, recipients={n.name: n for n in config.notifiers}, now=now,
                                    policy=config.polling, **options)

    return run


def rows_of(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


async def test_a_ready_export_becomes_files_and_a_manifest_with_checksums(
    tmp_path: Path, fake: FakeSendGrid, store: SqliteStore, take: Take
) -> None:
    """Each export file is kept as downloaded (gzip) with its size and SHA-256 in manifest.json, the
    directory is named by the UTC time, and backup.succeeded is queued with the manifest's SHA-256."""
    fake.set_lifecycle(export_file_bytes=60)  # split into several files
    config = backup_config(tmp_path, fake.base_url, tmp_path / "backups")
    result = await take(config, now=T0)
    assert result.reason is None
    path = tmp_path / "backups" / "nightly" / stamp(T0)
    assert path == result.path and [path] == complete_backups(tmp_path / "backups" / "nightly")
    manifest = json.loads((path / MANIFEST).read_text())
    assert ["account", "backup", "contact_count", "created_at", "export_id", "files"] == sorted(manifest)
    assert ("nightly", "default", 3, "2027-01-15T08:00:00Z") == (
        manifest["backup"], manifest["account"], manifest["contact_count"], manifest["created_at"])
    assert len(manifest["files"]) > 1
    emails = []
    for item in manifest["files"]:
        data = (path / item["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (item["bytes"], item["sha256"])
        emails += [row["EMAIL"] for row in csv.DictReader(rows_of(path / item["name"]))]
    assert sorted(c["email"] for c in CONTACTS) == sorted(emails)
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST, *(f["name"] for f in manifest["files"])])
    [delivery] = await store.list_deliveries()
    data = delivery.event["data"]
    assert ("hook", "backup.succeeded") == (delivery.notifier, delivery.event_type)
    size = sum(f["bytes"] for f in manifest["files"])
    assert {"backup": "nightly", "path": str(path), "files": len(manifest["files"]), "bytes": size,
            "contact_count": 3, "sha256": hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()} == data
    assert manifest["export_id"] in fake.exports.exports


async def test_a_failed_export_leaves_no_backup_and_says_why(
    tmp_path: Path, fake: FakeSendGrid, store: SqliteStore, take: Take
) -> None:
    """An export that ends in `failure` gives backup.failed with SendGrid's message and no directory."""
    fake.set_lifecycle(export_outcome="failure", export_message="export failed: too many exports")
    config = backup_config(tmp_path, fake.base_url, tmp_path / "backups")
    result = await take(config, now=T0)
    assert result.path is None and result.reason is not None
    assert "export failed: too many exports" in result.reason
    assert not (tmp_path / "backups" / "nightly").exists() or not any((tmp_path / "backups" / "nightly").iterdir())
    [delivery] = await store.list_deliveries()
    assert ("backup.failed", {"backup": "nightly", "reason": result.reason}) == (delivery.event_type,
                                                                                 delivery.event["data"])


async def test_expired_download_urls_are_asked_for_again(tmp_path: Path, store: SqliteStore, take: Take) -> None:
    """A download URL answering S3's 403 "Request has expired" is replaced by re-reading the export,
    whose answer carries fresh URLs, and the backup completes."""
    body = gzip.compress(b"EMAIL,FIRST_NAME\nada@example.com,Ada\n")
    reads: list[int] = []

    async def start(request: web.Request) -> web.Response:
        return web.json_response({"id": "exp-1", "_metadata": {}}, status=202)

    async def status(request: web.Request) -> web.Response:
        reads.append(1)
        base = f"http://{request.host}"
        return web.json_response({"id": "exp-1", "status": "ready", "created_at": "2027-01-15T08:00:00Z",
                                  "updated_at": "2027-01-15T08:00:01Z", "expires_at": "2027-01-18T08:00:00Z",
                                  "contact_count": 1, "urls": [f"{base}/file.csv.gz?sig={len(reads)}"]})

    async def download(request: web.Request) -> web.Response:
        if request.query["sig"] == "1":
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code>"
                                                 "<Message>Request has expired</Message></Error>")
        return web.Response(body=body, content_type="application/gzip")

    app = web.Application()
    app.add_routes([web.post("/v3/marketing/contacts/exports", start),
                    web.get("/v3/marketing/contacts/exports/{id}", status), web.get("/file.csv.gz", download)])
    runner, port = await serve_app(app)
    try:
        result = await take(backup_config(tmp_path, f"http://127.0.0.1:{port}", tmp_path / "backups"), now=T0)
    finally:
        await runner.cleanup()
    assert result.reason is None and result.manifest is not None
    assert 2 == len(reads)
    assert body == (tmp_path / "backups" / "nightly" / stamp(T0) / "contacts-001.csv.gz").read_bytes()


async def test_rotation_keeps_the_newest_and_only_stale_temporary_directories_go(
    tmp_path: Path, fake: FakeSendGrid, take: Take
) -> None:
    """With keep: 2, the third backup removes the oldest; a crashed run's temporary directory older
    than the export deadline plus a day is removed, a recent one is left alone."""
    config = backup_config(tmp_path, fake.base_url, tmp_path / "backups", keep=2)
    home = tmp_path / "backups" / "nightly"
    home.mkdir(parents=True)
    stale, recent = home / f".{stamp(T0 - 3 * 86400)}.tmp", home / f".{stamp(T0 - 600)}.tmp"
    stale.mkdir()
    recent.mkdir()
    results = [await take(config, now=T0 + i * 3600) for i in range(3)]
    assert [None, None, None] == [r.reason for r in results]
    assert [home / stamp(T0 + 3600), home / stamp(T0 + 7200)] == complete_backups(home)
    assert (home / stamp(T0),) == results[2].removed
    assert not stale.exists() and recent.exists()
    for path in complete_backups(home):
        verify(path)


async def test_a_full_disk_fails_the_backup_and_leaves_nothing_half_written(
    tmp_path: Path, fake: FakeSendGrid, store: SqliteStore, take: Take
) -> None:
    """No space left: backup.failed saying so at once (a full disk is no network failure: the download is
    not tried again), the temporary directory removed, no backup directory."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        config = backup_config(tmp_path, fake.base_url, disk)
        (disk / "nightly").mkdir()
        filler = fill(disk)
        try:
            started = time.monotonic()
            result = await take(config, now=T0)  # the real clock: a retry would wait a second or more
            assert result.reason is not None and result.path is None
            assert time.monotonic() - started < 1.0
            assert [] == [p.name for p in (disk / "nightly").iterdir()]
        finally:
            os.unlink(filler)
    assert 1 == fake.requests_by_route["GET /_exports/{id}/{name}"]
    [delivery] = await store.list_deliveries()
    assert "backup.failed" == delivery.event_type
    reason = delivery.event["data"]["reason"]
    assert "cannot write " in reason and "No space left on device (disk full)" in reason and "\n" not in reason


async def test_a_destination_that_cannot_be_written_fails_the_backup(
    tmp_path: Path, fake: FakeSendGrid, store: SqliteStore, take: Take
) -> None:
    """A destination that is a file, not a directory: backup.failed saying it cannot write there."""
    (tmp_path / "backups").write_text("not a directory")
    result = await take(backup_config(tmp_path, fake.base_url, tmp_path / "backups"), now=T0)
    assert result.reason is not None and result.reason.startswith(f"cannot write {tmp_path / 'backups'}")
    [delivery] = await store.list_deliveries()
    assert ("backup.failed", result.reason) == (delivery.event_type, delivery.event["data"]["reason"])


async def test_two_backups_of_the_same_second_never_destroy_each_other(
    tmp_path: Path, fake: FakeSendGrid, store: SqliteStore
) -> None:
    """Run A is downloading when run B of the same second starts and completes: B is the backup, A fails
    saying so, and neither removed the other's files (each writes into a temporary directory of its own)."""
    config = backup_config(tmp_path, fake.base_url, tmp_path / "backups")
    clock = SystemClock()
    a_downloading, b_done = asyncio.Event(), asyncio.Event()

    class HeldLifecycle(Lifecycle):
        async def download(self, url: str, dest: Path, *, max_bytes: int | None = None) -> tuple[int, str]:
            a_downloading.set()
            await b_done.wait()
            return await super().download(url, dest, max_bytes=max_bytes)

    async with Accounts.open(config, clock=clock, store=store) as accounts:
        account = accounts.get(None)

        def run(lifecycle: Lifecycle) -> Awaitable[BackupResult]:
            return run_backup(config.backups[0], account=account, lifecycle=lifecycle, clock=clock, store=store,
                              recipients={n.name: n for n in config.notifiers}, now=T0, policy=config.polling)

        a = asyncio.create_task(run(HeldLifecycle(account, clock=clock)))
        await asyncio.wait_for(a_downloading.wait(), 10)
        b = await run(Lifecycle(account, clock=clock))
        b_done.set()
        a_result = await a
    home = tmp_path / "backups" / "nightly"
    assert (None, home / stamp(T0)) == (b.reason, b.path)
    assert a_result.reason is not None and "already exists (another backup of the same second)" in a_result.reason
    assert [stamp(T0)] == [p.name for p in home.iterdir()]  # A's temporary directory is gone, B's backup whole
    verify(home / stamp(T0))
    events = sorted(d.event_type for d in await store.list_deliveries())
    assert ["backup.failed", "backup.succeeded"] == events


async def test_odd_names_and_failing_housekeeping_never_cost_the_notification(
    tmp_path: Path, fake: FakeSendGrid, store: SqliteStore, take: Take, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary-looking directory whose name is no real time is left alone; rotation failing is
    logged: the backup is written and backup.succeeded queued either way."""
    config = backup_config(tmp_path, fake.base_url, tmp_path / "backups")
    home = tmp_path / "backups" / "nightly"
    # No real time, or not ASCII digits: not names this watcher gives; left alone.
    odd = [home / ".20261399T000000Z.tmp", home / ".20270115T080000Z.x-y.tmp", home / ".２０２００１０１T000000Z.tmp"]
    for path in odd:
        path.mkdir(parents=True)
    with capture_logs() as logs:
        first = await take(config, now=T0)
    assert first.reason is None and all(p.exists() for p in odd)
    assert [] == [e for e in logs if e["event"] == "backup.housekeeping_failed"]

    def broken(directory: Path, keep: int) -> list[Path]:
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(backup_dirs, "rotate", broken)
    with capture_logs() as logs:
        second = await take(config, now=T0 + 60)
    assert second.reason is None and second.path is not None and second.path.exists()
    assert ["backup.succeeded", "backup.succeeded"] == [d.event_type for d in await store.list_deliveries()]
    [warning] = [e for e in logs if e["event"] == "backup.housekeeping_failed"]
    assert ("rotate", "PermissionError") == (warning["step"], warning["error"].split(":")[0])


async def test_an_export_file_over_the_cap_fails_the_backup(
    tmp_path: Path, fake: FakeSendGrid, store: SqliteStore, take: Take
) -> None:
    """A file larger than the per-file cap (5 GB by default; 10 bytes here) fails the run, nothing kept."""
    result = await take(backup_config(tmp_path, fake.base_url, tmp_path / "backups"), now=T0, max_file_bytes=10)
    assert result.reason is not None and "is larger than 10 bytes, the most a backup downloads" in result.reason
    assert [] == list((tmp_path / "backups" / "nightly").iterdir())
