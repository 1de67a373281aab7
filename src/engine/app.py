"""The composition root: the only module that wires configuration, store and services.

`Engine` is the long-lived object an async application holds; `run_plan` executes one plan and
returns a `RunResult`. The CLI builds on the same two.

Every run is recorded in the engine's store (`engine.ports.store`): a database named by
`database_url` (the CLI passes `settings.database.url`), or in memory when none is given. The
`Recorder` writes behind the dispatcher; its flusher task belongs to the engine's task group,
which `async with Engine(...)` opens and closes.

Background jobs (`engine.jobs`, `engine.worker`): `submit` queues a plan in the store;
`worker()` builds a pool that claims jobs and runs each through `prepare_run` like any run.

Locks (`engine.locks`): a run holds `plan:<name>` (and `project:<project>`) from before it is
recorded until its terminal state is; subplans that declare `locks` hold theirs around their
execution. Opening the engine purges expired locks; its task group runs the lock renewer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.config import DEFAULT_DATABASE_URL, Settings, load_settings
from engine.delegation import (
    CompletionStream,
    DelegationHandle,
    DelegationSettings,
    DelegationStatistics,
    Delegator,
    Work,
)
from engine.dispatch.dispatcher import DispatchSettings, ParallelSubplanDispatcher
from engine.dispatch.tracker import SubplanTracker
from engine.domain.events import Event
from engine.domain.job import DEFAULT_MAX_ATTEMPTS, AsyncJob
from engine.domain.lock import LockRecord
from engine.domain.plan import ParallelExecutionConfig, Plan
from engine.domain.results import RunResult
from engine.domain.states import AsyncJobStatus, FailureMode
from engine.errors import (
    RunNotFoundError,
)
from engine.events import EventBus
from engine.ids import new_id
from engine.jobs.service import JobService
from engine.locks.enforce import SubplanLocks, declares_locks
from engine.locks.service import LockService
from engine.planfile import load_plan
from engine.ports.clock import Clock, SystemClock
from engine.ports.store import RunRecord, Store
from engine.prepared import PreparedRun
from engine.recorder import RUN_EVENTS, Recorder
from engine.resume import ResumePoint, mark_kept, resume_point
from engine.store import MemoryStore, open_store
from engine.worker import WorkerPool, WorkerSettings

logger = logging.getLogger("engine")

PlanSource = Plan | str | os.PathLike[str]


def database_url_for(settings: Settings) -> str:
    """The configured database URL; the default SQLite file follows `data_dir`."""
    url = settings.database.url
    if url == DEFAULT_DATABASE_URL and settings.data_dir != ".engine":
        return f"sqlite+aiosqlite:///{Path(settings.data_dir) / 'engine.db'}"
    return url


class Engine:
    """An engine instance: settings, clock, event bus and the store every run is recorded in.

    Use as `async with Engine() as eng:`; everything it starts is owned by it and stopped when
    the block exits. `database_url` names the store (`sqlite+aiosqlite:///...`,
    `postgresql+asyncpg://...`), opened on entry and closed on exit; a `store` object is used as
    given (and left open: it is the caller's); with neither, runs are kept in memory, for this
    Engine's lifetime.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        database_url: str | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        purge_expired_locks: bool = True,
        delegation: DelegationSettings | None = None,
    ) -> None:
        if database_url is not None and store is not None:
            raise ValueError("give Engine a database_url or a store, not both")
        self.settings = settings if settings is not None else load_settings()
        self.clock: Clock = clock or SystemClock()
        self.bus = EventBus()
        self.database_url = database_url
        self._store: Store | None = store
        if store is None and database_url is None:
            self._store = MemoryStore()
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._recorder: Recorder | None = None
        self._locks: LockService | None = None
        self._jobs: JobService | None = None
        #: Whether opening purges expired locks (`locks list` opens without, to show them).
        self.purge_expired_locks = purge_expired_locks
        self._delegation_settings = delegation or DelegationSettings()
        self._delegator: Delegator | None = None
        #: Closed first on exit, so cancelled delegated runs are still recorded.
        self._delegation_stack: AsyncExitStack | None = None
        self._logs: Path | None = None
        self._settings_defaults: ParallelExecutionConfig | None = None

    @property
    def store(self) -> Store:
        """Where runs are recorded (a database store exists only while the engine is open)."""
        if self._store is None:
            raise RuntimeError("the engine's database opens with `async with Engine(...)`")
        return self._store

    @property
    def locks(self) -> LockService:
        """The TTL locks in this engine's store (while the engine is open)."""
        if self._locks is None:
            raise RuntimeError("the engine's locks are available inside `async with Engine(...)`")
        return self._locks

    @property
    def jobs(self) -> JobService:
        """The background jobs in this engine's store (while the engine is open)."""
        if self._jobs is None:
            raise RuntimeError("the engine's jobs are available inside `async with Engine(...)`")
        return self._jobs

    async def submit(
        self,
        plan: PlanSource,
        *,
        workdir: str | os.PathLike[str] | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> str:
        """Queue a plan (a `Plan` or a plan file, validated here) as a background job; its id.
        A worker (`worker()`, `python -m engine worker`) runs it; `workdir` (default: the plan
        file's folder) is where its relative `cwd`s start."""
        folder = Path(os.fspath(workdir)) if workdir is not None else None
        job = await self.jobs.submit(_as_plan(plan), workdir=folder, max_attempts=max_attempts)
        return job.id

    async def get_job(self, job_id: str) -> AsyncJob:
        """A job as stored; JobNotFoundError if the store does not know it."""
        return await self.jobs.get(job_id)

    async def list_jobs(
        self, *, status: AsyncJobStatus | str | None = None, limit: int | None = None
    ) -> list[AsyncJob]:
        """Jobs, newest first, optionally only those in `status`."""
        wanted = AsyncJobStatus(status) if status is not None else None
        return await self.jobs.list(status=wanted, limit=limit)

    async def cancel_job(self, job_id: str) -> AsyncJob:
        """Cancel a job: at once if queued; a running one is cancelled by its worker within
        one heartbeat (its processes killed). Returns the job as it is after the request."""
        return await self.jobs.cancel(job_id)

    def worker(self, **overrides: Any) -> WorkerPool:
        """A worker pool on this engine (`async.*` settings, `overrides` by WorkerSettings
        field). Run it inside a task group: `await tg.start(pool.run)`; `pool.stop()` ends it."""
        return WorkerPool(self, WorkerSettings.from_settings(self.settings.async_, **overrides))

    @property
    def is_open(self) -> bool:
        return self._stack is not None

    async def __aenter__(self) -> Engine:
        if self._stack is not None:
            raise RuntimeError("this Engine is open already")
        async with AsyncExitStack() as stack:
            if self._store is None:
                assert self.database_url is not None
                store = await open_store(self.database_url)
                self._store = store
                stack.push_async_callback(self._close_store, store)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            recorder = Recorder(self._store)
            await self._tg.start(recorder.run)
            stack.enter_context(self.bus.listening(recorder, kinds=RUN_EVENTS))
            self._recorder = recorder
            self._locks = LockService(self._store, self.clock, bus=self.bus)
            await self._tg.start(self._locks.renewer.run)
            self._jobs = JobService(self._store, self.clock, self.settings.async_, bus=self.bus)
            if self.purge_expired_locks:
                await self.abandon_lost_runs()
                await self._locks.cleanup_expired()
            delegation_stack = AsyncExitStack()
            stack.push_async_callback(delegation_stack.aclose)
            self._delegator = await delegation_stack.enter_async_context(
                Delegator(
                    run_plan=self.run_plan,
                    clock=self.clock,
                    bus=self.bus,
                    settings=self._delegation_settings,
                    task_group=self._tg,
                )
            )
            self._delegation_stack = delegation_stack
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, recorder, locks = self._stack, self._recorder, self._locks
        delegation_stack = self._delegation_stack
        self._stack = self._recorder = self._tg = self._locks = None
        self._jobs = None
        self._delegation_stack = None
        if stack is None:
            return
        try:
            if delegation_stack is not None:
                # Cancels running delegations and emits their completions while the recorder
                # can still write their runs' final states.
                await delegation_stack.aclose()
            self._delegator = None
            if recorder is not None:
                await recorder.close()  # the last flush; stops the flusher
        finally:
            if locks is not None:
                locks.renewer.stop()
            # Neither the body's exception nor close()'s is handed to the task group (empty by
            # now): it would wrap them in an ExceptionGroup. They propagate unchanged.
            await stack.__aexit__(None, None, None)

    async def _close_store(self, store: Store) -> None:
        self._store = None
        await store.close()

    async def abandon_lost_runs(self) -> list[str]:
        """Fail the runs whose process died without recording their end (a SIGKILL, a lost
        machine): still `running` in the store, but their `plan:` lock has expired. Done when
        the engine opens and, now and then, by workers; the ids of the runs failed."""
        now = self.clock.now()
        cutoff = now - timedelta(seconds=self.settings.locks.plan_ttl)
        lost = await self.store.abandon_lost_runs(now, cutoff)
        for run_id in lost:
            logger.warning("run %s: its process was lost; recorded as failed", run_id)
        return lost

    async def get_run(self, run_id: str) -> RunRecord:
        """The stored record of a run; RunNotFoundError if the store does not know it."""
        record = await self.store.get_run(run_id)
        if record is None:
            raise RunNotFoundError(run_id, self.store.location)
        return record

    @property
    def delegator(self) -> Delegator:
        """In-process background work of this engine (while it is open)."""
        if self._delegator is None:
            raise RuntimeError("delegation is available inside `async with Engine(...)`")
        return self._delegator

    def delegate(
        self,
        work: Work,
        *,
        goal: str,
        context: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> DelegationHandle:
        """Start `work` (an async callable, a Plan or a plan file) in the background; returns at
        once. At capacity it raises `DelegationRejected`. See docs/delegation.md."""
        return self.delegator.delegate(work, goal=goal, context=context, metadata=metadata)

    def completions(self) -> CompletionStream:
        """`async for done in eng.completions(): ...` — each completion reaches one consumer."""
        return self.delegator.completions()

    def delegations(self) -> list[DelegationHandle]:
        """Running and recently finished delegations."""
        return self.delegator.delegations()

    def interrupt_all(self, reason: str = "interrupted") -> int:
        """Cancel every running delegation; returns how many were signalled."""
        return self.delegator.interrupt_all(reason)

    def delegation_statistics(self) -> DelegationStatistics:
        return self.delegator.statistics()

    @contextmanager
    def events(self) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """`with eng.events() as stream: async for event in stream: ...`"""
        with self.bus.subscribe() as stream:
            yield stream

    async def run_plan(
        self,
        plan: PlanSource,
        *,
        max_parallel: int | None = None,
        failure_mode: FailureMode | str | None = None,
        on_event: Callable[[Event], None] | None = None,
        lock_wait: float = 0.0,
    ) -> RunResult:
        """Run a plan to its end and return every subplan's state.

        A failed run returns a result with `state == failed` (see `RunResult.raise_for_state`);
        cancellation of the caller propagates after the run's processes are gone. If another
        owner holds the plan's (or project's) lock for longer than `lock_wait` seconds,
        `LockConflictError` is raised and nothing runs.
        """
        run = self.prepare_run(
            plan, max_parallel=max_parallel, failure_mode=failure_mode, lock_wait=lock_wait
        )
        with self.bus.listening(on_event) if on_event else _nothing():
            return await run.execute()

    async def resume(
        self,
        run_id: str,
        *,
        max_parallel: int | None = None,
        failure_mode: FailureMode | str | None = None,
        on_event: Callable[[Event], None] | None = None,
        lock_wait: float = 0.0,
    ) -> RunResult:
        """Run again what did not complete in a recorded run, as a new run linked to it."""
        run = await self.prepare_resume(
            run_id, max_parallel=max_parallel, failure_mode=failure_mode, lock_wait=lock_wait
        )
        with self.bus.listening(on_event) if on_event else _nothing():
            return await run.execute()

    async def prepare_resume(
        self,
        run_id: str,
        *,
        max_parallel: int | None = None,
        failure_mode: FailureMode | str | None = None,
        lock_wait: float = 0.0,
    ) -> PreparedRun:
        """Build the run that resumes `run_id` (see `engine.resume`) without starting it.

        Unless given here, the cap and failure mode are the ones the earlier run used.
        """
        point = await resume_point(self.store, run_id)
        previous = point.previous
        return self._prepare(
            point.plan,
            max_parallel=max_parallel if max_parallel is not None else previous.max_parallel,
            failure_mode=failure_mode if failure_mode is not None else previous.failure_mode,
            resume=point,
            lock_wait=lock_wait,
        )

    def prepare_run(
        self,
        plan: PlanSource,
        *,
        max_parallel: int | None = None,
        failure_mode: FailureMode | str | None = None,
        lock_wait: float = 0.0,
        run_id: str | None = None,
        taken: Sequence[LockRecord] = (),
    ) -> PreparedRun:
        """Build a run (id, tracker, dispatcher) without starting it. `lock_wait`: seconds to
        wait for a lock another run holds (its plan, project or a subplan's resource).
        `run_id`: the run's id (default: a new one); `taken`: its locks acquired already
        (a worker's claim takes a job's plan lock with it), held without acquiring them."""
        return self._prepare(
            _as_plan(plan),
            max_parallel=max_parallel,
            failure_mode=failure_mode,
            lock_wait=lock_wait,
            run_id=run_id,
            taken=taken,
        )

    def _prepare(
        self,
        plan: Plan,
        *,
        max_parallel: int | None,
        failure_mode: FailureMode | str | None,
        resume: ResumePoint | None = None,
        lock_wait: float = 0.0,
        run_id: str | None = None,
        taken: Sequence[LockRecord] = (),
    ) -> PreparedRun:
        # A plan's own value beats these: they are the global level of the precedence chain.
        defaults = self._defaults(max_parallel, failure_mode)
        run_id = run_id or new_id()
        tracker = SubplanTracker(
            run_id, plan.name, ((path, sub.kind) for path, sub in plan.walk()), clock=self.clock
        )
        kept = resume.kept if resume is not None else frozenset()
        mark_kept(tracker, kept)
        settings = DispatchSettings(
            defaults=defaults,
            retry_backoff=self.settings.retry_backoff,
            kill_grace=self.settings.kill_grace,
            log_dir=self._log_root() / run_id,
        )
        if not lock_wait >= 0:
            raise ValueError(f"lock_wait must be 0 or more seconds, got {lock_wait}")
        subplan_locks = None
        if declares_locks(plan):
            # A resource lock lives as long as a subplan, renewed like the plan's lock.
            ttl = self.settings.locks.plan_ttl
            subplan_locks = SubplanLocks(lambda: self.locks, run_id, ttl=ttl, wait=lock_wait)
        dispatcher = ParallelSubplanDispatcher(
            plan,
            tracker,
            settings,
            skip=kept.__contains__ if kept else None,
            locks=subplan_locks,
        )
        return PreparedRun(
            plan, tracker, dispatcher, self, defaults, resume, lock_wait=lock_wait, taken=taken
        )

    def _defaults(
        self, max_parallel: int | None, failure_mode: FailureMode | str | None
    ) -> ParallelExecutionConfig:
        """The global level of a run's precedence chain: the caller's values, else the
        settings' (made once: a worker prepares thousands of runs a second)."""
        if max_parallel is None and failure_mode is None:
            if self._settings_defaults is None:
                self._settings_defaults = ParallelExecutionConfig(
                    max_parallel=self.settings.max_parallel,
                    failure_mode=self.settings.failure_mode,
                )
            return self._settings_defaults
        return ParallelExecutionConfig(
            max_parallel=max_parallel if max_parallel is not None else self.settings.max_parallel,
            failure_mode=FailureMode(failure_mode)
            if failure_mode is not None
            else self.settings.failure_mode,
        )

    def _log_root(self) -> Path:
        """Where runs keep their step logs (resolved once: a later `chdir` moves nothing)."""
        if self._logs is None:
            self._logs = Path(self.settings.data_dir).resolve() / "logs"
        return self._logs


def _as_plan(plan: PlanSource) -> Plan:
    if isinstance(plan, Plan):
        return plan
    return load_plan(Path(os.fspath(plan)))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


async def run_plan(
    plan: PlanSource,
    *,
    settings: Settings | None = None,
    clock: Clock | None = None,
    on_event: Callable[[Event], None] | None = None,
    **overrides: Any,
) -> RunResult:
    """Run one plan, recorded in memory only, and return its result. See `Engine.run_plan`."""
    async with Engine(settings, clock=clock) as eng:
        return await eng.run_plan(plan, on_event=on_event, **overrides)
