"""`WorkerPool`: claims background jobs and runs up to `concurrency` of them at once.

This module owns the worker's lifecycle: claiming (batches, as many as there are free slots,
in the same transaction as the outcomes of the jobs that freed them), heartbeats (one store
call for all of its jobs), what a heartbeat reveals (a cancel request, a claim lost to another
worker), stuck detection and TTL cleanup on behalf of every worker, self-fencing, batched
completion writes, and graceful shutdown. The transitions it writes are
announced (`JobService.announce`) once their write succeeded, one event per job. Running one job is
`engine.worker.runner`; the queue's atomicity is the store's (`JobStore`). Structured
concurrency only: `await task_group.start(pool.run)` runs it inside an application's task
group; `pool.stop()` asks it to finish (docs/jobs.md has the shutdown sequence).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from engine.domain.job import AsyncJob, Claimed, JobOutcome, WorkerRecord, new_worker_id
from engine.domain.lock import RunLocking, this_process
from engine.domain.states import AsyncJobStatus
from engine.errors import StoreError
from engine.ids import new_ids
from engine.redaction import Redactor
from engine.worker.models import WorkerHealthReport, WorkerSettings
from engine.worker.outcomes import OutcomeWriter
from engine.worker.runner import RunningJob, StopReason, run_job

if TYPE_CHECKING:
    from engine.app import Engine

logger = logging.getLogger("engine.worker")

#: The shortest idle wait; doubled per empty poll up to `poll_interval`.
MIN_IDLE = 0.005
#: After a slot frees while others are busy, how long to wait for more to free: one claim for
#: several slots instead of one claim per slot, and the jobs claimed together then take their
#: locks, record their runs and finish in shared batches. Every write costs far more per
#: transaction than per row, so this wait doubles throughput (measured: 2 ms gave batches of 3,
#: 10 ms batches of 16); it delays a job only while the worker is busy.
COALESCE = 0.01
#: How often finished jobs and long-gone workers are purged (at most; also once at start).
TTL_EVERY = 60.0
#: How long the last outcomes may take to be written when the pool stops.
FLUSH_TIMEOUT = 10.0


@dataclass(slots=True, eq=False)
class _Slot:
    """A slot of the pool: the job handed to it (None: none, or the pool closed it)."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    job: RunningJob | None = None


class WorkerPool:
    def __init__(
        self,
        engine: Engine,
        settings: WorkerSettings,
        *,
        worker_id: str | None = None,
        on_outcome: Callable[[JobOutcome, bool], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.clock = engine.clock
        self._store = engine.store
        self._redact = Redactor()
        self._running: dict[str, RunningJob] = {}
        #: Of those, the jobs whose runs have not ended yet (what `concurrency` caps).
        self._busy = 0
        #: The slots (`_slot` tasks) that run no job now; all of them once closed.
        self._idle: list[_Slot] = []
        self._closed = False
        self._report = WorkerHealthReport(self.worker_id, settings.concurrency)
        self._on_outcome = on_outcome
        self._writer = OutcomeWriter(self._store, self._report, self._written)
        self._wake = anyio.Event()
        self._stopping = False
        self._hurry = anyio.Event()
        self._last_beat_ok = 0.0
        self._next_ttl = 0.0
        self._plan_ttl = engine.settings.locks.plan_ttl

    # -- control -------------------------------------------------------------------------------

    def stop(self, *, grace: float | None = None) -> None:
        """Stop claiming; let running jobs finish for `grace` seconds (the settings' by default),
        then cancel them and hand them back to the queue. A second call with `grace=0` cuts
        the grace period short."""
        if grace is not None and grace <= 0:
            self._hurry.set()
        self._stopping = True
        self._wake.set()

    def wake(self) -> None:
        """Poll now (a job was submitted, a slot freed, or a notification arrived)."""
        self._wake.set()

    def statistics(self) -> WorkerHealthReport:
        self._report.running = len(self._running)
        return self._report.snapshot()

    # -- the pool --------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until `stop()` (or, with `burst`, until the queue is empty); every job it
        claimed is finished, handed back or fenced off when this returns."""
        self._report.started_at = self.clock.now()
        await self._heartbeat()  # registers the worker; a store that fails stops us here
        await self._maintain()
        unsubscribe = self.engine.jobs.on_submit(self.wake)
        try:
            async with (
                self._store.job_notifications(self.wake) as notified,
                anyio.create_task_group() as services,
            ):
                self._report.notifications = notified
                services.start_soon(self._writer.run)
                services.start_soon(self._heartbeat_loop)
                async with anyio.create_task_group() as jobs:
                    for n in range(self._slots()):
                        slot = _Slot()
                        self._idle.append(slot)
                        jobs.start_soon(self._slot, slot, name=f"{self.worker_id} slot {n}")
                    task_status.started()
                    try:
                        await self._claim_loop()
                        await self._wind_down()
                    finally:
                        self._close_slots()
                await self._writer.flush(FLUSH_TIMEOUT)
                services.cancel_scope.cancel()
        finally:
            unsubscribe()
            with anyio.CancelScope(shield=True), anyio.move_on_after(FLUSH_TIMEOUT):
                await self._writer.drain()  # hand-backs of jobs cancelled from outside
                try:
                    await self._store.forget_workers(self.clock.now(), worker_id=self.worker_id)
                except StoreError as exc:
                    logger.warning("worker %s: could not unregister: %s", self.worker_id, exc)

    async def _claim_loop(self) -> None:
        idle = MIN_IDLE
        concurrency = self.settings.concurrency
        # On a database server, two half-size claims in flight: one half of the jobs runs
        # while the other waits for the server (JobStore.database_in_process).
        most = concurrency if self._store.database_in_process else max(1, concurrency // 2)
        while not self._stopping:
            free = self._free()
            if free <= 0:
                await self._wait_for_wake(None)
                continue
            if free < concurrency:
                with anyio.move_on_after(COALESCE):
                    while self._free() < concurrency - concurrency // 2 and not self._stopping:
                        await self._wait_for_wake(None)
                free = self._free()
            self._wake = anyio.Event()
            limit = min(free, most)
            now = self.clock.now()
            # The claim takes the plan locks of the runs it hands out too (one write, not two).
            locking = RunLocking(tuple(new_ids(limit)), *this_process(), self._plan_ttl)
            claim = partial(self._claim, now=now, limit=limit, locking=locking)
            try:
                # The outcomes of the jobs whose slots freed go in the same transaction.
                claimed = await self._writer.carry(claim)
            except StoreError as exc:
                self._report.store_errors += 1
                logger.warning("worker %s: claiming failed: %s", self.worker_id, exc)
                await self._wait_for_wake(self.settings.poll_interval)
                continue
            if claimed.jobs:
                idle = MIN_IDLE
                for i, job in enumerate(claimed.jobs):
                    self._announce(job, AsyncJobStatus.QUEUED, AsyncJobStatus.RUNNING)
                    running = RunningJob(job, self.worker_id, claimed_run_id=locking.run_ids[i])
                    if job.id in claimed.locked:
                        running.plan_lock = locking.claim(i, job.plan_name, now)
                    self._start(running)
                continue
            if self.settings.burst:
                if not self._running:
                    return
                await self._wait_for_wake(None)  # a job of ours ends, then look again
                continue
            await self._wait_for_wake(idle)
            idle = min(idle * 2, self.settings.poll_interval)

    async def _claim(
        self, outcomes: Sequence[JobOutcome], *, now: datetime, limit: int, locking: RunLocking
    ) -> tuple[list[str], Claimed]:
        claimed = await self._store.finish_and_claim(
            outcomes, self.worker_id, now, limit, locking=locking
        )
        return claimed.applied, claimed

    def _slots(self) -> int:
        """How many slot tasks: one per job it may hold at once (see `_free`)."""
        concurrency = self.settings.concurrency
        return concurrency if self._store.database_in_process else 2 * concurrency

    def _free(self) -> int:
        """How many jobs to claim. On a database server a slot is free once its job's run has
        ended, while its end is being written: the next claim goes to the server meanwhile,
        and both wait for it together (but no more than twice `concurrency` jobs are held at
        once, however slow the writes). In this process the two writes would only take turns
        in the one writer: there a slot frees when its job is done."""
        concurrency = self.settings.concurrency
        if self._store.database_in_process:
            return concurrency - len(self._running)
        return min(concurrency - self._busy, 2 * concurrency - len(self._running))

    def _start(self, running: RunningJob) -> None:
        """Hand a claimed job to an idle slot (a claim takes no more jobs than there are)."""
        slot = self._idle.pop()
        self._running[running.job.id] = running
        self._busy += 1
        self._report.claimed += 1

        def ended() -> None:
            running.on_ended = None  # once
            self._busy -= 1
            self._wake.set()

        running.on_ended = ended
        slot.job = running
        slot.ready.set()

    async def _slot(self, slot: _Slot) -> None:
        """One of the pool's slot tasks: runs the jobs `_start` hands it, one at a time, until
        the pool closes its slots. A task per job would cost more than a no-op job's whole run
        does."""
        while True:
            try:
                await slot.ready.wait()
            except anyio.get_cancelled_exc_class():
                if slot.job is not None:  # handed to it as the pool was cancelled
                    await self._run_one(slot.job)  # cancelled at its first step: handed back
                raise
            slot.ready.clear()
            running, slot.job = slot.job, None
            if running is None:
                return  # closed while idle
            await self._run_one(running)
            if self._closed:
                return
            self._idle.append(slot)

    def _close_slots(self) -> None:
        """No more jobs: idle slots end now, busy ones when their job has."""
        self._closed = True
        for slot in self._idle:
            slot.ready.set()
        self._idle = []

    async def _run_one(self, running: RunningJob) -> None:
        outcome: JobOutcome | None = None
        try:
            outcome = await run_job(
                self.engine,
                running,
                self.clock,
                job_timeout=self.settings.job_timeout,
                redact=self._redact,
                signing_key=self.engine.jobs.settings.signing_key,
            )
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside (the application's scope): hand the job back.
            running.stop(StopReason.SHUTDOWN)
            back = running.outcome(self.clock, AsyncJobStatus.QUEUED, "handed back: cancelled")
            self._writer.add(back)
            raise
        finally:
            if running.on_ended is not None:  # its run never got to its end
                running.on_ended()
            del self._running[running.job.id]
            self._wake.set()
        if outcome is None:
            self._report.fenced += 1
            logger.warning("job %s: claim lost; its run was stopped", running.job.id)
        else:
            self._writer.add(outcome)

    async def _wind_down(self) -> None:
        """Graceful shutdown: let running jobs finish within the grace period, then hand the
        rest back (their runs are cancelled; their locks released on the way out)."""
        if not self._running or not self._stopping:
            return
        with anyio.move_on_after(self.settings.grace):
            while self._running and not self._hurry.is_set():
                await self._wait_for_wake(None, hurry=True)
        for running in list(self._running.values()):
            running.stop(StopReason.SHUTDOWN)

    async def _wait_for_wake(self, seconds: float | None, *, hurry: bool = False) -> None:
        """Until `wake()` (or a slot frees), at most `seconds` on the engine's clock."""
        wake = self._wake
        if seconds is None and not hurry:  # the busy pool's wait: nothing to race
            await wake.wait()
        else:
            await self._race(wake, seconds, hurry)
        if wake.is_set() and wake is self._wake:
            self._wake = anyio.Event()

    async def _race(self, wake: anyio.Event, seconds: float | None, hurry: bool) -> None:
        """Until `wake` (or, with `hurry`, a second stop) is set, at most `seconds`."""
        async with anyio.create_task_group() as tg:

            async def waiter(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(waiter, wake)
            if hurry:
                tg.start_soon(waiter, self._hurry)
            if seconds is not None:
                await self.clock.sleep(seconds)
                tg.cancel_scope.cancel()

    # -- heartbeats and maintenance ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.heartbeat_interval)
            # Stopped between beats, never inside one: a statement cancelled in flight makes
            # SQLAlchemy close its aiosqlite connection in a task that may never finish, and
            # the worker then hangs at exit. A beat is bounded by the store's own timeouts.
            with anyio.CancelScope(shield=True):
                await self._heartbeat()
                await self._maintain()

    async def _heartbeat(self) -> None:
        """One heartbeat for all our jobs; act on what it says about each."""
        now = self.clock.now()
        held = dict(self._running)  # claimed before the statement: judged by its answer
        report = self._report
        record = WorkerRecord(
            id=self.worker_id,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=report.started_at or now,
            last_heartbeat=now,
            concurrency=self.settings.concurrency,
            processed=report.processed,
            failed=report.failed,
            cancelled=report.cancelled,
        )
        try:
            beats = await self._store.heartbeat(record)
        except StoreError as exc:
            report.heartbeat_failures += 1
            silent = self.clock.monotonic() - self._last_beat_ok
            logger.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
            if report.last_heartbeat is None:
                raise
            if silent > self.settings.stuck_after / 2 and self._running:
                # Another worker may rescue our jobs soon: stop them first (self-fencing).
                logger.error(
                    "worker %s: no heartbeat for %.1fs; stopping its jobs", self.worker_id, silent
                )
                for running in list(self._running.values()):
                    running.stop(StopReason.LOST)
            return
        self._last_beat_ok = self.clock.monotonic()
        report.last_heartbeat = now
        current = {beat.job_id: beat for beat in beats}
        for job_id, running in held.items():
            beat = current.get(job_id)
            if job_id not in self._running:
                continue  # it ended meanwhile
            if beat is None or beat.token != running.job.attempts:
                running.stop(StopReason.LOST)
            elif beat.cancel_requested:
                running.stop(StopReason.CANCEL_REQUESTED)

    async def _maintain(self) -> None:
        """Rescue jobs of lost workers; now and then, purge old finished jobs and workers."""
        now = self.clock.now()
        settings = self.settings
        try:
            rescued = await self._store.rescue_stuck_jobs(
                now, now - timedelta(seconds=settings.stuck_after)
            )
            if self.clock.monotonic() >= self._next_ttl:
                self._next_ttl = self.clock.monotonic() + min(TTL_EVERY, settings.job_ttl)
                ttl = now - timedelta(seconds=settings.job_ttl)
                self._report.purged += await self._store.delete_finished_jobs(ttl)
                await self._store.forget_workers(ttl)
                await self.engine.abandon_lost_runs()  # e.g. the runs of a SIGKILLed worker
        except StoreError as exc:
            self._report.store_errors += 1
            logger.warning("worker %s: maintenance failed: %s", self.worker_id, exc)
            return
        for job in rescued:
            self._report.rescued += 1
            logger.warning("job %s: %s -> %s", job.id, job.error_message, job.status.value)
            self._announce(
                job, AsyncJobStatus.RUNNING, job.status, error=job.error_message, run_id=job.run_id
            )
        if rescued:
            self.wake()

    # -- events --------------------------------------------------------------------------------

    def _written(self, outcome: JobOutcome, applied: bool) -> None:
        """An outcome's write was answered: announce it if it was applied (a fenced one
        changed nothing), then tell the pool's owner."""
        if applied:
            self.engine.jobs.announce(
                outcome.job_id,
                AsyncJobStatus.RUNNING,
                outcome.status,
                attempt=outcome.token,
                worker_id=outcome.worker_id,
                error=outcome.error_message,
                run_id=outcome.run_id,
            )
        if self._on_outcome is not None:
            self._on_outcome(outcome, applied)

    def _announce(
        self,
        job: AsyncJob,
        old: AsyncJobStatus,
        new: AsyncJobStatus,
        *,
        error: str | None = None,
        run_id: str | None = None,
    ) -> None:
        """A claim or a rescue this pool wrote."""
        self.engine.jobs.announce(
            job.id,
            old,
            new,
            attempt=job.attempts,
            worker_id=self.worker_id,
            error=error,
            run_id=run_id,
        )
