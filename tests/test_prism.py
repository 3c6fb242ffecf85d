"""Every call we make on the contacts spec passes Prism's request validation (a mock of the official spec).

Prism runs with --errors: a request that breaks the spec gets a 4xx naming the violation instead of
a mocked answer, so an answer parsed as the spec's success is the proof.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import free_port, missing_service
from watcher.accounts import Account
from watcher.clock import SystemClock
from watcher.errors import SendGridError
from watcher.lifecycle import Lifecycle, SendGridRefused
from watcher.ratelimit import LocalRateBudget
from watcher.schema import Secret
from watcher.sendgrid import SendGridClient, SendGridSettings

# .ci/services (make services) installs Prism here; $PRISM_BIN points elsewhere.
PRISM = Path(os.environ.get("PRISM_BIN", Path(__file__).parents[1] / ".tools/prism/node_modules/.bin/prism"))
SPEC = Path(__file__).parent / "specs" / "tsg_mc_contacts_v3.yaml"  # SendGrid's official spec (specs/SOURCE.md)


@contextlib.asynccontextmanager
async def prism() -> AsyncIterator[str]:
    if not os.access(PRISM, os.X_OK):
        missing_service(f"needs the prism mock server at {PRISM} (npm install @stoplight/prism-cli@5.14)")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(PRISM), "mock", str(SPEC), "-h", "127.0.0.1", "-p", str(port), "--errors",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):  # Prism takes a few seconds to load the spec
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/v3/marketing/contacts/count"):
                        break
                if proc.returncode is not None:
                    raise AssertionError(f"prism exited: {(await proc.stdout.read()).decode()[-2000:]}")  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def lifecycle_on(url: str) -> AsyncIterator[Lifecycle]:
    settings = SendGridSettings(api_key=Secret("SG.prism-key"), base_url=url, on_behalf_of="sub1")
    clock = SystemClock()
    budget = LocalRateBudget(max_rate=None, clock=clock)
    async with aiohttp.ClientSession() as session:
        client = SendGridClient(settings, session=session, budget=budget, clock=clock)
        yield Lifecycle(Account("main", settings, session, budget, client), clock=clock)


@pytest.mark.timeout(60)
async def test_our_requests_pass_prism_validation() -> None:
    """Import start (with and without lists), import status, export start (csv, json, lists and segments) and
    export status are all valid requests; a broken one is refused, so the check can fail."""
    async with prism() as url, lifecycle_on(url) as lifecycle:
        started = await lifecycle.start_import(field_mappings=["_rf2_T", None, "w1"])
        assert started.job_id and started.upload_uri
        await lifecycle.start_import(field_mappings=["_rf2_T"], list_ids=["ca7a3796-e8a8-4029-9ccb-df8937940562"])
        await lifecycle.account.client.get_import("job-1")
        export_id = await lifecycle.start_export()
        await lifecycle.start_export(list_ids=["ca7a3796-e8a8-4029-9ccb-df8937940562"], segment_ids=["s1"],
                                     file_type="json")
        try:
            await lifecycle.account.client.get_export(export_id)  # type: ignore[attr-defined]
        except SendGridError as exc:  # a mocked answer our parser finds odd is fine; a 4xx is not
            assert "HTTP 4" not in str(exc), exc
        assert {"200"} == set(lifecycle.account.client.responses), lifecycle.account.client.responses  # type: ignore[attr-defined]
        # The control: a body the spec forbids (field_mappings must hold one item at least).
        with pytest.raises(SendGridRefused, match=r"HTTP (400|422)"):
            await lifecycle.start_import(field_mappings=[])
