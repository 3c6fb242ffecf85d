"""Who hears about what: pure routing from outcome, labels, job type, kind and account to notifier names.

A stuck warning is routed with the status "pending": a route whose `when.status` lists
`pending` sends warnings, a route with any other `when.status` never does, and a route
without a status condition sends them like every outcome. A batch summary is routed with
its worst outcome, and no kind or account (a route with either condition never sends it).

`when.kind` (import, export) and `when.account` (account names) match the job's own; a job of
the default account matches that account's name (the caller passes it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watcher.models import JobKind, Outcome, validate_account_name
from watcher.yamlloc import Path_, Problems

#: What `when.status` may name: the outcomes, and "pending" for stuck warnings.
_STATUSES = {o.value for o in Outcome} | {"pending"}
_KINDS = {k.value for k in JobKind}


@dataclass(frozen=True, slots=True)
class Route:
    """Send to `notify` when every given condition holds; no condition matches everything."""

    notify: tuple[str, ...]
    statuses: frozenset[str] | None = None
    labels: Mapping[str, frozenset[str]] | None = None
    job_types: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    accounts: frozenset[str] | None = None

    def matches(
        self, outcome: str, labels: Mapping[str, str], job_type: str | None,
        kind: str | None = None, account: str | None = None,
    ) -> bool:  # fmt: skip
        if self.statuses is not None and outcome not in self.statuses:
            return False
        if self.job_types is not None and (job_type or "") not in self.job_types:
            return False
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.accounts is not None and account not in self.accounts:
            return False
        if self.labels:
            return all(labels.get(key) in allowed for key, allowed in self.labels.items())
        return True


def targets(
    routes: Sequence[Route],
    notifiers: Iterable[str],
    *,
    outcome: str,
    labels: Mapping[str, str],
    job_type: str | None,
    override: Sequence[str] | None = None,
    kind: str | None = None,
    account: str | None = None,
) -> tuple[str, ...]:
    """Notifier names for one outcome, in configuration order, without duplicates."""
    names = tuple(notifiers)
    if override is not None:
        chosen = set(override)
    elif not routes:
        chosen = set(names)
    else:
        chosen = {n for r in routes if r.matches(outcome, labels, job_type, kind, account) for n in r.notify}
    return tuple(n for n in names if n in chosen)


def parse_route(raw: Any, path: Path_, problems: Problems, names: set[str]) -> Route | None:
    """Validate one `routes:` entry; problems are reported, None returned when it is unusable."""
    if not isinstance(raw, dict):
        problems.add(path, "expected a mapping with `notify` and optionally `when`")
        return None
    for key in raw:
        if key not in {"when", "notify"}:
            problems.add((*path, key), "unknown key (expected when, notify)")
    notify = _names(raw.get("notify"), (*path, "notify"), problems, names)
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        problems.add((*path, "when"), "expected a mapping of status, labels, job_type, kind, account")
        return None
    for key in when:
        if key not in {"status", "labels", "job_type", "kind", "account"}:
            problems.add((*path, "when", key), "unknown condition (expected account, job_type, kind, labels, status)")
    statuses = _strings(when.get("status"), (*path, "when", "status"), problems)
    for status in statuses or ():
        if status not in _STATUSES:
            expected = ", ".join(sorted(_STATUSES))
            problems.add((*path, "when", "status"), f"unknown status {status!r} (expected {expected})")
    job_types = _strings(when.get("job_type"), (*path, "when", "job_type"), problems)
    labels = _labels(when.get("labels"), (*path, "when", "labels"), problems)
    kinds, accounts = _kinds_accounts(when, (*path, "when"), problems)
    if notify is None:
        return None
    return Route(notify, statuses, labels, job_types, kinds, accounts)


def _kinds_accounts(
    when: dict[Any, Any], path: Path_, problems: Problems
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """`when.kind` (import, export) and `when.account` (names as accounts are named)."""
    kinds = _strings(when.get("kind"), (*path, "kind"), problems)
    for kind in sorted(kinds or ()):
        if kind not in _KINDS:
            problems.add((*path, "kind"), f"unknown kind {kind!r} (expected export, import)")
    accounts = _strings(when.get("account"), (*path, "account"), problems)
    for account in sorted(accounts or ()):
        try:
            validate_account_name(account)
        except ValueError as exc:
            problems.add((*path, "account"), str(exc))
    return kinds, accounts


def _names(raw: Any, path: Path_, problems: Problems, names: set[str]) -> tuple[str, ...] | None:
    items = _strings(raw, path, problems)
    if not items:
        if raw is None:
            problems.add(path, "missing required key `notify`")
        return None
    unknown = [n for n in items if n not in names]
    for name in unknown:
        problems.add(path, f"unknown notifier {name!r} (configured: {', '.join(sorted(names)) or 'none'})")
    return None if unknown else tuple(sorted(items))


def _strings(raw: Any, path: Path_, problems: Problems) -> frozenset[str] | None:
    if raw is None:
        return None
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        problems.add(path, "expected a string or a list of strings")
        return None
    return frozenset(items)


def _labels(raw: Any, path: Path_, problems: Problems) -> dict[str, frozenset[str]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(path, "expected a mapping of label -> value (or list of values)")
        return None
    out: dict[str, frozenset[str]] = {}
    for key, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            problems.add((*path, key), "expected a string or a list of strings")
            continue
        out[key] = frozenset(str(v) for v in values)
    return out
