"""Prometheus metrics of one daemon, kept in its own registry (never the process-global one).

Two kinds of numbers: events counted as they happen (polls, deliveries, their
latency, and per finished job its polls and detection delay, so an operator sees the
poll policy work), fed by the engine's `on_poll` and `on_outcome` and the outbox's
`on_result` hooks; and
state read at scrape time (store totals, the SendGrid client's answer counters,
the rate budget), so a scrape always shows the present and nothing is
double-counted when several replicas share one store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watcher.errors import StoreBroken, StoreUnavailable
from watcher.events import parse_iso
from watcher.models import Delivery, JobState, StoreCounts

PREFIX = "import_watcher"
# The engine reports the observation class name; these are the labels EngineStats uses too.
POLL_RESULTS: Mapping[str, str] = {
    "seen": "ok",
    "notfound": "not_found",
    "refused": "key_refused",
    "transient": "transient",
}
POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
POLLS_PER_JOB_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
DETECTION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Without a store count of batches, at most this many are listed per state at a scrape.

PollHook = Callable[[str, float], None]
ResultHook = Callable[[Delivery, str, float], None]
OutcomeHook = Callable[[JobState], None]


class _Counts(Protocol):
    async def counts(self) -> StoreCounts: ...

    async def batch_counts(self) -> Mapping[str, int]: ...


class _Engine(Protocol):
    on_poll: PollHook | None

    @property
    def outcomes(self) -> Mapping[str, int]: ...


@runtime_checkable
class _Outcomes(Protocol):
    """An engine that reports each job it recorded an outcome for (as recorded)."""

    on_outcome: OutcomeHook | None


class _Outbox(Protocol):
    on_result: ResultHook | None


class _Client(Protocol):
    @property
    def responses(self) -> Mapping[str, int]: ...

    @property
    def rate_limited(self) -> int: ...


class _Budget(Protocol):
    @property
    def remaining(self) -> float | None: ...


class Watched(Protocol):
    """What the metrics read of a running daemon (the Daemon provides it; no import of it here)."""

    @property
    def store(self) -> _Counts: ...

    @property
    def engine(self) -> _Engine | None: ...

    @property
    def outbox(self) -> _Outbox | None: ...

    @property
    def client(self) -> _Client | None: ...

    @property
    def budget(self) -> _Budget | None: ...

    @property
    def loop_crashes(self) -> Mapping[str, int]: ...

    async def not_ready_reason(self) -> str | None: ...


class WatcherMetrics:
    """The metrics of one daemon; `hook_into(daemon)` wires the engine and outbox callbacks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.polls = Counter(f"{PREFIX}_polls", "SendGrid polls by result.", ["result"], registry=r)
        self.poll_seconds = Histogram(
            f"{PREFIX}_poll_duration_seconds", "Time of one poll, budget wait included.",
            buckets=POLL_BUCKETS, registry=r,
        )
        self.deliveries = Counter(
            f"{PREFIX}_deliveries", "Delivery attempts by notifier and result (delivered, retry, dead).",
            ["notifier", "result"], registry=r,
        )
        self.delivery_seconds = Histogram(
            f"{PREFIX}_delivery_duration_seconds", "Time of one delivery attempt.",
            ["notifier"], buckets=DELIVERY_BUCKETS, registry=r,
        )
        self.jobs = Gauge(f"{PREFIX}_jobs", "Tracked jobs by state, from the store at scrape time.", ["state"],
                          registry=r)
        self.outbox = Gauge(
            f"{PREFIX}_outbox_deliveries", "Deliveries in the outbox by state, from the store at scrape time.",
            ["state"], registry=r,
        )
        self.batches = Gauge(
            f"{PREFIX}_batches", "Batches by state (open, finished), from the store at scrape time.", ["state"],
            registry=r,
        )
        self.store_up = Gauge(f"{PREFIX}_store_up", "1 when the state store answered the last scrape.", registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the daemon is ready (as /readyz).", registry=r)
        self.polls_per_job = Histogram(
            f"{PREFIX}_polls_per_job", "Polls a finished job took, by kind and outcome.", ["kind", "outcome"],
            buckets=POLLS_PER_JOB_BUCKETS, registry=r,
        )
        self.detection_delay = Histogram(
            f"{PREFIX}_detection_delay_seconds",
            "From SendGrid's finished_at to the poll that saw the job end, by kind and outcome (jobs with a"
            " finished_at only).", ["kind", "outcome"], buckets=DETECTION_BUCKETS, registry=r,
        )
        for result in POLL_RESULTS.values():
            self.polls.labels(result)  # present at 0 from the start, so rate() works at once

    def hook_into(self, daemon: Watched) -> None:
        """Count the daemon's polls and deliveries, keeping any callback already set."""
        engine, outbox = daemon.engine, daemon.outbox
        if engine is not None:
            engine.on_poll = _chain_poll(engine.on_poll, self.observe_poll)
        if isinstance(engine, _Outcomes):
            engine.on_outcome = _chain_outcome(engine.on_outcome, self.observe_outcome)
        if outbox is not None:
            outbox.on_result = _chain_result(outbox.on_result, self.observe_delivery)
        self.registry.register(_DaemonCollector(daemon))

    def observe_poll(self, kind: str, seconds: float) -> None:
        self.polls.labels(POLL_RESULTS.get(kind, kind)).inc()
        self.poll_seconds.observe(max(0.0, seconds))

    def observe_outcome(self, job: JobState) -> None:
        """A job whose outcome was just recorded: its polls, and how late it was seen when SendGrid said when
        it ended (a clock skew that puts the end after the detection counts as 0)."""
        if job.outcome is None:
            return
        labels = (job.kind.value, job.outcome.value)
        self.polls_per_job.labels(*labels).observe(job.polls)
        finished = parse_iso(job.snapshot.finished_at) if job.snapshot is not None else None
        if finished is not None and job.detected_at is not None:
            self.detection_delay.labels(*labels).observe(max(0.0, job.detected_at - finished.timestamp()))

    def observe_delivery(self, delivery: Delivery, result: str, seconds: float) -> None:
        self.deliveries.labels(delivery.notifier, result).inc()
        self.delivery_seconds.labels(delivery.notifier).observe(max(0.0, seconds))

    async def render(self, daemon: Watched) -> bytes:
        """Refresh the scrape-time gauges from the store, then the text exposition."""
        try:
            counts: StoreCounts | None = await daemon.store.counts()
        except (StoreUnavailable, StoreBroken):
            counts = None
        self.store_up.set(0 if counts is None else 1)
        self.ready.set(1 if await daemon.not_ready_reason() is None else 0)
        if counts is not None:
            _set_all(self.jobs, counts.jobs_by_state)
            _set_all(self.outbox, counts.deliveries_by_state)
            try:
                _set_all(self.batches, await daemon.store.batch_counts())
            except (StoreUnavailable, StoreBroken):
                self.batches.clear()
        return generate_latest(self.registry)


def _set_all(gauge: Gauge, values: Mapping[str, int]) -> None:
    # clear() first: a state that emptied (e.g. purged jobs) must not keep its old value.
    gauge.clear()
    for label, value in values.items():
        gauge.labels(label).set(value)


def _chain_poll(first: PollHook | None, second: PollHook) -> PollHook:
    if first is None:
        return second

    def both(kind: str, seconds: float) -> None:
        first(kind, seconds)
        second(kind, seconds)

    return both


def _chain_outcome(first: OutcomeHook | None, second: OutcomeHook) -> OutcomeHook:
    if first is None:
        return second

    def both(job: JobState) -> None:
        first(job)
        second(job)

    return both


def _chain_result(first: ResultHook | None, second: ResultHook) -> ResultHook:
    if first is None:
        return second

    def both(delivery: Delivery, result: str, seconds: float) -> None:
        first(delivery, result, seconds)
        second(delivery, result, seconds)

    return both


class _DaemonCollector(Collector):
    """Counters the client, engine and budget already keep, read at scrape time."""

    def __init__(self, daemon: Watched) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        client, engine, budget = self.daemon.client, self.daemon.engine, self.daemon.budget
        responses = CounterMetricFamily(
            f"{PREFIX}_sendgrid_responses", "SendGrid answers by HTTP status, and failures by kind.",
            labels=["status"],
        )
        limited = CounterMetricFamily(f"{PREFIX}_sendgrid_rate_limited", "SendGrid answers with HTTP 429.")
        outcomes = CounterMetricFamily(
            f"{PREFIX}_outcomes", "Final outcomes detected by this process.", labels=["outcome"]
        )
        crashes = CounterMetricFamily(
            f"{PREFIX}_loop_crashes", "Unexpected exceptions per supervised loop (each was restarted).",
            labels=["loop"],
        )
        for loop, count in sorted(self.daemon.loop_crashes.items()):
            crashes.add_metric([loop], count)
        remaining = GaugeMetricFamily(
            f"{PREFIX}_rate_budget_remaining",
            "SendGrid requests left in the current rate-limit window as last known (absent when unknown).",
        )
        if client is not None:
            for status, count in sorted(client.responses.items()):
                responses.add_metric([status], count)
            limited.add_metric([], client.rate_limited)
        if engine is not None:
            for outcome, count in sorted(engine.outcomes.items()):
                outcomes.add_metric([outcome], count)
        left = budget.remaining if budget is not None else None
        if left is not None:
            remaining.add_metric([], left)
        return [responses, limited, outcomes, crashes, remaining]
