"""`OutcomeWriter`: a worker's job outcomes, written behind in batches (group commit).

A finished job frees its slot at once; its outcome waits here until it is written, with
everything else that accumulated, in one transaction: usually the pool's next claim carries
them (`carry`: `finish_and_claim`, one write instead of two, since the slot that freed is
claimed again within milliseconds); the writer task writes whatever no claim took within
`HOLD` seconds (`finish_jobs`), and at once when the pool flushes. A write that fails keeps its
outcomes for the next attempt (backing off). Each outcome is fenced by the store: one that is
not applied belongs to a claim this worker lost, and is counted as such.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, assert_never

import anyio

from engine.domain.job import JobOutcome
from engine.domain.states import AsyncJobStatus
from engine.errors import StoreError
from engine.ports.store import JobStore
from engine.worker.models import WorkerHealthReport

logger = logging.getLogger("engine.worker")

MAX_BACKOFF = 5.0
#: How long outcomes wait for a claim to carry them before the writer task writes them itself.
#: Longer than the pool's claim coalescing (`pool.COALESCE`), so a claim usually comes first.
HOLD = 0.02

T = TypeVar("T")


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
        #: Set when the outcomes must be written now (a flush waits).
        self._urgent = anyio.Event()
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
            if not self._urgent.is_set():
                with anyio.move_on_after(HOLD):  # a claim may carry them meanwhile
                    await self._urgent.wait()
            self._arrived, self._urgent = anyio.Event(), anyio.Event()
            try:
                await self._write(self._finish)
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
                self._urgent.set()
                await progress.wait()

    async def carry(
        self, write: Callable[[Sequence[JobOutcome]], Awaitable[tuple[list[str], T]]]
    ) -> T:
        """Run `write` (a claim) with the outcomes waiting now, which it writes in its own
        transaction: it returns the ids applied and its own answer, which is returned here.
        Outcomes already being written are not waited for. If it raises, the outcomes stay
        here for the next write."""
        answer: list[T] = []

        async def send(batch: Sequence[JobOutcome]) -> list[str]:
            applied, result = await write(batch)
            answer.append(result)
            return applied

        try:
            await self._write(send, allow_empty=True)
        except BaseException:
            self._arrived.set()  # the writer task tries them again (after HOLD)
            raise
        return answer[0]

    async def drain(self) -> None:
        """Write what is left once, from outside the writer task (the pool is stopping)."""
        if self._pending and not self._writing:
            try:
                await self._write(self._finish)
            except StoreError as exc:
                logger.error("%d job outcome(s) could not be recorded: %s", len(self._pending), exc)

    async def _finish(self, batch: Sequence[JobOutcome]) -> list[str]:
        return await self._store.finish_jobs(batch)

    async def _write(
        self,
        send: Callable[[Sequence[JobOutcome]], Awaitable[list[str]]],
        *,
        allow_empty: bool = False,
    ) -> None:
        """Send the waiting outcomes (none while another write is sending some) and account
        for the answer."""
        if self._writing:
            batch: list[JobOutcome] = []
        else:
            batch, self._pending = self._pending, []
        if not batch and not allow_empty:
            return
        if not batch:
            await send(batch)
            return
        self._writing = True
        try:
            applied = set(await send(batch))
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
