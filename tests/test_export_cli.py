"""`import-watcher export` and the export downloads, against the bundled fake SendGrid."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import config_text
from watcher import cli
from watcher.accounts import Account
from watcher.clock import ManualClock, SystemClock
from watcher.csvimport import plan_import
from watcher.lifecycle import Lifecycle, UrlExpired
from watcher.models import JobKind
from watcher.net import BodyTooLarge
from watcher.ratelimit import LocalRateBudget
from watcher.schema import Secret
from watcher.sendgrid import SendGridClient, SendGridSettings
from watcher.store import open_store
from watcher.testing.fake_contacts import ContactRow
from watcher.testing.fake_sendgrid import DEFAULT_API_KEY, FakeSendGrid


def add_contacts(fake: FakeSendGrid, count: int) -> None:
    rows = [ContactRow.of({"email": f"u{i}@example.com", "first_name": f"N{i}"}, {"e1_T": "red"})
            for i in range(count)]
    fake.contacts.stage(rows, 0.0)
    fake.contacts.settle(fake.clock.now())


async def test_export_waits_until_ready_and_is_tracked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export --wait (no daemon) exits 0 once ready, showing the count and files; the job is an export."""
    async with FakeSendGrid() as fake:
        add_contacts(fake, 3)
        fake.set_lifecycle(export_seconds=0.1)
        config = tmp_path / "config.yaml"
        config.write_text(config_text(fake.base_url, f"sqlite:///{tmp_path / 'state.db'}")
                          + f"heartbeat_file: {tmp_path / 'none'}\n", encoding="utf-8")
        code = await asyncio.to_thread(cli.main, ["export", "-c", str(config), "--wait"])
        out = capsys.readouterr().out
        assert 0 == code, out
        fake.set_lifecycle(export_outcome="failure", export_seconds=0.0)
        assert 1 == await asyncio.to_thread(cli.main, ["export", "-c", str(config), "--wait", "--file-type", "json"])
    export_id = out.split()[1].rstrip(":")
    assert f"{export_id}: ready: contact 3, 1 file" in out
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    try:
        job = await store.get_job(export_id)
    finally:
        await store.close()
    assert (JobKind.EXPORT, "default") == (job.kind, job.account)
    assert "failure" in capsys.readouterr().out


@contextlib.asynccontextmanager
async def lifecycle_on(fake: FakeSendGrid, clock: ManualClock | None = None) -> AsyncIterator[Lifecycle]:
    settings = SendGridSettings(api_key=Secret(DEFAULT_API_KEY), base_url=fake.base_url, allow_private=True,
                                allow_insecure=True)
    budget = LocalRateBudget(max_rate=None, clock=SystemClock())
    async with aiohttp.ClientSession() as session:
        client = SendGridClient(settings, session=session, budget=budget, clock=clock or SystemClock())
        yield Lifecycle(Account("main", settings, session, budget, client), clock=clock or SystemClock())


async def ready_urls(lifecycle: Lifecycle, fake: FakeSendGrid) -> list[str]:
    export_id = await lifecycle.start_export()
    snapshot = await lifecycle.account.client.get_export(export_id)  # type: ignore[attr-defined]
    assert "ready" == snapshot.status
    return list(snapshot.results["urls"])


async def test_download_is_checksummed_and_maps_back_for_restore(tmp_path: Path) -> None:
    """The gzip file lands whole with its SHA-256, and its export columns map back to field ids."""
    async with FakeSendGrid() as fake:
        add_contacts(fake, 5)
        fake.set_lifecycle(export_seconds=0.0)
        async with lifecycle_on(fake) as lifecycle:
            (url,) = await ready_urls(lifecycle, fake)
            dest = tmp_path / "contacts.csv.gz"
            size, digest = await lifecycle.download(url, dest)
            definitions = await lifecycle.field_definitions()
    data = dest.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest)
    assert gzip.decompress(data).startswith(b"EMAIL,FIRST_NAME,")
    plan = plan_import(dest, definitions, export_file=True)
    mapped = dict(zip(plan.columns, plan.field_mappings, strict=True))
    assert ("_rf2_T", "_rf0_T", "e1_T", None, None) == (mapped["EMAIL"], mapped["FIRST_NAME"],
                                                        mapped["favorite_color"], mapped["CONTACT_ID"],
                                                        mapped["CREATED_AT"])
    assert 5 == plan.rows
    assert [dest.name] == [p.name for p in tmp_path.iterdir()]  # no partial file left behind


async def test_an_expired_url_raises_url_expired_and_writes_nothing(tmp_path: Path) -> None:
    """Past expires_at the URL answers 403: UrlExpired, distinct, after one try."""
    clock = ManualClock()
    async with FakeSendGrid(clock=clock) as fake:
        add_contacts(fake, 2)
        fake.set_lifecycle(export_seconds=0.0, export_url_ttl=60.0)
        async with lifecycle_on(fake, clock) as lifecycle:
            (url,) = await ready_urls(lifecycle, fake)
            clock.advance(61.0)
            before = fake.requests_total
            with pytest.raises(UrlExpired, match=r"has expired.*ask for the export's URLs again"):
                await lifecycle.download(url, tmp_path / "f.csv.gz")
            assert 1 == fake.requests_total - before
    assert [] == list(tmp_path.iterdir())


async def test_a_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    """max_bytes stops the download and leaves no file."""
    async with FakeSendGrid() as fake:
        add_contacts(fake, 200)
        fake.set_lifecycle(export_seconds=0.0)
        async with lifecycle_on(fake) as lifecycle:
            (url,) = await ready_urls(lifecycle, fake)
            with pytest.raises(BodyTooLarge):
                await lifecycle.download(url, tmp_path / "f.csv.gz", max_bytes=100)
    assert [] == list(tmp_path.iterdir())
