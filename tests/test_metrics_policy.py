"""The policy metrics: polls per finished job and the detection delay, as a scrape shows them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from watcher.metrics import OutcomeHook, PollHook, WatcherMetrics
from watcher.models import JobState, Outcome, Snapshot
from watcher.store.memory import MemoryStore

FINISHED_AT = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@dataclass
class Engine:
    """What the metrics hook into: the engine's two callbacks (one set already, as the daemon may)."""

    on_poll: PollHook | None = None
    on_outcome: OutcomeHook | None = None
    outcomes: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Daemon:
    store: MemoryStore
    engine: Engine
    outbox: None = None
    client: None = None
    budget: None = None
    loop_crashes: Mapping[str, int] = field(default_factory=dict)

    async def not_ready_reason(self) -> str | None:
        return None


def finished(polls: int, outcome: Outcome, *, detected_after: float | None, finished_at: str | None) -> JobState:
    snapshot = Snapshot(status=outcome.value, finished_at=finished_at)
    detected = FINISHED_AT + detected_after if detected_after is not None else FINISHED_AT + 99
    return JobState(id="j", labels={}, notify=None, added_at=FINISHED_AT - 600, next_poll_at=0.0, polls=polls,
                    snapshot=snapshot, outcome=outcome, detected_at=detected)


def samples(text: str, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(name):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_a_scrape_shows_polls_per_job_and_detection_delay() -> None:
    """Each recorded outcome adds its polls and (with SendGrid's finished_at) its delay, by kind and outcome."""
    store = MemoryStore()
    await store.open()
    seen: list[str] = []
    engine = Engine(on_outcome=lambda job: seen.append(job.id))
    daemon = Daemon(store, engine)
    metrics = WatcherMetrics()
    metrics.hook_into(daemon)  # type: ignore[arg-type]
    assert engine.on_outcome is not None
    iso = "2027-01-15T08:00:00Z"
    engine.on_outcome(finished(3, Outcome.COMPLETED, detected_after=4.0, finished_at=iso))
    engine.on_outcome(finished(7, Outcome.COMPLETED, detected_after=40.0, finished_at=iso))
    engine.on_outcome(finished(2, Outcome.FAILED, detected_after=-3.0, finished_at=iso))  # clocks apart: 0
    engine.on_outcome(finished(5, Outcome.TIMED_OUT, detected_after=None, finished_at=None))  # no end to be late for
    assert ["j"] * 4 == seen  # the callback set before is kept
    text = (await metrics.render(daemon)).decode()  # type: ignore[arg-type]

    polls = samples(text, "import_watcher_polls_per_job")
    done = (("kind", "import"), ("outcome", "completed"))
    assert 2 == polls[("import_watcher_polls_per_job_count", done)]
    assert 10 == polls[("import_watcher_polls_per_job_sum", done)]
    assert 1 == polls[("import_watcher_polls_per_job_bucket", (("kind", "import"), ("le", "4.0"),
                                                               ("outcome", "completed")))]
    assert 1 == polls[("import_watcher_polls_per_job_count", (("kind", "import"), ("outcome", "timed_out")))]

    delay = samples(text, "import_watcher_detection_delay_seconds")
    assert 44 == delay[("import_watcher_detection_delay_seconds_sum", done)]
    assert 1 == delay[("import_watcher_detection_delay_seconds_bucket", (("kind", "import"), ("le", "5.0"),
                                                                         ("outcome", "completed")))]
    assert 0 == delay[("import_watcher_detection_delay_seconds_sum", (("kind", "import"), ("outcome", "failed")))]
    assert not any(dict(labels).get("outcome") == "timed_out" for _, labels in delay)
    await store.close()
