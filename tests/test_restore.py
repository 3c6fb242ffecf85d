"""Restore against the bundled fake SendGrid: contacts round-trip through a backup; altered backups are refused."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import config_text, eventually, make_config
from watcher.accounts import Accounts
from watcher.backup_dirs import MANIFEST
from watcher.backup_restore import restore
from watcher.backups import run_backup
from watcher.clock import SystemClock
from watcher.config import Config
from watcher.lifecycle import Lifecycle
from watcher.models import JobKind
from watcher.store import SqliteStore
from watcher.testing.fake_sendgrid import FakeSendGrid

CONTACTS = [
    {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "custom_fields": {"e1_T": "green"}},
    {"email": "alan@example.com", "first_name": "Alan", "city": "Wilmslow"},
    {"email": "grace@example.com", "first_name": "Grace", "country": "US", "custom_fields": {"e2_N": "42"}},
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSendGrid]:
    async with FakeSendGrid() as fake:
        fake.set_lifecycle(export_seconds=0.05, import_seconds=0.05)
        fake.add_contacts(CONTACTS)
        yield fake


def restore_config(tmp_path: Path, base_url: str, file_type: str = "csv") -> Config:
    extra = f"""\
    backups:
      - name: nightly
        schedule: "30 2 * * *"
        destination: {tmp_path / "backups"}
        file_type: {file_type}
    """
    return make_config(tmp_path, config_text(base_url, f"sqlite:///{tmp_path}/state.db", extra=extra))


async def backup(config: Config) -> Path:
    """Take the configured backup now; its directory."""
    clock, store = SystemClock(), SqliteStore(str(config.state.url).removeprefix("sqlite:///"))
    await store.open()
    try:
        async with Accounts.open(config, clock=clock, store=store) as accounts:
            account = accounts.get(None)
            result = await run_backup(config.backups[0], account=account, lifecycle=Lifecycle(account, clock=clock),
                                      clock=clock, store=store, recipients={}, policy=config.polling)
    finally:
        await store.close()
    assert result.path is not None, result.reason
    return result.path


def contacts(fake: FakeSendGrid) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """The fake's contacts by e-mail: (reserved fields, custom fields)."""
    return {c.fields["email"]: (dict(c.fields), dict(c.custom)) for c in fake.contacts.snapshot(fake.clock.now())}


async def test_a_restore_brings_back_the_contacts_of_a_backup(
    tmp_path: Path, fake: FakeSendGrid, capsys: pytest.CaptureFixture[str]
) -> None:
    """Contacts -> backup -> every contact deleted -> restore --wait: the same contacts, reserved and
    custom fields alike, imported as one batch of tracked import jobs in the backup's account."""
    config = restore_config(tmp_path, fake.base_url)
    before = contacts(fake)
    path = await backup(config)
    fake.contacts.delete(fake.clock.now(), None)
    assert {} == contacts(fake)
    assert 0 == await restore(config, path, wait=True)  # --wait: exit 0 once every import completed
    await eventually(lambda: contacts(fake) == before, timeout=5, what="the restored contacts")
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    try:
        jobs = [j for j in await store.list_jobs() if j.batch == f"restore:nightly:{path.name}"]
    finally:
        await store.close()
    assert [(JobKind.IMPORT, "default")] == [(j.kind, j.account) for j in jobs]
    assert f"as batch restore:nightly:{path.name}" in capsys.readouterr().out


@pytest.mark.parametrize(("damage", "expected"), [
    ("altered", "does not match its manifest"),
    ("missing", "missing or unreadable"),
    ("longer", "does not match its manifest"),
    ("fifo", "is not a regular file"),  # opening it would wait for a writer forever
    ("dev_zero", "is a symbolic link"),  # reading it would never end
    ("symlink", "is a symbolic link"),  # to a file with the same bytes: still not the backup's own file
])
async def test_a_damaged_backup_is_refused_before_anything_is_sent(
    tmp_path: Path, fake: FakeSendGrid, capsys: pytest.CaptureFixture[str], damage: str, expected: str
) -> None:
    """An altered byte, a missing or longer file, a FIFO, a symlink: one clear line at once, exit 1, and
    not one import request."""
    config = restore_config(tmp_path, fake.base_url)
    path = await backup(config)
    [victim] = [p for p in path.iterdir() if p.name != MANIFEST]
    data = victim.read_bytes()
    if damage == "altered":
        victim.write_bytes(data[:-5] + bytes([data[-5] ^ 0x01]) + data[-4:])
    elif damage == "longer":
        victim.write_bytes(data + b"\0" * 10)
    else:
        victim.unlink()
        if damage == "fifo":
            os.mkfifo(victim)
        elif damage == "dev_zero":
            victim.symlink_to("/dev/zero")
        elif damage == "symlink":
            (tmp_path / "elsewhere.csv.gz").write_bytes(data)
            victim.symlink_to(tmp_path / "elsewhere.csv.gz")
    capsys.readouterr()
    started = time.monotonic()
    assert 1 == await restore(config, path)
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert err.startswith("import-watcher: refusing to restore: ") and expected in err and err.count("\n") == 1
    assert not any("imports" in route for route in fake.requests_by_route), fake.requests_by_route


async def test_a_json_backup_is_not_restored(
    tmp_path: Path, fake: FakeSendGrid, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON backup is refused with the reason and what to do instead (exit 2)."""
    config = restore_config(tmp_path, fake.base_url, file_type="json")
    path = await backup(config)
    assert 2 == await restore(config, path)
    assert "restore imports CSV only (take backups with file_type: csv)" in capsys.readouterr().err


async def test_a_directory_that_is_no_backup_is_refused(
    tmp_path: Path, fake: FakeSendGrid, capsys: pytest.CaptureFixture[str]
) -> None:
    """No manifest (or a manifest naming files outside the backup): refused in one line."""
    config = restore_config(tmp_path, fake.base_url)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / MANIFEST).write_text('{"backup": "x", "export_id": "e", "account": "default", '
                                                   '"created_at": "", "files": [{"name": "../../etc/passwd", '
                                                   '"bytes": 1, "sha256": "0"}]}')
    for directory in (tmp_path, tmp_path / "elsewhere"):
        assert 1 == await restore(config, directory)
    lines: Any = capsys.readouterr().err.splitlines()
    assert 2 == len(lines) and "no readable manifest.json" in lines[0] and "unexpected file name" in lines[1]
