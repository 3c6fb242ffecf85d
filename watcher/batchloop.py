"""The batch loop: claims settled batches and writes each one's summary, exactly once across replicas.

A batch is settled when all its jobs are final and none joined or ended for `batches.settle`.
The store hands it out under a lease like a due job; the summary's deliveries are written by
`finish_batch` in the transaction that marks the batch finished, fenced by the lease token and
refused when a job joined since the claim. So replicas racing on one batch, or a replica killed
while summarising, still leave exactly one summary per settled state, delivered by the outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import structlog

from watcher import batches
from watcher.claimloop import ClaimLoop
from watcher.clock import Clock
from watcher.errors import StoreUnavailable
from watcher.models import Batch, Delivery, JobState
from watcher.outcomes import Recipient, make_delivery
from watcher.routing import Route, targets
from watcher.store.base import StateStore
from watcher.supervise import StoreHealth

log = structlog.get_logger("watcher.batchloop")


def summary_deliveries(
    batch: Batch,
    jobs: Sequence[JobState],
    now: float,
    *,
    routes: Sequence[Route],
    recipients: Mapping[str, Recipient],
    public_url: str | None,
) -> tuple[str, list[Delivery]]:
    """The next summary's id and its deliveries: routed by the batch's worst outcome and common labels
    (a job's own `notify` list does not apply), to the notifiers whose `batches.summary` is on."""
    covered = batches.uncovered_jobs(batch, jobs)
    summary_id = batches.summary_id(batch.name, batch.summaries)
    event = batches.batch_event(batch, covered, now=now, summary_id=summary_id, public_url=public_url)
    data = event["data"]
    job_types = {job.snapshot.job_type if job.snapshot else None for job in covered}
    names = targets(
        routes, recipients, outcome=data["status"], labels=data["labels"],
        job_type=job_types.pop() if len(job_types) == 1 else None,
    )
    # Ids from the summary id: a replica that builds the same summary builds the same deliveries.
    deliveries = [make_delivery(recipients[n], event, now, None, summary_id) for n in names
                  if recipients[n].batches.summary]
    return summary_id, deliveries


class BatchLoop(ClaimLoop):
    """Summarises settled batches; one per process, supervised by the daemon."""

    name, crashed, loop_log = "batches", "summary_crashed", log
    lost_event, id_key = "batches.lease_lost", "batch"

    def __init__(
        self,
        *,
        store: StateStore,
        clock: Clock,
        owner: str,
        settle: float,
        recipients: Sequence[Recipient],
        routes: Sequence[Route] = (),
        public_url: str | None = None,
        lease: float = 60.0,
        limit: int = 8,
        store_health: StoreHealth | None = None,
        on_deliveries: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, limit=limit, lease=lease, store_health=store_health)
        self.store = store
        self.owner = owner
        self.settle = settle
        self.recipients = {r.name: r for r in recipients}
        self.routes = tuple(routes)
        self.public_url = public_url
        self.on_deliveries = on_deliveries or (lambda: None)
        self.summaries = 0  # written by this process
        self._soon: float | None = None  # when a batch seen changing may have settled

    def batch_changed(self) -> None:
        """A batched job ended here: its batch may settle `settle` from now, so look then (not a second later)."""
        at = self.clock.now() + self.settle
        self._soon = at if self._soon is None else min(self._soon, at)
        self.wake()

    async def _next_due_at(self) -> float | None:
        soon, now = self._soon, self.clock.now()
        if soon is not None and soon <= now:
            self._soon = None  # looked at it; other replicas' batches are found by the recheck
        return soon

    async def _renew(self, leases: Sequence[tuple[str, str]]) -> list[bool]:
        return await self.store.renew_batches(leases, now=self.clock.now(), lease=self.lease)

    async def _claim(self) -> int:
        room = self._room()
        if room <= 0 or self._stopping:
            return 0
        claimed = await self.store.claim_settled_batches(
            now=self.clock.now(), settle=self.settle, limit=room, owner=self.owner, lease=self.lease
        )
        for batch in claimed:
            if batch.lease is None:
                continue
            self._hold(batch.name, batch.lease.token)
            self._start(asyncio.create_task(self._summarise(batch, batch.lease.token), name=f"batch:{batch.name}"))
        return len(claimed)

    async def _summarise(self, batch: Batch, token: str) -> None:
        """Build the batch's next summary and write it with the batch's finish, or give the claim back."""
        try:
            jobs = await self.store.batch_jobs(batch.name)
            now = self.clock.now()
            summary_id, deliveries = summary_deliveries(
                batch, jobs, now, routes=self.routes, recipients=self.recipients, public_url=self.public_url
            )
            written = await self.store.finish_batch(
                batch.name, token=token, now=now, summary_id=summary_id, deliveries=deliveries
            )
        except asyncio.CancelledError:
            await self._give_back(batch.name, token, self.store.release_batch)
            raise
        except StoreUnavailable as exc:
            self._let_go(batch.name, token)  # the lease runs out; claimed again then
            self.store_health.failed(exc)
            log.warning("batches.finish_failed", batch=batch.name, error=str(exc))
            return
        except Exception:
            await self._give_back(batch.name, token, self.store.release_batch)
            raise  # logged by the loop with its traceback
        self.store_health.succeeded()
        if not written:
            # A job joined (or the lease lapsed) since the claim: it settles again later.
            self._lease_lost(batch.name, token, reason="changed or lease lost")
            return
        self._let_go(batch.name, token)
        self.summaries += 1
        log.info("batch.finished", batch=batch.name, summary_id=summary_id, continues=batch.last_summary_id,
                 jobs=batch.jobs, outcomes=dict(batch.outcomes), notify=[d.notifier for d in deliveries])
        if deliveries:
            self.on_deliveries()

    async def drain(self, grace: float) -> int:
        """Wait up to `grace` for summaries in progress, cancel the rest, give back every claim."""
        self._stopping = True
        try:
            cancelled = await self._finish_tasks(grace)
            await self._within_release_time(self._give_back_all(list(self._held.items()), self.store.release_batch))
        finally:
            await self._stop_renewer()
        return cancelled
