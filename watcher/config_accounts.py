"""The `sendgrid:` section of the configuration: the SendGrid accounts one daemon watches.

Two forms, exactly one of them: `api_key` / `base_url` / `on_behalf_of` at the top of the
section (one account, named "default"), or `accounts: {name: {api_key, base_url, on_behalf_of}}`.
The other keys (request_timeout, max_concurrency, max_rate, allow_insecure, allow_private) are
shared by every account. The first account is the default: a job that names none is its.
The API key and on_behalf_of go into request headers, so a control character in either (a line
break left in a key file, say) is a problem here, not a failing request on every poll.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from watcher import net
from watcher import schema as s
from watcher.models import validate_account_name
from watcher.schema import Field, Validator
from watcher.sendgrid import SendGridSettings
from watcher.yamlloc import Path_

#: The name of the one account of a config that gives api_key at the top of `sendgrid:`.
DEFAULT_ACCOUNT = "default"


def _header_text(value: Any, what: str) -> str:
    """A string that can be sent in an HTTP header: no character below 0x20, nor DEL."""
    text = s.string(value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"{what} must not contain control characters (a line break, a tab): "
                         "it is sent in an HTTP header")
    return text


def _api_key(value: Any) -> s.Secret:
    return s.Secret(_header_text(value, "the API key"))  # the message never shows the key


def _on_behalf_of(value: Any) -> str | None:
    return None if value is None else _header_text(value, "on_behalf_of")


ACCOUNT_FIELDS = (
    Field("api_key", _api_key, required=True, secret=True),
    Field("base_url", s.url("https", "http"), default="https://api.sendgrid.com"),
    Field("on_behalf_of", _on_behalf_of),
)
SHARED_FIELDS = (
    Field("request_timeout", s.duration(0.001), default=10.0),
    Field("max_concurrency", s.integer(1, 10_000), default=32),
    Field("max_rate", s.number(0.001, allow_none=True)),
    Field("allow_insecure", s.boolean, default=False),  # plain http to a host that is not loopback
    Field("allow_private", s.boolean, default=False),  # answered URLs may reach private addresses
)
_ACCOUNTS = Field("accounts", lambda value: value)  # parsed by parse_accounts; here so it is a known key
_ACCOUNT_KEYS = frozenset({*(f.name for f in ACCOUNT_FIELDS), "api_key_file"})
_PATH: Path_ = ("sendgrid",)


def check_account(name: str | None, configured: Sequence[str]) -> None:
    """ValueError when a job, import, export or backup names an account that is not configured (None: the default)."""
    if name is not None and name not in configured:
        raise ValueError(f"unknown account {name!r} (configured: {', '.join(configured)})")


def parse_sendgrid(ctx: Validator, raw: Any) -> tuple[dict[str, Any] | None, dict[str, SendGridSettings]]:
    """(the shared settings, the accounts by name in file order); no accounts after any problem here.

    Accounts are built only when the section had no problem, so SendGridSettings never
    raises on a value config already reported.
    """
    if raw is None:
        ctx.problems.add(_PATH, "this section is required")
        return None, {}
    if not isinstance(raw, dict):
        ctx.problems.add(_PATH, "expected a mapping")
        return None, {}
    before = len(ctx.problems.messages)
    if raw.get("accounts") is None:
        parsed = ctx.fields(raw, _PATH, (*ACCOUNT_FIELDS, *SHARED_FIELDS, _ACCOUNTS))
        if parsed is None:
            return None, {}
        parsed.pop("accounts")
        shared = {f.name: parsed.pop(f.name) for f in SHARED_FIELDS}
        named = {DEFAULT_ACCOUNT: (parsed, _PATH)}
    else:
        for key in sorted(_ACCOUNT_KEYS & set(raw)):
            ctx.problems.add((*_PATH, key), "give either this or `sendgrid.accounts`, not both")
        rest = {key: value for key, value in raw.items() if key not in _ACCOUNT_KEYS}
        shared = ctx.fields(rest, _PATH, (*SHARED_FIELDS, _ACCOUNTS)) or {}
        shared.pop("accounts", None)
        named = _accounts(ctx, raw["accounts"])
    for parsed, path in named.values():
        _check_base_url(ctx, parsed, path, allow_insecure=bool(shared.get("allow_insecure")))
    if len(ctx.problems.messages) > before:
        return shared or None, {}
    return shared, {name: SendGridSettings(**parsed, **shared) for name, (parsed, _) in named.items()}


def _accounts(ctx: Validator, raw: Any) -> dict[str, tuple[dict[str, Any], Path_]]:
    path: Path_ = (*_PATH, "accounts")
    if not isinstance(raw, dict) or not raw:
        ctx.problems.add(path, "expected a mapping of account name -> {api_key, base_url, on_behalf_of}")
        return {}
    out: dict[str, tuple[dict[str, Any], Path_]] = {}
    for name, settings in raw.items():
        where: Path_ = (*path, name)
        try:
            validate_account_name(name)
        except ValueError as exc:
            ctx.problems.add(where, str(exc))
            continue
        parsed = ctx.fields(settings, where, ACCOUNT_FIELDS)
        if parsed is not None:
            out[name] = (parsed, where)
    return out


def _check_base_url(ctx: Validator, account: Mapping[str, Any], path: Path_, *, allow_insecure: bool) -> None:
    """base_url follows the one URL policy: the API key never travels in clear by accident."""
    if not account.get("base_url"):
        return
    problem = net.base_url_problem(str(account["base_url"]), allow_insecure=allow_insecure)
    if problem:
        ctx.problems.add((*path, "base_url"), problem)
