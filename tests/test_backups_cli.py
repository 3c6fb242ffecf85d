"""The backup, backups and restore commands, as a user runs them against the bundled fake SendGrid."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import config_text
from watcher.cli import main
from watcher.testing.fake_sendgrid import FakeSendGrid


@pytest.fixture
async def fake() -> AsyncIterator[FakeSendGrid]:
    async with FakeSendGrid() as fake:
        fake.set_lifecycle(export_seconds=0.05, import_seconds=0.05)
        fake.add_contacts([{"email": "ada@example.com", "first_name": "Ada"}, {"email": "alan@example.com"}])
        yield fake


def write_config(tmp_path: Path, base_url: str, names: tuple[str, ...] = ("nightly",)) -> str:
    entries = "".join(f"  - {{name: {n}, schedule: '0 3 * * *', destination: {tmp_path / 'b'}, keep: 2}}\n"
                      for n in names)
    path = tmp_path / "config.yaml"
    path.write_text(config_text(base_url, f"sqlite:///{tmp_path}/state.db") + "backups:\n" + entries)
    return str(path)


async def cli(*argv: str) -> int:
    """main() in a thread (it runs its own event loop) while the fake keeps serving on this one."""
    return await asyncio.to_thread(main, list(argv))


async def test_backup_then_backups_lists_it_verified(
    tmp_path: Path, fake: FakeSendGrid, capsys: pytest.CaptureFixture[str]
) -> None:
    """`backup` prints where the backup went and what it holds; `backups` lists it verified, and an
    altered file turns it into NOT VERIFIED with exit 1."""
    config = write_config(tmp_path, fake.base_url)
    assert 0 == await cli("backup", "-c", config, "--wait")
    out = capsys.readouterr().out
    assert out.startswith(f"backup nightly: {tmp_path / 'b' / 'nightly'}/") and "2 contacts" in out and "1 file;" in out
    assert 0 == await cli("backups", "-c", config)
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("nightly  ") and "2 contacts" in line and "  verified  " in line
    [backup] = (tmp_path / "b" / "nightly").iterdir()
    [data] = backup.glob("contacts-*")
    data.write_bytes(data.read_bytes() + b"x")
    assert 1 == await cli("backups", "-c", config)
    assert "NOT VERIFIED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(("backup",), "several backups are configured (one, two): name one"),
     (("backup", "three"), "unknown backup 'three' (configured: one, two)")],
)
async def test_backup_names_which_one_when_it_is_unclear(
    tmp_path: Path, fake: FakeSendGrid, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    """Several backups and no NAME, or an unknown NAME: exit 2 with one line, nothing exported."""
    config = write_config(tmp_path, fake.base_url, ("one", "two"))
    assert 2 == await cli(argv[0], "-c", config, *argv[1:])
    assert f"import-watcher: {message}\n" == capsys.readouterr().err
    assert {} == fake.exports.exports


async def test_a_failed_backup_exits_1_with_the_reason(
    tmp_path: Path, fake: FakeSendGrid, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export that fails: exit 1 and the reason on stderr."""
    fake.set_lifecycle(export_outcome="failure", export_message="export failed: quota")
    assert 1 == await cli("backup", "-c", write_config(tmp_path, fake.base_url))
    assert "backup nightly failed: the export" in capsys.readouterr().err
