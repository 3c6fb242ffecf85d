"""One target-neutral Message per event, and its renderings as Slack blocks, e-mail and a console line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from watcher.batches import batch_event, stuck_batch_event
from watcher.models import Batch, BatchPhase, JobState, Outcome, Snapshot
from watcher.notify import render
from watcher.notify.email import build_email, email_subject, flatten
from watcher.notify.message import Severity, message_from_event
from watcher.notify.slack import build_message

from .test_slack import payload_problems

T0 = 1_800_000_000.0
KINDS = ["completed", "errored", "failed", "timed_out", "not_found", "alert", "batch_finished", "stuck",
         "stuck batch", "digest"]


def big_batch(size: int) -> dict[str, Any]:
    """A batch of `size` jobs: 5% errored, 1% failed, 0.5% timed out, with long reasons and labels."""
    jobs = []
    for i in range(size):
        outcome = (
            Outcome.FAILED if i % 100 == 7 else Outcome.TIMED_OUT if i % 200 == 9
            else Outcome.ERRORED if i % 20 == 3 else Outcome.COMPLETED
        )
        errors = {"rows": 4, "top_reasons": [{"reason": f"reason {i % 9} " + "x" * 300, "count": 4}]}
        jobs.append(
            JobState(
                id=f"job-{i:05}-" + "y" * 40,
                labels={"team": "growth", "shard": str(i)},
                notify=None,
                added_at=T0 + i,
                next_poll_at=T0,
                snapshot=Snapshot(results={"requested_count": 30_000, "created_count": 29_996, "errored_count": 4}),
                outcome=outcome,
                detected_at=T0 + size + i,
                errors=errors if outcome is not Outcome.COMPLETED else None,
            )
        )
    batch = Batch("migration:2026-11", BatchPhase.OPEN, size, size, {}, T0, T0 + 2 * size)
    return batch_event(batch, jobs, now=T0 + 3 * size, summary_id="sum_big", public_url="https://w.example.com")


@pytest.mark.parametrize(
    ("kind", "status", "severity", "subject"),
    [
        ("completed", "completed", Severity.INFO, render.sample_event()["data"]["job_id"]),
        ("errored", "errored", Severity.WARNING, render.sample_event()["data"]["job_id"]),
        ("failed", "failed", Severity.ERROR, render.sample_event()["data"]["job_id"]),
        ("timed_out", "timed_out", Severity.ERROR, render.sample_event()["data"]["job_id"]),
        ("not_found", "not_found", Severity.WARNING, render.sample_event()["data"]["job_id"]),
        ("alert", "alert", Severity.CRITICAL, "key_refused"),
        ("batch_finished", "failed", Severity.ERROR, "nightly-2026-11-27"),
        ("stuck", "pending", Severity.WARNING, render.sample_event()["data"]["job_id"]),
        ("stuck batch", "pending", Severity.WARNING, "nightly-2026-11-27"),
        ("digest", "digest", Severity.WARNING, "morning"),
    ],
)
def test_every_kind_has_a_message(kind: str, status: str, severity: Severity, subject: str) -> None:
    """Each event kind gives a message with its status, severity, subject, a title and a summary."""
    event = render.sample_event(kind)

    message = message_from_event(event)

    assert (event["type"], status, severity, subject) == (message.kind, message.status, message.severity, subject)
    assert subject == message.subject
    assert message.title and message.summary and message.facts


def test_batch_message_reads_worst_first_and_counts_what_it_does_not_list() -> None:
    """Outcomes are listed worst first; the not-completed section says how many more there are."""
    message = message_from_event(big_batch(10_000))

    facts = dict(message.facts)
    assert "100 failed, 500 errored, 50 timed_out, 9,350 completed" == facts["Outcomes"]
    (section,) = message.sections
    assert (20, 630) == (len(section.lines), section.more)
    assert ("Open the batch", "https://w.example.com/batches/migration:2026-11") == message.links[0][:2]


def test_unknown_event_types_still_give_a_message() -> None:
    """An event type this version does not know is shown with its plain data, not dropped."""
    message = message_from_event({"type": "watcher.future", "timestamp": "t", "data": {"x": 1, "deep": {"a": 1}}})

    assert (("x", "1"),) == message.facts
    assert "watcher.future x=1" == message.line


@pytest.mark.parametrize("size", [500, 10_000])
def test_a_big_batch_fits_slack_and_reads_on_a_phone(size: int) -> None:
    """Any batch is one valid Block Kit message: counts first, ten jobs at most, then "and N more"."""
    event = big_batch(size)
    payload = build_message(event)

    assert [] == payload_problems(payload)
    texts = [b["text"]["text"] for b in payload["blocks"] if "text" in b and b["type"] == "section"]
    listing = next(t for t in texts if t.startswith("*Not completed*"))
    assert 10 == listing.count("\n• ")
    outcomes = event["data"]["outcomes"]
    more = sum(outcomes.values()) - outcomes["completed"] - 10  # every non-completed job not shown
    assert listing.endswith(f"_… and {more:,} more_")
    assert len(json.dumps(payload)) < 12_000


def test_ten_thousand_stuck_jobs_fit_slack() -> None:
    """A grouped stuck warning for 10,000 jobs lists a few and counts the rest, within the limits."""
    jobs = [JobState(f"s{i}", {}, None, T0 + i, T0, batch="b") for i in range(10_000)]

    payload = build_message(stuck_batch_event("b", jobs, now=T0 + 20_000))

    assert [] == payload_problems(payload)
    assert "_… and 9,990 more_" in json.dumps(payload, ensure_ascii=False)


def test_a_big_batch_e_mail_has_a_table_and_a_sane_size() -> None:
    """The e-mail of a 10,000-job batch has an HTML table of the listed jobs and stays small."""
    event = big_batch(10_000)
    parts = {"subject": email_subject(event), "text": render.default_text(event), "html": render.default_html(event)}

    raw = flatten(build_email(event, delivery_id="msg_b", sender="w@example.com", recipients=["o@example.com"], **parts))

    assert "[import-watcher] batch migration:2026-11 failed" == parts["subject"]
    assert "<th align='left'>Job</th><th align='left'>Outcome</th><th align='left'>Errored</th>" in parts["html"]
    assert 20 == parts["html"].count("<tr><td>job-")
    assert "… and 630 more" in parts["text"]
    assert len(raw) < 50_000


@pytest.mark.parametrize("kind", KINDS)
def test_console_line_is_one_line_per_kind(kind: str) -> None:
    """Every kind prints exactly one line starting with its symbol."""
    event = render.sample_event(kind)

    line = render.console_line(event)

    assert "\n" not in line
    assert line.startswith(message_from_event(event).symbol + " ")


def test_kinds_read_differently_everywhere() -> None:
    """Titles, subjects and console lines differ between every kind."""
    events = [render.sample_event(kind) for kind in KINDS]

    for describe in (render.title, email_subject, render.console_line):
        assert len(KINDS) == len({describe(e) for e in events})


def test_digest_html_has_tables_and_text_lists_sections() -> None:
    """The digest e-mail draws its slowest jobs and dead deliveries as tables."""
    event = render.sample_event("digest")

    html, text = render.default_html(event), render.default_text(event)

    assert "<h3>Slowest jobs</h3><table" in html and "<h3>Dead deliveries</h3><table" in html
    assert "Dead deliveries:\n  team-slack: job job-6: HTTP 500" in text
    assert "[import-watcher] digest morning" == email_subject(event)


def test_message_to_dict_is_plain_data() -> None:
    """Templates get the message as JSON-able plain data."""
    message = message_from_event(render.sample_event("batch_finished"))

    plain = message.to_dict()

    assert plain == json.loads(json.dumps(plain))
    assert ("failed", "error", "Not completed") == (plain["status"], plain["severity"], plain["sections"][0]["heading"])
