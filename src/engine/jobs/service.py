"""`JobService`: submitting, reading and cancelling background jobs over the `JobStore` port.

This module owns the user-facing side of the queue (what `submit`, `jobs ...` and `diagnostics`
do); the worker's side (claiming, heartbeats, fencing) is `engine.worker`. It never talks to a
database directly and reads time only from the injected `Clock`. Every status change, its own
and the worker's (`announce`), is a `JobStateChanged` on the engine's bus. With a signing key
configured, every payload it queues is signed (`engine.signing`; workers verify it).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from engine.config import AsyncSettings
from engine.domain.events import JobStateChanged
from engine.domain.job import DEFAULT_MAX_ATTEMPTS, AsyncJob
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus
from engine.errors import JobNotFoundError
from engine.events import EventBus
from engine.jobs.diagnostics import Diagnostics, WorkerHealth
from engine.ports.clock import Clock
from engine.ports.store import JobStore
from engine.signing import sign_payload

logger = logging.getLogger(__name__)


class JobService:
    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        settings: AsyncSettings,
        *,
        bus: EventBus | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self._bus = bus
        self._seq = 0
        #: Called after every submit: wakes idle worker pools of this process at once.
        self._listeners: builtins.list[Callable[[], None]] = []

    def on_submit(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after each submit; returns the function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def submit(
        self,
        plan: Plan,
        *,
        workdir: Path | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> AsyncJob:
        """Queue `plan` (validated: it is a `Plan`); its steps will run in `workdir` (default:
        the plan file's folder). `max_attempts`: claims before a lost worker fails the job.
        With `async.signing_key` (ENGINE_SIGNING_KEY) the payload is signed for this job id."""
        job = AsyncJob.new(plan, self.clock.now(), workdir=workdir, max_attempts=max_attempts)
        key = self.settings.signing_key
        if key is not None:
            job = job.model_copy(update={"payload": sign_payload(job.payload, job.id, key)})
        await self.store.enqueue_jobs([job])
        self.announce(job.id, None, AsyncJobStatus.QUEUED)
        for listener in builtins.list(self._listeners):
            listener()
        return job

    async def get(self, job_id: str) -> AsyncJob:
        job = await self.store.get_job(job_id)
        if job is None:
            raise JobNotFoundError(job_id, self._where)
        return job

    async def list(
        self, *, status: AsyncJobStatus | None = None, limit: int | None = None
    ) -> builtins.list[AsyncJob]:
        """Newest first."""
        return await self.store.list_jobs(status=status, limit=limit)

    async def cancel(self, job_id: str) -> AsyncJob:
        """A queued job is cancelled at once; a running one gets `cancel_requested` and its
        worker cancels it within one heartbeat. A finished job is returned unchanged."""
        now = self.clock.now()
        job = await self.store.request_cancel(job_id, now)
        if job is None:
            raise JobNotFoundError(job_id, self._where)
        if job.status is AsyncJobStatus.CANCELLED and job.finished_at == now:
            # Cancelled by this call (a job cancelled earlier would have finished earlier).
            self.announce(
                job.id,
                AsyncJobStatus.QUEUED,
                AsyncJobStatus.CANCELLED,
                attempt=job.attempts,
                error=job.error_message,
                run_id=job.run_id,
            )
        return job

    def announce(
        self,
        job_id: str,
        old: AsyncJobStatus | None,
        new: AsyncJobStatus,
        *,
        attempt: int = 0,
        worker_id: str | None = None,
        error: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """Publish a `JobStateChanged` if anybody wants it; for a change already written (the
        worker calls it after its claim or outcome batch). A failing subscriber is logged."""
        bus = self._bus
        if bus is None or not bus.wants(JobStateChanged):
            return
        self._seq += 1
        event = JobStateChanged(
            at=self.clock.now(),
            seq=self._seq,
            run_id=run_id,
            job_id=job_id,
            from_=old,
            to=new,
            attempt=attempt,
            worker_id=worker_id,
            error=error,
        )
        try:
            bus.publish(event)
        except Exception:
            logger.exception("an event bus subscriber failed on %s", event.type)

    async def diagnostics(self, stale_locks: int) -> Diagnostics:
        """What `diagnostics` reports; reads only."""
        now = self.clock.now()
        stuck_after = timedelta(seconds=self.settings.stuck_after)
        workers = [
            WorkerHealth(record, (now - record.last_heartbeat).total_seconds())
            for record in await self.store.list_workers()
        ]
        return Diagnostics(
            at=now,
            stuck_after=self.settings.stuck_after,
            workers=workers,
            queue=await self.store.count_jobs(),
            stuck=await self.store.list_stuck_jobs(now - stuck_after),
            stale_locks=stale_locks,
        )

    @property
    def _where(self) -> str | None:
        location = getattr(self.store, "location", None)
        return location if isinstance(location, str) else None
