"""`PreparedRun`: one run of a plan, built by `Engine.prepare_run` and started by `execute()`.

This module owns the life of ONE run: its `plan:`/`project:` locks (held from before it is
recorded until its terminal state is: they are released in the transaction that writes it), its
record (through the engine's recorder), the run's
own state around the dispatcher, and its `RunResult`. The engine (`engine.app`) wires the
services it uses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from engine.dispatch.dispatcher import ParallelSubplanDispatcher
from engine.dispatch.tracker import SubplanTracker
from engine.domain.lock import LockRecord, Owner
from engine.domain.plan import ParallelExecutionConfig, Plan
from engine.domain.results import RunResult, SubplanResult
from engine.domain.states import RunState
from engine.errors import (
    AggregateSubplanError,
    LockExpiredError,
    RunCancelledError,
    SubplanExecutionError,
)
from engine.ids import new_ids
from engine.locks.enforce import run_claims
from engine.ports.store import RunRecord, SubplanRecord
from engine.resume import PlanSnapshot, ResumePoint

if TYPE_CHECKING:
    from engine.app import Engine


class PreparedRun:
    """One run of a plan: `await execute()` runs it; `result()` is its state at any time."""

    def __init__(
        self,
        plan: Plan,
        tracker: SubplanTracker,
        dispatcher: ParallelSubplanDispatcher,
        engine: Engine,
        defaults: ParallelExecutionConfig,
        resume: ResumePoint | None = None,
        *,
        lock_wait: float = 0.0,
        taken: Sequence[LockRecord] = (),
    ) -> None:
        self.plan = plan
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.defaults = defaults
        #: Set for a resumed run: the earlier run, what is kept from it, notes for the user.
        self.resume = resume
        #: Seconds to wait for a lock held by another run before failing.
        self.lock_wait = lock_wait
        #: Locks of this run acquired already (by a job's claim): held, not acquired again.
        self.taken = taken
        self._engine = engine
        self._failure: BaseException | None = None

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    @property
    def resumed_from(self) -> str | None:
        return self.resume.previous.id if self.resume is not None else None

    async def execute(
        self, *, record_first: bool = True, on_ended: Callable[[], None] | None = None
    ) -> RunResult:
        """Take the run's locks, record the run, run it, and return once its terminal state is
        in the store. `LockConflictError` (before anything is recorded) if another owner holds
        the plan's or project's lock beyond `lock_wait`. `record_first=False`: start without
        waiting for the run's creation to be written (see `Recorder.begin`; for workers).
        `on_ended()` is called once the run has ended, before its end is written (a worker
        takes its next job meanwhile)."""
        engine = self._engine
        recorder = engine._recorder
        if recorder is None:
            async with engine:
                return await self.execute(record_first=record_first, on_ended=on_ended)
        bus = engine.bus
        self.tracker.emit = bus.publish if bus.active else None
        _importable(self.plan.base_dir)
        claims = run_claims(self.plan, engine.settings.locks)
        owner = Owner.of_run(self.run_id)
        try:
            locks = engine.locks
            taken, self.taken = self.taken, ()
            async with locks.hold_all(claims, owner, wait=self.lock_wait, taken=taken) as guard:
                run, plan_json, subplans = self._records()
                await recorder.begin(run, plan_json, subplans, self.tracker, wait=record_first)
                try:
                    self._failure = await _execute(
                        self.plan, self.tracker, self.dispatcher, lambda: guard.lost
                    )
                finally:
                    if on_ended is not None:
                        on_ended()
                    # The run's locks are released in the transaction that records its end.
                    releases = locks.releases(guard)
                    try:
                        await recorder.settle(releasing=releases)
                    finally:
                        locks.released_with(guard, releases)
        except LockExpiredError as exc:
            # Lost while the run was going: `_execute` failed it with this error already (a
            # loss noticed after it completed changes nothing).
            if self.tracker.run_state is RunState.FAILED and self._failure is None:
                self._failure = exc
        return self.result()

    def result(self) -> RunResult:
        return build_result(self.tracker, self._failure, self.resumed_from)

    def _records(self) -> tuple[RunRecord, str, list[SubplanRecord]]:
        """The run's first record, its plan as stored, and each subplan's identity and place."""
        snapshot = PlanSnapshot.of(self.plan)
        run_id = self.run_id
        source = self.plan.source
        run = RunRecord(
            id=run_id,
            plan_name=self.plan.name,
            project=self.plan.project,
            state=self.tracker.run_state,
            created_at=self._engine.clock.now(),
            max_parallel=self.defaults.max_parallel,
            failure_mode=self.defaults.failure_mode,
            plan_digest=snapshot.digest,
            plan_source=str(source) if source is not None else None,
            resumed_from=self.resumed_from,
        )
        statuses = self.tracker.subplans
        subplans = [
            SubplanRecord(
                id=id_,
                run_id=run_id,
                path=path,
                position=position,
                kind=status.kind,
                state=status.state,
            )
            for position, (id_, (path, status)) in enumerate(
                zip(new_ids(len(statuses)), statuses.items(), strict=True)
            )
        ]
        return run, snapshot.json, subplans


async def _execute(
    plan: Plan,
    tracker: SubplanTracker,
    dispatcher: ParallelSubplanDispatcher,
    lost: Callable[[], LockExpiredError | None] = lambda: None,
) -> BaseException | None:
    """Drive the run's state around the dispatcher; return the failure of a failed run.
    `lost` tells a cancellation by a lost run lock (the run failed) from an interruption."""
    tracker.set_run_state(RunState.RUNNING)
    failure: BaseException | None = None
    try:
        if plan.timeout is not None:
            with anyio.fail_after(plan.timeout):
                await dispatcher.run()
        else:
            await dispatcher.run()
    except (SubplanExecutionError, AggregateSubplanError) as exc:
        failure = exc
        tracker.set_run_state(RunState.FAILED, str(exc))
    except TimeoutError:
        failure = RunCancelledError(f"plan timed out after {plan.timeout:g}s")
        tracker.set_run_state(RunState.FAILED, str(failure))
    except BaseException:
        cause = lost()
        if cause is not None:
            tracker.set_run_state(RunState.FAILED, str(cause))
        else:
            tracker.set_run_state(RunState.CANCELLED, "interrupted")
        raise
    else:
        tracker.set_run_state(RunState.COMPLETED)
    return failure


def build_result(
    tracker: SubplanTracker,
    failure: BaseException | None = None,
    resumed_from: str | None = None,
) -> RunResult:
    started, finished = tracker.run_started_at, tracker.run_finished_at
    return RunResult(
        run_id=tracker.run_id,
        resumed_from=resumed_from,
        plan=tracker.plan_name,
        state=tracker.run_state,
        started_at=started,
        finished_at=finished,
        duration=(finished - started).total_seconds() if started and finished else None,
        error=tracker.run_error,
        exception=failure,
        subplans={
            path: SubplanResult(
                path=path,
                kind=s.kind,
                state=s.state,
                attempts=s.attempts,
                started_at=s.started_at,
                finished_at=s.finished_at,
                duration=s.duration,
                error=s.error,
                output_tail=s.output_tail,
                log_path=s.log_path,
                result=s.result,
            )
            for path, s in tracker.subplans.items()
        },
    )


def _importable(folder: Path) -> None:
    """`call: pkg.mod:fn` finds modules that sit next to the plan file."""
    entry = str(folder)
    if entry not in sys.path:
        sys.path.insert(0, entry)
