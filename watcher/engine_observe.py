"""One poll's read for the engine: which client asks SendGrid, what its answer means, and
the key state it tells (the default account's KEY_STATE, or a named account's own).

Engine mixes `Observing` in; it is apart only to keep the engine's loop readable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from watcher.clock import Clock
from watcher.errors import ImportNotFound, KeyRefused, TryLater
from watcher.models import JobKind, JobState, Snapshot, terminal_statuses
from watcher.outcomes import KeyAlerts, Recipient
from watcher.policy import NotFound, Observation, Refused, Seen, Transient
from watcher.store.base import StateStore


class ImportSource(Protocol):
    """What the engine needs of a SendGrid client (one per account)."""

    async def get_import(self, job_id: str) -> Snapshot: ...

    async def get_export(self, export_id: str) -> Snapshot: ...


@dataclass
class EngineStats:
    """Counters read by metrics and the shutdown summary."""

    polls: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    crashes: int = 0

    def count_poll(self, result: str) -> None:
        self.polls[result] = self.polls.get(result, 0) + 1


class Observing:
    """Reads a job's state from its account's client and turns the answer into an Observation."""

    store: StateStore
    client: ImportSource  # the default account's: jobs with no account
    clients: dict[str, ImportSource]  # by account name
    default_account: str | None  # the name of `client`'s account, when it has one
    recipients: dict[str, Recipient]
    clock: Clock
    stats: EngineStats
    key: KeyAlerts
    on_deliveries: Callable[[], None]
    _account_keys: dict[str, KeyAlerts]  # the named accounts' own key states
    _unknown_logged: set[tuple[str, str]]

    def _key_of(self, account: str | None) -> KeyAlerts:
        """The key state of the job's account: the default one's (named or not) is the one KEY_STATE."""
        if account is None or account == self.default_account:
            return self.key
        if account not in self._account_keys:
            self._account_keys[account] = KeyAlerts(
                self.store, self.recipients, self.clock, lambda: self.on_deliveries(), account=account
            )
        return self._account_keys[account]

    async def _observe(self, job: JobState, bound: Any) -> Observation:
        key = self._key_of(job.account)
        client = self.client if job.account is None else self.clients.get(job.account)
        if client is None:
            # A job naming an account this replica is not configured with (a replica with a
            # newer config may know it): waited on like a refused key, with one alert, until
            # the account is configured or the deadline ends it as timed_out.
            self.stats.count_poll("unknown_account")
            if key.state != "refused":
                bound.warning("engine.unknown_account", account=job.account, configured=sorted(self.clients))
            await key.unknown_account()
            return Refused()
        try:
            if job.kind is JobKind.EXPORT:
                snapshot = await client.get_export(job.id)
            else:
                snapshot = await client.get_import(job.id)
        except ImportNotFound:
            self.stats.count_poll("not_found")
            await key.works()
            return NotFound()
        except KeyRefused as exc:
            self.stats.count_poll("key_refused")
            await key.refused(exc)
            return Refused()
        except TryLater as exc:
            self.stats.count_poll("transient")
            bound.info("engine.poll_deferred", reason=exc.reason, retry_after=exc.retry_after)
            return Transient(exc.retry_after)
        self.stats.count_poll("ok")
        await key.works()
        self._note_unknown_status(job, snapshot, bound)
        return Seen(snapshot)

    def _note_unknown_status(self, job: JobState, snapshot: Snapshot, bound: Any) -> None:
        if snapshot.status == "pending":
            return  # the common answer, known without normalising it
        job_id, status = job.id, snapshot.normalized_status or ""
        if status in terminal_statuses(job.kind) or status == "pending":
            return
        if (job_id, status) not in self._unknown_logged:
            if len(self._unknown_logged) > 10_000:
                self._unknown_logged.clear()
            self._unknown_logged.add((job_id, status))
            bound.warning("engine.unknown_status", status=snapshot.status)
