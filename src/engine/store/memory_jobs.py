"""`MemoryJobs`: the job part of the store port in dictionaries (a base of `MemoryStore`).

Each method runs without an await point, so it is as atomic here as one statement is in SQL.
Same contract as `engine.store.sql.jobs` (tests/test_job_store_contract.py).
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from engine.domain.job import (
    AsyncJob,
    Claimed,
    JobBeat,
    JobOutcome,
    WorkerRecord,
    lost_worker_message,
)
from engine.domain.lock import LockRecord, RunLocking
from engine.domain.states import TERMINAL_JOB_STATUSES, AsyncJobStatus
from engine.errors import StoreError

_QUEUED, _RUNNING = AsyncJobStatus.QUEUED, AsyncJobStatus.RUNNING


class MemoryJobs:
    #: Nothing waits on another process here (see `JobStore.database_in_process`).
    database_in_process = True

    def __init__(self) -> None:
        self._jobs: dict[str, AsyncJob] = {}
        self._workers: dict[str, WorkerRecord] = {}
        #: Ids of queued jobs, oldest first (a heap; entries of jobs that left `queued` are
        #: skipped when they come up): a claim costs O(limit log n), not a scan of every job.
        self._queue: list[str] = []

    def _set(self, job: AsyncJob, **changes: Any) -> AsyncJob:
        updated = job.model_copy(update=changes)
        self._jobs[job.id] = updated
        if updated.status is _QUEUED and job.status is not _QUEUED:
            heapq.heappush(self._queue, job.id)
        return updated

    async def enqueue_jobs(self, jobs: Sequence[AsyncJob]) -> None:
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids) or any(i in self._jobs for i in ids):
            raise StoreError("cannot enqueue jobs: a job id exists already")
        for job in jobs:
            self._jobs[job.id] = job.model_copy(update={"created_at": _utc(job.created_at)})
            if job.status is _QUEUED:
                heapq.heappush(self._queue, job.id)

    async def claim_jobs(self, worker_id: str, now: datetime, limit: int) -> list[AsyncJob]:
        now = _utc(now)
        queued: list[str] = []
        while self._queue and len(queued) < limit:
            i = heapq.heappop(self._queue)
            job = self._jobs.get(i)
            if job is not None and job.status is _QUEUED and i not in queued:
                queued.append(i)
        return [
            self._set(
                self._jobs[i],
                status=_RUNNING,
                worker_id=worker_id,
                attempts=self._jobs[i].attempts + 1,
                started_at=now,
                last_heartbeat=now,
                finished_at=None,
            )
            for i in queued
        ]

    async def finish_and_claim(
        self,
        outcomes: Sequence[JobOutcome],
        worker_id: str,
        now: datetime,
        limit: int,
        *,
        locking: RunLocking | None = None,
    ) -> Claimed:
        # No await point in any of them: as atomic as one transaction.
        applied = await self.finish_jobs(outcomes)
        claimed = await self.claim_jobs(worker_id, now, limit)
        locked: set[str] = set()
        if locking is not None:
            for i, job in enumerate(claimed):
                claim = locking.claim(i, job.plan_name, now)
                taken = self._acquire(claim)
                if taken is not None and taken.owner_id == claim.owner_id:
                    locked.add(job.id)
        return Claimed(applied, claimed, frozenset(locked))

    def _acquire(self, claim: LockRecord) -> LockRecord | None:
        """`acquire_lock` without an await point (`MemoryLocks`)."""
        raise NotImplementedError

    async def heartbeat(self, worker: WorkerRecord) -> list[JobBeat]:
        now = _utc(worker.last_heartbeat)
        self._workers[worker.id] = worker
        beats = []
        for job in list(self._jobs.values()):
            if job.worker_id == worker.id and job.status is _RUNNING:
                self._set(job, last_heartbeat=now)
                beats.append(JobBeat(job.id, job.attempts, job.cancel_requested))
        return sorted(beats, key=lambda b: b.job_id)

    async def finish_jobs(self, outcomes: Sequence[JobOutcome]) -> list[str]:
        applied = []
        for out in outcomes:
            job = self._jobs.get(out.job_id)
            if (
                job is None
                or job.status is not _RUNNING
                or job.worker_id != out.worker_id
                or job.attempts != out.token
            ):
                continue
            handed_back = out.status is _QUEUED
            self._set(
                job,
                status=out.status,
                finished_at=None if handed_back else _utc(out.at),
                worker_id=None if handed_back else job.worker_id,
                last_heartbeat=None if handed_back else job.last_heartbeat,
                error_message=out.error_message,
                result=out.result,
                run_id=out.run_id if out.run_id is not None else job.run_id,
            )
            applied.append(out.job_id)
        return applied

    async def request_cancel(self, job_id: str, now: datetime) -> AsyncJob | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status is _QUEUED:
            return self._set(
                job,
                status=AsyncJobStatus.CANCELLED,
                finished_at=_utc(now),
                error_message="cancelled while queued",
            )
        if job.status is _RUNNING:
            return self._set(job, cancel_requested=True)
        return job

    async def rescue_stuck_jobs(self, now: datetime, stuck_before: datetime) -> list[AsyncJob]:
        now, stuck_before = _utc(now), _utc(stuck_before)
        rescued = []
        for job in await self.list_stuck_jobs(stuck_before):
            assert job.last_heartbeat is not None
            message = lost_worker_message(job.worker_id, job.last_heartbeat, now)
            if job.cancel_requested:
                changes: dict[str, Any] = {"status": AsyncJobStatus.CANCELLED, "finished_at": now}
            elif job.attempts < job.max_attempts:
                changes = {"status": _QUEUED, "worker_id": None, "last_heartbeat": None}
            else:
                changes = {"status": AsyncJobStatus.FAILED, "finished_at": now}
            rescued.append(self._set(job, error_message=message, **changes))
        return rescued

    async def delete_finished_jobs(self, before: datetime) -> int:
        before = _utc(before)
        old = [
            i
            for i, job in self._jobs.items()
            if job.status in TERMINAL_JOB_STATUSES
            and job.finished_at is not None
            and job.finished_at < before
        ]
        for i in old:
            del self._jobs[i]
        return len(old)

    async def forget_workers(self, seen_before: datetime, *, worker_id: str | None = None) -> int:
        seen_before = _utc(seen_before)
        gone = [
            w.id
            for w in self._workers.values()
            if (w.id == worker_id if worker_id is not None else w.last_heartbeat < seen_before)
        ]
        for i in gone:
            del self._workers[i]
        return len(gone)

    async def get_job(self, job_id: str) -> AsyncJob | None:
        return self._jobs.get(job_id)

    async def list_jobs(
        self, *, status: AsyncJobStatus | None = None, limit: int | None = None
    ) -> list[AsyncJob]:
        found = sorted(
            (j for j in self._jobs.values() if status is None or j.status is status),
            key=lambda j: j.id,
            reverse=True,
        )
        return found if limit is None else found[:limit]

    async def count_jobs(self) -> dict[AsyncJobStatus, int]:
        counts = dict.fromkeys(AsyncJobStatus, 0)
        for job in self._jobs.values():
            counts[job.status] += 1
        return counts

    async def list_stuck_jobs(self, stuck_before: datetime) -> list[AsyncJob]:
        stuck_before = _utc(stuck_before)
        return sorted(
            (
                j
                for j in self._jobs.values()
                if j.status is _RUNNING
                and j.last_heartbeat is not None
                and j.last_heartbeat < stuck_before
            ),
            key=lambda j: j.id,
        )

    async def list_workers(self) -> list[WorkerRecord]:
        return [self._workers[i] for i in sorted(self._workers)]

    @asynccontextmanager
    async def job_notifications(self, wake: Callable[[], None]) -> AsyncIterator[bool]:
        """Nothing to listen to: jobs of this store are submitted in this process, whose
        `JobService` wakes its workers itself."""
        yield False


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps UTC times only")
    return value if value.tzinfo is UTC else value.astimezone(UTC)
