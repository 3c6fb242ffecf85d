"""Local fakes of Microsoft Teams (Workflows), Google Chat and Mattermost webhooks, from their docs.

Each rejects what its service rejects and answers like it (202 empty, Google's error JSON,
`ok`), and counts what a test asserts on: accepted posts, 400s and 429s. Their rate limits
read a shared clock, so tests run the documented rates in virtual time.
"""

from watcher.testing.chatfakes_b.base import (
    FakeService,
    ScriptedAnswer,
    SlidingWindow,
    TokenBucket,
    VirtualClock,
    deliver_burst,
    running,
    serve,
)
from watcher.testing.chatfakes_b.google_chat import FakeGoogleChat
from watcher.testing.chatfakes_b.mattermost import FakeMattermost
from watcher.testing.chatfakes_b.teams import FakeTeams

__all__ = [
    "FakeGoogleChat",
    "FakeMattermost",
    "FakeService",
    "FakeTeams",
    "ScriptedAnswer",
    "SlidingWindow",
    "TokenBucket",
    "VirtualClock",
    "deliver_burst",
    "running",
    "serve",
]
