"""SendGridClient.get_export: the spec's ContactExport read as strictly as an import, URLs judged by
the outbound policy (never logged unmasked), the same errors as get_import; routes by kind and account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from tests.helpers import serve_app
from watcher.clock import ManualClock
from watcher.errors import ImportNotFound, KeyRefused, TryLater
from watcher.models import Snapshot
from watcher.net import OutboundPolicy
from watcher.ratelimit.local import LocalRateBudget
from watcher.routing import parse_route, targets
from watcher.schema import Secret
from watcher.sendgrid import SendGridClient, SendGridSettings
from watcher.sendgrid_exports import MAX_URLS, parse_export
from watcher.yamlloc import Problems

SIGNED = "https://exports.example.test/a.csv.gz?X-Amz-Signature=topsecret&X-Amz-Credential=AKIAXYZ"
BODY: dict[str, Any] = {
    "id": "e1", "status": "ready", "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:05:00Z",
    "completed_at": "2026-11-27T10:04:00Z", "expires_at": "2026-11-30T10:00:00Z", "urls": [SIGNED],
    "contact_count": 42.0, "_metadata": {"self": "x"}, "unknown_extra": {"nested": True},
}  # fmt: skip


def test_a_ready_export_maps_onto_a_snapshot() -> None:
    """status as is, created_at as started_at, completed_at as finished_at, the rest in results."""
    snapshot, refused = parse_export(BODY, OutboundPolicy())
    assert ([], Snapshot("ready", None, {"contact_count": 42, "urls": [SIGNED], "expires_at": "2026-11-30T10:00:00Z"},
                         "2026-11-27T10:00:00Z", "2026-11-27T10:04:00Z")) == (refused, snapshot)  # fmt: skip
    pending, _ = parse_export({**BODY, "status": "pending", "urls": None, "completed_at": None}, OutboundPolicy())
    assert (None, None) == (pending.finished_at, pending.results.get("urls"))
    failed, _ = parse_export({**BODY, "status": "Failure", "completed_at": None, "message": "m" * 900}, OutboundPolicy())
    assert ("2026-11-27T10:05:00Z", 500) == (failed.finished_at, len(failed.results["message"]))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"status": 3}, "status is int"),
        ({"expires_at": ["x"]}, "expires_at is list"),
        ({"contact_count": "42"}, "contact_count is str"),
        ({"contact_count": True}, "contact_count is bool"),
        ({"contact_count": -1}, "out of range"),
        ({"contact_count": 2**60}, "out of range"),
        ({"contact_count": 1.5}, "out of range"),
        ({"urls": "https://a"}, "urls is str"),
        ({"urls": [1]}, "expected strings"),
        ({"urls": ["https://a/" + "x" * 9000]}, "characters long"),
        ({"urls": ["https://a/x"] * (MAX_URLS + 1)}, "entries"),
        ({"message": "\ud800"}, "lone surrogate"),
    ],
)
def test_a_malformed_export_answer_is_refused_with_a_reason(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_export({**BODY, **change}, OutboundPolicy())


def test_urls_the_outbound_policy_refuses_are_left_out_and_reported_masked() -> None:
    """http, loopback and private URLs are dropped (counted), and what is reported has no query."""
    urls = [SIGNED, "http://exports.example.test/b?X-Amz-Signature=topsecret", "https://10.0.0.8/c?sig=topsecret"]
    snapshot, refused = parse_export({**BODY, "urls": urls}, OutboundPolicy())
    assert ([SIGNED], 2) == (snapshot.results["urls"], snapshot.results["urls_refused"])
    assert 2 == len(refused) and not any("topsecret" in line for line in refused)
    lenient, refused = parse_export({**BODY, "urls": urls}, OutboundPolicy(allow_insecure=True, allow_private=True))
    assert (urls, []) == (lenient.results["urls"], refused)


@pytest.fixture
async def served() -> AsyncIterator[tuple[list[tuple[int, Any]], str]]:
    answers: list[tuple[int, Any]] = []
    paths: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        paths.append(request.path)
        status, body = answers.pop(0)
        text = body if isinstance(body, str) else None
        return web.Response(status=status, text=text) if text is not None else web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/v3/marketing/contacts/exports/{id}", handle)
    runner, port = await serve_app(app)
    yield answers, f"http://127.0.0.1:{port}"
    await runner.cleanup()
    assert all(p.startswith("/v3/marketing/contacts/exports/") for p in paths)


async def test_get_export_answers_and_errors_like_get_import(served: tuple[list[tuple[int, Any]], str]) -> None:
    """200 -> Snapshot; 404 -> ImportNotFound; 401 -> KeyRefused; 429 and malformed -> TryLater; a
    refused URL is logged once per answer, masked."""
    answers, base = served
    clock = ManualClock()
    settings = SendGridSettings(api_key=Secret("SG.k"), base_url=base)
    refused_url = "https://10.1.2.3/x?X-Amz-Signature=topsecret"
    answers += [
        (200, {**BODY, "urls": [SIGNED, refused_url]}), (200, {**BODY, "urls": [SIGNED, refused_url]}),
        (404, {"errors": [{"message": "not found"}]}), (401, {"errors": [{"message": "bad key"}]}),
        (200, {**BODY, "contact_count": "x"}), (200, "not json"),
        (429, {"errors": [{"field": None, "message": "too many requests"}]}),  # last: the budget then waits
    ]  # fmt: skip
    async with aiohttp.ClientSession() as session:
        sg = SendGridClient(settings, session=session, budget=LocalRateBudget(max_rate=None, clock=clock), clock=clock)
        with structlog.testing.capture_logs() as logs:
            first = await sg.get_export("e1")
            assert first is await sg.get_export("e1")  # the same bytes: parsed (and logged) once
        assert ([SIGNED], 1) == (first.results["urls"], first.results["urls_refused"])
        assert ["https://10.1.2.3/x: private address (needs sendgrid.allow_private)"] == [
            line["url"] for line in logs if line["event"] == "sendgrid.export_url_refused"
        ]
        assert "topsecret" not in repr(logs)
        with pytest.raises(ImportNotFound):
            await sg.get_export("e1")
        with pytest.raises(KeyRefused):
            await sg.get_export("e1")
        for _ in range(3):
            with pytest.raises(TryLater):
                await sg.get_export("e1")
        with pytest.raises(ValueError, match="invalid job id"):
            await sg.get_export("../imports/x")
    assert 7 == sg.requests


def test_routes_match_kind_and_account() -> None:
    """`when.kind` and `when.account` select by the job's kind and account; bad values are problems."""
    problems = Problems("c.yaml")
    exports = parse_route({"when": {"kind": "export", "account": ["eu-brand"]}, "notify": ["a"]}, ("r",), problems, {"a"})
    assert exports is not None and not problems
    pick = {"outcome": "ready", "labels": {}, "job_type": None}
    assert ("a",) == targets([exports], ["a"], **pick, kind="export", account="eu-brand")
    assert () == targets([exports], ["a"], **pick, kind="import", account="eu-brand")
    assert () == targets([exports], ["a"], **pick, kind="export", account="main")
    parse_route({"when": {"kind": "backup", "account": "a b", "status": ["ready"]}, "notify": ["a"]}, ("r",),
                problems, {"a"})  # fmt: skip
    assert ["c.yaml:1: r.when.kind: unknown kind 'backup' (expected export, import)",
            "c.yaml:1: r.when.account: invalid account name 'a b': expected 1 to 64 characters of A-Z a-z 0-9 - _ ."
            ] == problems.sorted()  # fmt: skip
