"""The store port: what the engine needs from durable state, and the records that cross it.

Implemented by `engine.store.memory.MemoryStore` (domain level, for tests and the API's default)
and `engine.store.sql.SqlStore` (SQLite, PostgreSQL). Both pass one contract suite
(tests/test_store_contract.py). This module holds no I/O and imports no driver.

Writes arrive in batches (`Changes`), each applied atomically: all of it or none of it. Runs and
their subplans are created once (`NewRun`, `Changes.added`) and then updated by key; events are
appended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from engine.domain.events import Event
from engine.domain.job import AsyncJob, Claimed, JobBeat, JobOutcome, WorkerRecord
from engine.domain.lock import LockRecord, Resource, RunLocking
from engine.domain.states import AsyncJobStatus, FailureMode, RunState, SubplanState

#: The error of a run (and its unfinished subplans) whose process died (`abandon_lost_runs`).
LOST_RUN_ERROR = (
    "lost: the process running it stopped without recording its end (its plan lock expired)"
)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a plan, as stored (the plan itself is read with `Store.get_plan`)."""

    id: str
    plan_name: str
    state: RunState
    created_at: datetime
    #: The effective global-level settings of the run (what `resume` reuses).
    max_parallel: int
    failure_mode: FailureMode
    #: sha256 of the plan's canonical JSON: tells `resume` whether the plan file changed.
    plan_digest: str
    #: The plan file the run was started from (absolute), if it came from a file.
    plan_source: str | None = None
    project: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    error: str | None = None
    #: The run this one resumed (its completed subplans were kept, not run again).
    resumed_from: str | None = None


@dataclass(frozen=True, slots=True)
class SubplanRecord:
    """One subplan of one run. `position` is its index in plan order (parents first)."""

    id: str
    run_id: str
    path: str
    position: int
    kind: str
    state: SubplanState = SubplanState.PENDING
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    error: str | None = None
    output_tail: str | None = None
    log_path: str | None = None


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create, with its plan (canonical JSON) and the subplans known so far (more can
    be added later with `Changes.added`)."""

    run: RunRecord
    plan_json: str
    subplans: Sequence[SubplanRecord]


@dataclass(slots=True)
class Changes:
    """One batch, applied in one transaction in this order: runs created, subplans added to
    runs, run updates, subplan updates (by run id and path), events (appended), and last the
    lock releases (a run's locks go in the same transaction as its end)."""

    created: list[NewRun] = field(default_factory=list)
    added: list[SubplanRecord] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    subplans: list[SubplanRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    releases: list[LockRelease] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.created or self.added or self.runs or self.subplans or self.events or self.releases
        )


@dataclass(slots=True, eq=False)
class LockRelease:
    """Undo one acquire of `resource` by `owner_id`, as `LockStore.release_lock` does, within a
    `RunStore.write`. Once the batch is written the store sets `written`, and `left`: the depth
    left (0: the lock is free), or None if the owner did not hold it (then nothing changed)."""

    resource: Resource
    owner_id: str
    written: bool = False
    left: int | None = None


class RunStore(Protocol):
    """Runs, their subplans and their event log."""

    async def write(self, changes: Changes) -> None:
        """Apply one batch atomically. A create of an existing run or subplan, a subplan added
        to an unknown run, an update of an unknown run, or an event of an unknown run raises
        `StoreError` and applies nothing. (An update of an unknown subplan is a caller's bug;
        stores raise where the driver tells them.)"""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def get_plan(self, run_id: str) -> str | None:
        """The plan of a run, as the canonical JSON it was stored with."""
        ...

    async def list_runs(self, *, limit: int | None = None) -> list[RunRecord]:
        """Newest first (by `created_at`, then id)."""
        ...

    async def list_subplans(self, run_id: str) -> list[SubplanRecord]:
        """In plan order (`position`)."""
        ...

    async def list_events(self, run_id: str) -> list[Event]:
        """In `seq` order."""
        ...

    async def abandon_lost_runs(self, now: datetime, created_before: datetime) -> list[str]:
        """Runs still `pending` or `running` that were created before `created_before` and
        hold no unexpired `plan:` lock (a live run always does: it takes the lock before it is
        recorded and renews it until its end is): their process died. Each becomes `failed`
        (finished `now`, with an error saying so), its unfinished subplans `cancelled`, in one
        transaction; the ids of those runs."""
        ...


class LockStore(Protocol):
    """TTL locks, one row per resource. Every method is one atomic step in the store (one
    statement where the backend allows it): two processes calling at once can never both win.
    "Expired" is judged against the `now` the caller passes (its injected clock)."""

    async def acquire_lock(self, claim: LockRecord) -> LockRecord | None:
        """Take `claim.resource` for `claim.owner_id` until `claim.expires_at`, atomically:
        insert it if free; take it over if the lock there expired at `claim.acquired_at`;
        re-enter it if that owner holds it (depth + 1, expiry the later of the two). Returns
        the lock as it now is, or None if another owner holds it unexpired.

        A call answers even if its caller is cancelled while it runs (the caller sees the
        cancellation at its next checkpoint): a lock taken by a statement whose answer a
        cancellation threw away would be held by nobody who knows it until its TTL ran out.
        `LockService` relies on this and does not shield the call itself. `MemoryLocks` has no
        await point; the SQL stores make the call through `GroupCommit`, which shields it."""
        ...

    async def renew_lock(
        self, resource: Resource, owner_id: str, now: datetime, expires_at: datetime
    ) -> LockRecord | None:
        """Move the expiry of a lock `owner_id` holds unexpired at `now`; None otherwise."""
        ...

    async def release_lock(self, resource: Resource, owner_id: str) -> int | None:
        """Undo one acquire by `owner_id` (expired or not): the depth left (0: the row is
        gone), or None if `owner_id` does not hold it."""
        ...

    async def release_locks_of(self, owner_id: str) -> list[Resource]:
        """Delete every lock of `owner_id`, whatever its depth; what was released."""
        ...

    async def delete_lock(self, resource: Resource) -> LockRecord | None:
        """Remove a lock whoever holds it (`locks release --force`); what was removed."""
        ...

    async def delete_expired_locks(self, now: datetime) -> list[Resource]:
        """Purge locks expired at `now`; what was purged."""
        ...

    async def count_expired_locks(self, now: datetime) -> int: ...

    async def get_lock(self, resource: Resource) -> LockRecord | None:
        """The row of a resource, expired or not."""
        ...

    async def list_locks(self) -> list[LockRecord]:
        """Every row, expired ones included, ordered by resource."""
        ...


class JobStore(Protocol):
    """The durable job queue and its workers' heartbeats.

    Every status change is one conditional write (`... WHERE status = :expected`, plus the
    fencing token for a worker's writes): two callers can never both make the same change, and
    a worker that lost a job can never overwrite its new owner's state. Times are the caller's
    (its injected clock).
    """

    #: Whether the database does its work in this process (SQLite, memory) rather than in a
    #: server's. A worker on a server keeps two claims in flight, each for at most half its
    #: slots: while one half waits for the server, the other runs. In this process the two
    #: would only take turns on the same CPU (and GIL), each slower.
    @property
    def database_in_process(self) -> bool: ...

    async def enqueue_jobs(self, jobs: Sequence[AsyncJob]) -> None:
        """Insert queued jobs (one transaction); an existing id raises `StoreError`."""
        ...

    async def claim_jobs(self, worker_id: str, now: datetime, limit: int) -> list[AsyncJob]:
        """Atomically move up to `limit` of the oldest queued jobs to `running` for
        `worker_id` (attempts + 1: the new fencing token; heartbeat `now`), in one statement;
        the jobs as claimed, oldest first. Each job goes to exactly one claimer."""
        ...

    async def finish_and_claim(
        self,
        outcomes: Sequence[JobOutcome],
        worker_id: str,
        now: datetime,
        limit: int,
        *,
        locking: RunLocking | None = None,
    ) -> Claimed:
        """`finish_jobs(outcomes)` and then `claim_jobs(worker_id, now, limit)` in ONE
        transaction: the ids applied and the jobs claimed. A worker's finished jobs ride on its
        next claim (one write instead of two); if it fails, neither happened.

        With `locking`, the same transaction also acquires, as `acquire_lock` would, the plan
        lock of each claimed job's run (`RunLocking.claim(i, job.plan_name, now)` for the i-th
        job), the oldest job first where several have one plan: `Claimed.locked` names the
        jobs whose lock it took. Locks it could not take are left as they are."""
        ...

    async def heartbeat(self, worker: WorkerRecord) -> list[JobBeat]:
        """Record `worker` (its row for `diagnostics`) and set `last_heartbeat` of every job it
        runs (one statement for all of them); the jobs it holds now, with their tokens and
        whether cancellation was requested. A job missing from the answer is no longer its."""
        ...

    async def finish_jobs(self, outcomes: Sequence[JobOutcome]) -> list[str]:
        """Apply each outcome (one transaction) where the job is still `running` under that
        worker and token; the ids applied (the others were fenced off)."""
        ...

    async def request_cancel(self, job_id: str, now: datetime) -> AsyncJob | None:
        """`queued` -> `cancelled` at once; `running` -> `cancel_requested` (its worker makes
        the transition); anything else unchanged. The job as it now is; None if unknown."""
        ...

    async def rescue_stuck_jobs(self, now: datetime, stuck_before: datetime) -> list[AsyncJob]:
        """Running jobs whose heartbeat is older than `stuck_before` (their worker was lost):
        cancelled if cancellation was requested, else back to `queued` while attempts remain,
        else `failed` with a message naming the worker and when it was last seen. Each change
        is conditional on the job still being stuck with the same token; the jobs changed."""
        ...

    async def delete_finished_jobs(self, before: datetime) -> int:
        """Delete (one statement) finished jobs that finished before `before`; how many."""
        ...

    async def forget_workers(self, seen_before: datetime, *, worker_id: str | None = None) -> int:
        """Delete worker rows last seen before `seen_before` (or the one row `worker_id`)."""
        ...

    async def get_job(self, job_id: str) -> AsyncJob | None: ...

    async def list_jobs(
        self, *, status: AsyncJobStatus | None = None, limit: int | None = None
    ) -> list[AsyncJob]:
        """Newest first (by id, which is time-ordered)."""
        ...

    async def count_jobs(self) -> dict[AsyncJobStatus, int]:
        """How many jobs are in each status (every status present, zero included)."""
        ...

    async def list_stuck_jobs(self, stuck_before: datetime) -> list[AsyncJob]:
        """Running jobs whose heartbeat is older than `stuck_before` (read only)."""
        ...

    async def list_workers(self) -> list[WorkerRecord]:
        """Registered workers, ordered by id."""
        ...

    def job_notifications(self, wake: Callable[[], None]) -> AbstractAsyncContextManager[bool]:
        """`async with store.job_notifications(wake) as active`: while inside, `wake()` is
        called whenever jobs may have been queued by any process (PostgreSQL LISTEN/NOTIFY).
        `active` is False where the store cannot notify (SQLite, memory): workers then find
        other processes' jobs by polling alone."""
        ...


class Store(RunStore, LockStore, JobStore, Protocol):
    """Everything durable: runs, locks and jobs."""

    #: Where the data lives, for messages (a URL with any password hidden).
    @property
    def location(self) -> str: ...

    async def close(self) -> None: ...
