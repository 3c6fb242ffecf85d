"""The commands that work on the state store or the notifiers: add, status, digest, notify-test.

`watcher.cli` parses and dispatches; the messages and exit codes of these commands live here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from watcher.config import Config
from watcher.errors import StoreBroken, StoreUnavailable

if TYPE_CHECKING:
    from watcher.models import JobState
    from watcher.store.base import StateStore

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
#: notify-test --event: the samples (watcher.notify.samples names) each choice sends.
SAMPLES = {
    "outcome": ("errored",),
    "batch": ("batch_finished",),
    "stuck": ("stuck", "stuck batch"),
    "digest": ("digest",),
    "export": ("export ready", "export failure", "export timed_out", "export not_found"),
    "backup": ("backup succeeded", "backup failed"),
    "all": ("errored", "batch_finished", "stuck", "stuck batch", "digest", "export ready", "export failure",
            "export timed_out", "export not_found", "backup succeeded", "backup failed"),
}


def say(message: str) -> None:
    """One line on stderr, prefixed with the program name, with URLs and secrets masked."""
    from watcher.net import mask_urls_in_text
    from watcher.schema import redact

    print(f"import-watcher: {redact(mask_urls_in_text(message))}", file=sys.stderr)


async def store_command(config: Config, args: argparse.Namespace, since: float) -> int:
    """The commands that work on the state store or the notifiers."""
    if args.command == "add":
        # --kind and --account are optional flags of `add` (older parsers lack them: the defaults).
        kind, account = getattr(args, "kind", None) or "import", getattr(args, "account", None)
        return await _add(
            config, args.job_id, args.label, args.notify, again=args.again, batch=args.batch, kind=kind, account=account
        )
    if args.command == "status" and args.batch is not None:
        return await _status_batch(config, args.batch, as_json=args.json)
    if args.command == "status":
        return await _status(config, args.job_id, as_json=args.json)
    if args.command == "digest":
        return await _digest(config, (since, args.since), args.name, send=args.send, as_json=args.json)
    if args.command == "notify-test":
        return await notify_test(config, args.name, SAMPLES[args.event])
    raise ValueError(f"unknown command {args.command}")  # pragma: no cover - argparse guards it


def keeps_nothing(state_url: str) -> bool:
    """A state URL whose store ends with the process: `add` would keep nothing."""
    scheme, _, rest = state_url.partition("://")
    return scheme.lower() == "memory" or (scheme.lower() == "sqlite" and rest in ("", "/:memory:"))


@contextlib.asynccontextmanager
async def opened(config: Config) -> AsyncIterator[StateStore]:
    """The configured store, opened and closed again; its errors reach main() as they are."""
    from watcher.store import open_store

    store = open_store(config.state.url)
    await store.open()
    try:
        yield store
    finally:
        with contextlib.suppress(StoreUnavailable, StoreBroken):
            await store.close()


def _labels(items: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label expects K=V, got {item!r}")
        parsed[key] = value
    return parsed


async def _add(
    config: Config, job_id: str, labels: list[str], notify: list[str] | None, *, again: bool, batch: str | None,
    kind: str = "import", account: str | None = None,
) -> int:  # fmt: skip
    from watcher.clock import SystemClock
    from watcher.models import JobRef, parse_kind, validate_account_name
    from watcher.sources.base import Intake, check_labels, same_job

    if keeps_nothing(config.state.url):
        raise ValueError(f"state.url is {config.state.url}: nothing `add` stores would be kept; "
                         "point state.url at the daemon's SQLite file or Redis")
    parsed = _labels(labels)
    check_labels(parsed)
    try:
        job_kind = parse_kind(kind)
    except ValueError as exc:
        raise ValueError(f"--kind: {exc}") from None
    try:
        account = None if account is None else validate_account_name(account)
    except ValueError as exc:
        raise ValueError(f"--account: {exc}") from None
    ref = JobRef(job_id, parsed, tuple(notify) if notify else None, batch, job_kind, account)
    async with opened(config) as store:
        intake = Intake(store, config.polling, SystemClock(), config.notifier_names, tuple(config.accounts))
        intake.check_notify(ref.notify)
        intake.check_account(ref.account)
        if not again and (tomb := (await store.tombstones([job_id])).get(job_id)) is not None:
            print(f"{job_id}: {_buried(tomb.reason.value, tomb.at)}; nothing new (add --again starts a new watch)")
            return EXIT_OK
        if await intake.add(ref, again=again):
            print(f"{job_id}: now watching")
            return EXIT_OK
        job = await store.get_job(job_id)
    if job is not None and not same_job(ref, job.kind, job.account):
        where = f" in account {job.account}" if job.account else ""
        say(f"{job_id}: already tracked as an {job.kind.value}{where}; nothing changed")
        return EXIT_RUNTIME
    if job is not None and job.outcome is not None and not again:
        print(f"{job_id}: already finished ({job.outcome.value}); nothing new (add --again starts a new watch)")
    else:
        print(f"{job_id}: already tracked")
    return EXIT_OK


def _buried(reason: str, at: float) -> str:
    from watcher.events import iso

    return f"was stopped at {iso(at)}" if reason == "stopped" else f"already finished (purged at {iso(at)})"


async def _status(config: Config, job_id: str | None, *, as_json: bool) -> int:
    from watcher.status import job_views

    async with opened(config) as store:
        if job_id is not None:
            job = await store.get_job(job_id)
            if job is None:
                say(await _untracked(store, job_id))
                return EXIT_RUNTIME
            jobs = [job]
        else:
            jobs = await store.list_jobs()
        views = await job_views(store, jobs, await _expected_finish(store))
    print(json.dumps(views, indent=2) if as_json else _table(views))
    return EXIT_OK


async def _status_batch(config: Config, name: str, *, as_json: bool) -> int:
    from watcher.status import batch_line, batch_view, job_views

    async with opened(config) as store:
        batch = await store.get_batch(name)
        if batch is None:
            say(f"batch {name} is not known")
            return EXIT_RUNTIME
        jobs = await store.batch_jobs(name)
        view, views = batch_view(batch, jobs), await job_views(store, jobs, await _expected_finish(store))
    text = json.dumps({"batch": view, "jobs": views}, indent=2) if as_json else batch_line(view)
    print(text if as_json else f"{text}\n{_table(views)}")
    return EXIT_OK


async def _expected_finish(store: StateStore) -> Callable[[JobState], float | None]:
    """A running job's expected finish, from the run times the daemon learned (stored; nothing learned: None)."""
    from watcher.learned import LearnedSchedules

    learned = LearnedSchedules(store)
    await learned.load()
    now = time.time()
    return lambda job: learned.expected_finish(job, now)


def _table(views: Sequence[dict[str, Any]]) -> str:
    """The status table, and a line for each running job whose finish can be told: when, and the next poll."""
    from watcher.status import status_table

    notes = [f"{v['id']}: expected to finish about {v['expected_finish_at']}, next poll {v['next_poll_at']}"
             for v in views if v.get("expected_finish_at")]
    return "\n".join([status_table(views), *(["", *notes] if notes else [])])


def parse_since(text: str) -> float:
    """`digest --since` in seconds: a duration longer than 0s."""
    from watcher.schema import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"--since: {exc}") from None
    if seconds <= 0:
        raise ValueError("--since: must be longer than 0s")
    return seconds


async def _digest(
    config: Config, since: tuple[float, str], name: str | None, *, send: bool, as_json: bool
) -> int:
    """`digest`: `since` is (seconds, as given); an unnamed digest is named after its period, e.g. last-24h."""
    from watcher.notify.render import default_text
    from watcher.schedules import build_digest, send_digest

    chosen = [d for d in config.digests if name is None or d.name == name]
    if name is not None and not chosen:
        known = ", ".join(d.name for d in config.digests) or "none"
        raise ValueError(f"unknown digest {name!r} (configured: {known})")
    if send and keeps_nothing(config.state.url):
        raise ValueError(f"state.url is {config.state.url}: a digest queued there would never be delivered; "
                         "point state.url at the daemon's SQLite file or Redis")
    wanted = {n for d in chosen for n in d.notify} if config.digests else set(config.notifier_names)
    recipients = {n.name: n for n in config.notifiers if n.name in wanted}
    if send and not recipients:
        raise ValueError("no notifier to send the digest to: configure notifiers (or a digest's notify)")
    now = time.time()
    async with opened(config) as store:
        titled = name or (chosen[0].name if len(chosen) == 1 else f"last-{since[1].strip()}")
        event = await build_digest(store, name=titled, since=now - since[0], until=now)
        if send:
            count = await send_digest(store, event=event, notifiers=recipients, now=now, period_key=None)
            noun = "delivery" if count == 1 else "deliveries"
            print(f"digest {event['data']['digest']}: queued for {', '.join(recipients)} ({count} new {noun}; "
                  "the running daemon delivers them)")
            return EXIT_OK
    print(json.dumps(event, indent=2) if as_json else default_text(event))
    return EXIT_OK


async def _untracked(store: StateStore, job_id: str) -> str:
    tomb = (await store.tombstones([job_id])).get(job_id)
    if tomb is None:
        return f"job {job_id} is not tracked"
    return f"job {job_id} is not tracked: it {_buried(tomb.reason.value, tomb.at)}"


async def notify_test(config: Config, name: str | None, samples: Sequence[str] = SAMPLES["outcome"]) -> int:
    from watcher.events import delivery_id
    from watcher.models import Delivery
    from watcher.net import configured_session, mask_urls_in_text
    from watcher.notify.registry import build_notifiers
    from watcher.notify.render import sample_event
    from watcher.schema import redact

    notifiers = build_notifiers(config)
    if name is not None and name not in notifiers:
        raise ValueError(f"unknown notifier {name!r} (configured: {', '.join(notifiers) or 'none'})")
    chosen = [notifiers[name]] if name else list(notifiers.values())
    failures = 0
    now = time.time()
    async with configured_session() as session:
        for notifier in chosen:
            await notifier.start(session)
            try:
                for sample in samples:
                    # One id per sample: receivers that deduplicate by webhook-id must see each one.
                    delivery = Delivery(
                        id=delivery_id("notify-test", notifier.name, sample, str(now)), notifier=notifier.name,
                        event=sample_event(sample), created_at=now, next_attempt_at=now, deadline_at=now,
                    )
                    who = notifier.name if samples == SAMPLES["outcome"] else f"{notifier.name}: {sample}"
                    try:
                        await notifier.send(delivery)
                        print(f"{who}: sent")
                    except Exception as exc:  # every failure is reported per sample, the others still tried
                        failures += 1
                        print(f"{who}: FAILED: {redact(mask_urls_in_text(f'{type(exc).__name__}: {exc}'))}")
            finally:
                await notifier.close()
    return EXIT_RUNTIME if failures else EXIT_OK
