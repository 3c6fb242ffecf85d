"""The fake SendGrid's `/_control/` JSON API, so another process can script it.

Each route maps onto a `FakeSendGrid` method: `POST /_control/jobs` on
`script_job`, `POST /_control/exports` on `script_export`, `POST
/_control/lifecycle` on `set_lifecycle` (`GET` reads the settings), `POST
/_control/fields` on `set_custom_fields`, `POST /_control/contacts` on
`add_contacts` (`GET` lists the stored contacts, `DELETE` forgets them), `POST
/_control/faults` on `set_faults`, `POST /_control/latency` on `set_latency`,
`POST /_control/refuse_key` on `refuse_key`, `GET /_control/stats` on `stats`
and `POST /_control/reset` on `reset`. No auth, and the fake's request
counters leave these calls out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from watcher.testing.responses import call_with_json, json_or_none

if TYPE_CHECKING:
    from watcher.testing.fake_sendgrid import FakeSendGrid

CONTROL_PREFIX = "/_control/"


class ControlAPI:
    """The control routes of one fake."""

    __slots__ = ("fake",)

    def __init__(self, fake: FakeSendGrid) -> None:
        self.fake = fake

    def routes(self) -> list[web.RouteDef]:
        """The route table entries, in registration order."""
        return [
            web.post("/_control/jobs", self.jobs),
            web.post("/_control/exports", self.exports),
            web.post("/_control/lifecycle", self.set_lifecycle),
            web.get("/_control/lifecycle", self.lifecycle),
            web.post("/_control/fields", self.fields),
            web.post("/_control/contacts", self.add_contacts),
            web.get("/_control/contacts", self.contacts),
            web.delete("/_control/contacts", self.forget_contacts),
            web.post("/_control/faults", self.faults),
            web.post("/_control/latency", self.latency),
            web.post("/_control/refuse_key", self.refuse_key),
            web.get("/_control/stats", self.stats),
            web.post("/_control/reset", self.reset),
        ]

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/jobs: one script_job object (with "id") or a list of them."""
        body = await json_or_none(request)
        specs = body if isinstance(body, list) else [body]
        try:
            for spec in specs:
                kwargs = dict(spec)
                job_id = str(kwargs.pop("id"))
                if kwargs.get("error_rows") is not None:
                    kwargs["error_rows"] = [tuple(row) for row in kwargs["error_rows"]]
                self.fake.script_job(job_id, **kwargs)
        except (TypeError, ValueError, KeyError) as exc:
            return web.json_response({"error": f"bad job: {exc!r}"}, status=400)
        return web.json_response({"scripted": len(specs)}, status=201)

    async def exports(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/exports: one script_export object (with "id") or a list of them."""
        body = await json_or_none(request)
        specs = body if isinstance(body, list) else [body]
        try:
            for spec in specs:
                kwargs = dict(spec)
                self.fake.script_export(str(kwargs.pop("id")), **kwargs)
        except (TypeError, ValueError, KeyError) as exc:
            return web.json_response({"error": f"bad export: {exc!r}"}, status=400)
        return web.json_response({"scripted": len(specs)}, status=201)

    async def set_lifecycle(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/lifecycle: set_lifecycle keyword arguments as JSON."""
        return call_with_json(self.fake.set_lifecycle, await json_or_none(request) or {})

    async def lifecycle(self, request: web.Request) -> web.StreamResponse:
        """GET /_control/lifecycle: the import and export settings in force."""
        return web.json_response(self.fake.lifecycle.document())

    async def fields(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/fields: {"custom_fields": [{"id", "name", "field_type"}]} replaces the custom fields."""
        body = await json_or_none(request)
        try:
            self.fake.set_custom_fields(body["custom_fields"])
        except (TypeError, ValueError, KeyError) as exc:
            return web.json_response({"error": f"bad fields: {exc!r}"}, status=400)
        return web.json_response({"ok": True})

    async def add_contacts(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/contacts: {"contacts": [...], "list_ids": [...]?} stored at once."""
        body = await json_or_none(request)
        try:
            added = self.fake.add_contacts(list(body["contacts"]), [str(i) for i in body.get("list_ids", [])])
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            return web.json_response({"error": f"bad contacts: {exc!r}"}, status=400)
        return web.json_response({"added": added}, status=201)

    async def contacts(self, request: web.Request) -> web.StreamResponse:
        """GET /_control/contacts: {"count", "dropped", "contacts": [...]} as of now."""
        stored = self.fake.contacts.snapshot(self.fake.clock.now())
        return web.json_response({"count": len(stored), "dropped": self.fake.contacts.dropped,
                                  "contacts": [contact.document() for contact in stored]})

    async def forget_contacts(self, request: web.Request) -> web.StreamResponse:
        """DELETE /_control/contacts: forget every contact."""
        self.fake.contacts.clear()
        return web.json_response({"ok": True})

    async def faults(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/faults: set_faults keyword arguments as JSON."""
        return call_with_json(self.fake.set_faults, await json_or_none(request) or {})

    async def latency(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/latency: {"seconds": float}, every API answer's delay."""
        return call_with_json(self.fake.set_latency, await json_or_none(request) or {})

    async def refuse_key(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/refuse_key: optional {"refused": bool, "status": 401|403}."""
        return call_with_json(self.fake.refuse_key, await json_or_none(request) or {})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """GET /_control/stats: the counters."""
        return web.json_response(self.fake.stats())

    async def reset(self, request: web.Request) -> web.StreamResponse:
        """POST /_control/reset: back to a fresh fake."""
        self.fake.reset()
        return web.json_response({"reset": True})
