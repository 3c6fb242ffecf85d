"""Default wording, sandboxed templates, and the entry-point registry of notifier types."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from watcher.errors import ConfigError
from watcher.notify import render
from watcher.notify.console import ConsoleNotifier
from watcher.notify.email import EmailNotifier, email_subject
from watcher.notify.registry import load_notifier_types
from watcher.notify.slack import SlackNotifier
from watcher.notify.webhook import WebhookNotifier
from watcher.schema import Secret

OUTCOMES = ["completed", "errored", "failed", "timed_out", "not_found", "alert"]


# --- default wording ----------------------------------------------------------


def test_default_titles_are_distinct_per_outcome() -> None:
    """Every outcome and the alert read differently, in title, subject and console line."""
    events = [render.sample_event(o) for o in OUTCOMES]

    for describe in (render.title, email_subject, render.console_line):
        assert len(OUTCOMES) == len({describe(e) for e in events})


@pytest.mark.parametrize(
    ("outcome", "start"),
    [
        (
            "completed",
            "✔ completed  job=0b5f1c9e-6a3d-4a8e-9f43-2c6a1f0d9b11 upsert requested=1000",
        ),
        ("errored", "⚠ errored    job="),
        ("not_found", "? not_found  job="),
        ("alert", "! watcher.alert key_refused: SendGrid refused the API key"),
    ],
)
def test_console_line(outcome: str, start: str) -> None:
    """The console line leads with symbol, outcome and job, then counts, polls and labels."""
    line = render.console_line(render.sample_event(outcome))

    assert line.startswith(start)
    assert "\n" not in line


def test_console_line_ends_with_polls_and_labels() -> None:
    """Polls and labels close the line, as in the README example."""
    line = render.console_line(render.sample_event("completed"))

    assert line.endswith("polls=7 labels=team=growth,list=newsletter")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.2, "0s"), (45, "45s"), (375, "6m 15s"), (3600, "1h"), (90061, "1d 1h 1m 1s")],
)
def test_format_duration(seconds: float, shown: str) -> None:
    """Durations read as d/h/m/s, zero parts left out."""
    assert shown == render.format_duration(seconds)


def test_duration_needs_both_timestamps() -> None:
    """finished_at - started_at when both are present, else None."""
    event = render.sample_event("completed")
    assert 375.0 == render.duration_seconds(event)
    assert render.duration_seconds(render.sample_event("timed_out")) is None


def test_default_html_escapes_user_text() -> None:
    """Labels and reasons are HTML-escaped in the default HTML body."""
    event = render.sample_event("errored")
    event["data"]["labels"] = {"team": "<script>x</script>"}

    html = render.default_html(event)

    assert "&lt;script&gt;" in html and "<script>" not in html


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_sample_event_types(outcome: str) -> None:
    """sample_event gives the DESIGN.md type for each outcome, and the alert type."""
    expected = "watcher.alert" if outcome == "alert" else f"contact_import.{outcome}"
    assert expected == render.sample_event(outcome)["type"]


def test_sample_events_cover_every_kind_of_event() -> None:
    """`check` renders templates against every outcome, the three alert kinds, a batch, stuck warnings, a digest,
    every export outcome and both backup outcomes."""
    assert [
        "completed", "errored", "failed", "timed_out", "not_found",
        "alert key_refused", "alert key_accepted", "alert delivery_dead",
        "batch_finished", "stuck", "stuck batch", "digest",
        "export ready", "export failure", "export timed_out", "export not_found",
        "backup succeeded", "backup failed",
    ] == [name for name, _ in render.sample_events()]
    assert ["key_refused", "key_accepted", "delivery_dead"] == [
        event["data"]["alert"] for name, event in render.sample_events() if name.startswith("alert")
    ]


def test_sample_event_rejects_unknown_outcomes() -> None:
    """An unknown outcome is a ValueError, not a half-made event."""
    with pytest.raises(ValueError, match="nope"):
        render.sample_event("nope")


# --- templates -----------------------------------------------------------------


def test_templates_render_with_the_event_and_helpers() -> None:
    """A template sees type, timestamp, data and helpers such as wording and duration."""
    source = "{{ type }} {{ data.job_id[:8] }} {{ wording }} in {{ duration }} {{ counts.errored }}"

    text = render.render_template("text", source, render.sample_event("errored"))

    assert "contact_import.errored 0b5f1c9e completed with errors in 6m 15s 10" == text


def test_html_templates_are_autoescaped_and_text_ones_are_not() -> None:
    """Only the html template escapes interpolated values."""
    event = render.sample_event("completed")
    event["data"]["labels"] = {"team": "<b>"}
    source = "{{ data.labels.team }}"

    assert ("&lt;b&gt;", "<b>") == (
        render.render_template("html", source, event),
        render.render_template("text", source, event),
    )


@pytest.mark.parametrize(
    ("templates", "problems"),
    [
        ({"title": "{{ data.job_id | default(data.alert) }} {{ wording }}", "text": "{{ default_text }}"}, []),
        ({"text": "{{ data.errors.rows }} rows rejected"}, [("text", "sample completed event")]),
        ({"title": "{{ data.job_id }} {{ wording }}"}, [("title", "sample alert key_refused event")]),
        ({"text": "{{ data.notifier }} is down"}, [("text", "sample completed event")]),
        ({"text": "{% if outcome == 'alert' and data.alert == 'delivery_dead' %}{{ data.nope }}{% endif %}"},
         [("text", "sample alert delivery_dead event")]),
        ({"html": "<p>{{ title }}</p>"}, []),
        ({"title": "{% if %}"}, [("title", "template syntax error")]),
        ({"text": "{{ data.no_such_key }}"}, [("text", "template fails on a sample")]),
        ({"text": "{{ nope }}"}, [("text", "'nope' is undefined")]),
        ({"subject": "x"}, [("subject", "unknown template key")]),
        ({"text": "{{ ''.__class__.__mro__ }}"}, [("text", "access denied by the sandbox")]),
        ({"text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}, [("text", "sandbox")]),
        ({"text": "{{ data.labels.clear() }}"}, [("text", "sandbox")]),
    ],
)
def test_validate_templates(templates: dict[str, str], problems: list[tuple[str, str]]) -> None:
    """Syntax errors, undefined names, unknown keys and sandbox escapes are all reported."""
    found = render.validate_templates(templates)

    assert [key for key, _ in problems] == [key for key, _ in found]
    for (_, fragment), (_, message) in zip(problems, found, strict=True):
        assert fragment in message


def test_context_gains_message_and_batch() -> None:
    """Templates see the Message as plain data, and a batch summary's data as `batch`."""
    source = "{{ message.severity }} {{ batch.jobs }} {{ batch.not_completed[0].job_id }} {{ message.sections[0].more }}"

    text = render.render_template("text", source, render.sample_event("batch_finished"))

    assert "error 34 nightly-2026-11-27-31 0" == text
    assert "batch" not in render.template_context(render.sample_event("errored"))


README_TITLE = "{{ emoji }} {{ data.job_id | default(data.alert) }} {{ wording }}"


def test_a_per_job_template_still_passes_check_and_summaries_use_the_default() -> None:
    """The README's per-job title is valid; on a batch summary it quietly gives way to the default title."""
    event = render.sample_event("batch_finished")

    with structlog.testing.capture_logs() as logs:
        title = render.render_override({"title": README_TITLE}, "title", event, notifier="n")

    assert [] == render.validate_templates({"title": README_TITLE, "text": "{{ default_text }}"})
    assert title is None
    assert [] == [e for e in logs if e["log_level"] == "warning"]


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("{{ message.title }} {% if outcome != 'alert' %}{{ data.job_id }}{% endif %}", "sample batch_finished event"),
        ("{% if batch is defined %}{{ batch.nope }}{% endif %}", "batch summaries have no data.job_id"),
        ("{{ message.title }}{% if message.kind == 'watcher.digest' %}{{ data.nope }}{% endif %}",
         "sample digest event"),
    ],
)
def test_a_template_written_for_every_kind_is_checked_against_summaries(source: str, fragment: str) -> None:
    """A template using `message` or `batch` is rendered against batch, stuck and digest samples too."""
    ((key, problem),) = render.validate_templates({"text": source})

    assert "text" == key
    assert fragment in problem


def test_sandbox_escape_at_send_time_falls_back_without_leaking() -> None:
    """A template poking at internals renders the default text and logs a warning."""
    event = render.sample_event("completed")
    templates = {"text": "{{ ''.__class__.__mro__ }}"}

    with structlog.testing.capture_logs() as logs:
        text = render.rendered(templates, "text", event, render.default_text, notifier="n")

    assert render.default_text(event) == text
    assert "<class" not in text
    assert [("notify.template_failed", "n", "text")] == [(e["event"], e["notifier"], e["template"]) for e in logs]


# --- console notifier ----------------------------------------------------------


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_console_notifier_prints_one_line(capsys, make_delivery, stream: str) -> None:
    """The console notifier writes exactly one line to the chosen stream."""
    notifier = ConsoleNotifier("console", {"stream": stream})

    await notifier.send(make_delivery(render.sample_event("completed")))

    captured = capsys.readouterr()
    written = captured.out if stream == "stdout" else captured.err
    assert [render.console_line(render.sample_event("completed"))] == written.splitlines()


async def test_console_notifier_prints_a_batch_summary(capsys, make_delivery) -> None:
    """A batch summary is one console line with its worst outcome and counts by outcome."""
    notifier = ConsoleNotifier("console", {})

    await notifier.send(make_delivery(render.sample_event("batch_finished")))

    assert "✖ failed     batch=nightly-2026-11-27 jobs=34 failed=1 errored=2 completed=31\n" == capsys.readouterr().out


async def test_console_text_template(capsys, make_delivery) -> None:
    """A text template replaces the console line."""
    notifier = ConsoleNotifier("console", {}, templates={"text": "{{ outcome }}!"})

    await notifier.send(make_delivery(render.sample_event("failed")))

    assert "failed!\n" == capsys.readouterr().out


# --- registry --------------------------------------------------------------------


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    """Each test sees sys.path as it made it; later tests see the real entry points again."""
    load_notifier_types.cache_clear()
    yield
    load_notifier_types.cache_clear()


def add_distribution(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution: NAME-1.0.dist-info with METADATA and entry_points.txt."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


PAGER = """
    from typing import ClassVar
    from watcher.notify.base import BaseNotifier
    from watcher.schema import Field, secret, string

    class PagerNotifier(BaseNotifier):
        type_name: ClassVar[str] = "pager"
        fields = (Field("service", string, required=True), Field("token", secret, secret=True))

        async def send(self, delivery):
            return None
"""


def test_registry_loads_the_four_builtins(fresh_registry) -> None:
    """console, webhook, slack and email come from this package's own entry points."""
    types = load_notifier_types()

    assert {
        "console": ConsoleNotifier,
        "webhook": WebhookNotifier,
        "slack": SlackNotifier,
        "email": EmailNotifier,
    } == {name: types[name] for name in ("console", "webhook", "slack", "email")}


def test_result_is_cached(fresh_registry) -> None:
    """Two calls return the same mapping until the cache is cleared."""
    assert load_notifier_types() is load_notifier_types()


def test_third_party_notifier_is_found_and_masks_its_secrets(
    fresh_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin distribution on sys.path adds its type; its secret fields are masked."""
    add_distribution(
        tmp_path,
        "acme_pager",
        "[import_watcher.notifiers]\npager = acme_pager_mod:PagerNotifier\n",
        {"acme_pager_mod": PAGER},
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    pager_type = load_notifier_types()["pager"]
    pager = pager_type("oncall", {"service": "db", "token": Secret("pd-token-1")})

    assert {"name": "oncall", "type": "pager", "service": "db", "token": "********"} == (pager.describe())


def test_duplicate_type_name_is_a_config_error(fresh_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second distribution claiming `webhook` stops start-up, naming both targets."""
    add_distribution(
        tmp_path,
        "rogue_hooks",
        "[import_watcher.notifiers]\nwebhook = rogue_mod:PagerNotifier\n",
        {"rogue_mod": PAGER.replace('"pager"', '"webhook"')},
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError) as caught:
        load_notifier_types()

    (problem,) = caught.value.problems
    assert problem.startswith("notifier type 'webhook' is registered twice: ")
    assert "rogue_mod:PagerNotifier" in problem
    assert "watcher.notify.webhook:WebhookNotifier" in problem


@pytest.mark.parametrize(
    ("target", "modules", "fragment"),
    [
        ("missing_mod:Thing", {}, "failed to import: ModuleNotFoundError"),
        ("broken_mod:Thing", {"broken_mod": "raise RuntimeError('boom')"}, "RuntimeError: boom"),
        ("plain_mod:thing", {"plain_mod": "thing = 42"}, "is not a class"),
        ("plain_mod2:Thing", {"plain_mod2": "class Thing: pass"}, "is not a notifier"),
    ],
)
def test_broken_plugins_are_clear_config_errors(
    fresh_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target, modules, fragment
) -> None:
    """A plugin that cannot be imported or is no notifier is named in a ConfigError."""
    add_distribution(tmp_path, "bad_plugin", f"[import_watcher.notifiers]\nbad = {target}\n", modules)
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError) as caught:
        load_notifier_types()

    (problem,) = caught.value.problems
    assert problem.startswith(f"notifier type 'bad' ({target})")
    assert fragment in problem
