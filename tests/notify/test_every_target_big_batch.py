"""A batch summary of 10,000 jobs, rendered by every chat notifier, is one message each service accepts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from watcher.notify.chat import ChatNotifier
from watcher.notify.discord import DiscordNotifier
from watcher.notify.google_chat import GoogleChatNotifier
from watcher.notify.mattermost import MattermostNotifier
from watcher.notify.pagerduty import PagerDutyNotifier
from watcher.notify.teams import TeamsNotifier
from watcher.schema import Secret
from watcher.testing.chatfakes.discord import refusal_of
from watcher.testing.chatfakes.events import big_batch_event, delivery_of
from watcher.testing.chatfakes.pagerduty import problems_of
from watcher.testing.chatfakes_b.google_chat import message_problems
from watcher.testing.chatfakes_b.mattermost import post_problems
from watcher.testing.chatfakes_b.teams import body_problems

LOOPBACK = "http://127.0.0.1:9"  # never contacted: only rendered


def _json(raw: bytes) -> Any:
    return json.loads(raw)


TARGETS: list[tuple[str, Callable[[], ChatNotifier], Callable[[bytes], Any]]] = [
    ("teams", lambda: TeamsNotifier("t", {"url": Secret(f"{LOOPBACK}/workflows/x?sig=s")}), body_problems),
    ("discord", lambda: DiscordNotifier("d", {"webhook_url": Secret(f"{LOOPBACK}/api/webhooks/1/t")}),
     lambda raw: refusal_of(_json(raw)) or []),
    ("google_chat", lambda: GoogleChatNotifier("g", {"webhook_url": Secret(f"{LOOPBACK}/v1/spaces/S/messages?key=k")}),
     message_problems),
    ("mattermost", lambda: MattermostNotifier("m", {"webhook_url": Secret(f"{LOOPBACK}/hooks/abc")}),
     lambda raw: post_problems(_json(raw))),
    ("pagerduty", lambda: PagerDutyNotifier(
        "p", {"routing_key": Secret("0123456789abcdef0123456789abcdef"), "events_url": f"{LOOPBACK}/v2/enqueue"}),
     lambda raw: problems_of(_json(raw))),
]


@pytest.fixture(scope="module")
def ten_thousand() -> dict[str, Any]:
    return big_batch_event(jobs=10_000, name="migration")


@pytest.mark.parametrize(("kind", "make", "problems"), TARGETS, ids=[t[0] for t in TARGETS])
def test_a_batch_of_10000_jobs_fits_every_target(
    ten_thousand: dict[str, Any], kind: str, make: Callable[[], ChatNotifier], problems: Callable[[bytes], Any]
) -> None:
    """The summary renders within the service's documented limits (its fake's validator finds nothing)."""
    notifier = make()
    outgoing = notifier.render(delivery_of(ten_thousand))
    assert outgoing is not None
    assert [] == problems(outgoing.body), kind
    assert b"migration" in outgoing.body  # the batch is named, whatever had to be cut
