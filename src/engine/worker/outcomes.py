"""`OutcomeWriter`: a worker's job outcomes, written behind in batches (group commit).

A finished job frees its slot at once; its outcome waits here until the writer task writes
everything that accumulated in one `finish_jobs` call (one transaction). A write that fails
keeps its outcomes for the next attempt (backing off). Each outcome is fenced by the store: one
that is not applied belongs to a claim this worker lost, and is counted as such.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import assert_never

import anyio

from engine.domain.job import JobOutcome
from engine.domain.states import AsyncJobStatus
from engine.errors import StoreError
from engine.ports.store import JobStore
from engine.worker.models import WorkerHealthReport

logger = logging.getLogger("engine.worker")

MAX_BACKOFF = 5.0


class OutcomeWriter:
    def __init__(
        self,
        store: JobStore,
        report: WorkerHealthReport,
        on_outcome: Callable[[JobOutcome, bool], None] | None = None,
    ) -> None:
        self._store = store
        self._report = report
        self._on_outcome = on_outcome
        self._pending: list[JobOutcome] = []
        self._arrived = anyio.Event()
        #: Set (and replaced) after every write attempt.
        self._progress = anyio.Event()
        self._writing = False
        self._failures = 0

    def add(self, outcome: JobOutcome) -> None:
        self._pending.append(outcome)
        self._report.pending_outcomes = len(self._pending)
        self._arrived.set()

    async def run(self) -> None:
        """The writer task (runs until cancelled)."""
        while True:
            await self._arrived.wait()
            self._arrived = anyio.Event()
            try:
                await self._write()
            except StoreError as exc:
                logger.warning("recording job outcomes failed (will retry): %s", exc)
                await anyio.sleep(min(MAX_BACKOFF, 0.05 * 2**self._failures))
                self._arrived.set()

    async def flush(self, within: float) -> None:
        """Wait until every outcome added so far is written (or `within` seconds pass)."""
        with anyio.move_on_after(within):
            while self._pending or self._writing:
                progress = self._progress
                self._arrived.set()
                await progress.wait()

    async def drain(self) -> None:
        """Write what is left once, from outside the writer task (the pool is stopping)."""
        if self._pending and not self._writing:
            try:
                await self._write()
            except StoreError as exc:
                logger.error("%d job outcome(s) could not be recorded: %s", len(self._pending), exc)

    async def _write(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._writing = True
        try:
            applied = set(await self._store.finish_jobs(batch))
        except BaseException:
            # Failed or cancelled mid-write: keep the batch. Writing it again is harmless (an
            # outcome already applied is fenced off the second time).
            self._pending[:0] = batch
            self._failures += 1
            raise
        finally:
            self._writing = False
            self._report.pending_outcomes = len(self._pending)
            progress, self._progress = self._progress, anyio.Event()
            progress.set()
        self._failures = 0
        for outcome in batch:
            self._count(outcome, outcome.job_id in applied)
            if self._on_outcome is not None:
                self._on_outcome(outcome, outcome.job_id in applied)

    def _count(self, outcome: JobOutcome, applied: bool) -> None:
        report = self._report
        if not applied:
            report.fenced += 1
            return
        match outcome.status:
            case AsyncJobStatus.SUCCEEDED:
                report.succeeded += 1
                report.processed += 1
            case AsyncJobStatus.FAILED:
                report.failed += 1
                report.processed += 1
            case AsyncJobStatus.CANCELLED:
                report.cancelled += 1
                report.processed += 1
            case AsyncJobStatus.QUEUED:
                report.handed_back += 1
            case AsyncJobStatus.RUNNING:
                raise AssertionError("an outcome is never `running`")
            case _:
                assert_never(outcome.status)
