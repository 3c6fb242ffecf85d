"""HTTP helpers shared by the fake SendGrid's API, fault and control modules.

It holds SendGrid's JSON error shape and the small JSON-body helpers the
`/_control/` API uses; nothing here keeps state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


def sendgrid_error(status: int, message: str, field_name: str | None = None) -> web.Response:
    """A JSON error in SendGrid's ErrorResponse shape: {"errors": [{"field", "message"}]}."""
    return web.json_response({"errors": [{"field": field_name, "message": message}]},
                             status=status)


async def json_or_none(request: web.Request) -> Any:
    """The request's JSON body, or None when it is empty or not JSON."""
    try:
        return await request.json() if request.can_read_body else None
    except ValueError:
        return None


def call_with_json(method: Callable[..., None], kwargs: Any) -> web.Response:
    """Call a setter with JSON kwargs: 200 {"ok": true}, or 400 with why."""
    try:
        method(**kwargs)
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": repr(exc)}, status=400)
    return web.json_response({"ok": True})
