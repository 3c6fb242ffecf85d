"""Routing is a pure function from outcome, labels and job type to notifier names."""

from __future__ import annotations

import pytest

from watcher.routing import Route, targets

NAMES = ("slack", "mail", "hook", "console")
ROUTES = (
    Route(notify=("slack",)),
    Route(notify=("mail",), statuses=frozenset({"errored", "failed", "timed_out", "not_found"})),
    Route(notify=("hook",), labels={"team": frozenset({"growth"})}),
    Route(notify=("console",), job_types=frozenset({"delete"})),
)


@pytest.mark.parametrize(
    ("outcome", "labels", "job_type", "expected"),
    [
        ("completed", {}, "upsert", ("slack",)),
        ("errored", {}, "upsert", ("slack", "mail")),
        ("completed", {"team": "growth"}, "upsert", ("slack", "hook")),
        ("completed", {"team": "sales"}, "upsert", ("slack",)),
        ("failed", {"team": "growth"}, "delete", ("slack", "mail", "hook", "console")),
        ("not_found", {}, None, ("slack", "mail")),
    ],
)
def test_routes_match_on_status_labels_and_job_type(
    outcome: str, labels: dict[str, str], job_type: str | None, expected: tuple[str, ...]
) -> None:
    """Each route adds its notifiers when all its conditions hold; order follows the configuration."""
    assert expected == targets(ROUTES, NAMES, outcome=outcome, labels=labels, job_type=job_type)


def test_no_routes_means_everyone() -> None:
    """Without routes every notifier gets every outcome."""
    assert NAMES == targets((), NAMES, outcome="completed", labels={}, job_type=None)


def test_per_job_override_wins() -> None:
    """A job's own `notify` list replaces the routes."""
    assert ("console",) == targets(ROUTES, NAMES, outcome="errored", labels={}, job_type=None, override=["console"])


def test_label_route_with_several_values() -> None:
    """A label condition may list several accepted values."""
    route = Route(notify=("hook",), labels={"team": frozenset({"growth", "sales"})})
    assert route.matches("completed", {"team": "sales"}, None)
    assert not route.matches("completed", {}, None)
