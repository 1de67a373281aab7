"""The composition root: the only module that wires configuration, store and services.

`Engine` is the long-lived object an async application holds; `run_plan` executes one plan and
returns a `RunResult`. The CLI builds on the same two.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from ulid import ULID

from engine.config import Settings, load_settings
from engine.dispatch.dispatcher import DispatchSettings, ParallelSubplanDispatcher
from engine.dispatch.tracker import SubplanTracker
from engine.domain.events import Event
from engine.domain.plan import ParallelExecutionConfig, Plan
from engine.domain.results import RunResult, SubplanResult
from engine.domain.states import FailureMode, RunState
from engine.errors import AggregateSubplanError, RunCancelledError, SubplanExecutionError
from engine.events import EventBus
from engine.planfile import load_plan
from engine.ports.clock import Clock, SystemClock

PlanSource = Plan | str | os.PathLike[str]


def new_id() -> str:
    return str(ULID())


class Engine:
    """An engine instance: settings, clock, event bus (and, with the store, a database).

    Use as `async with Engine() as eng:`; everything it starts is owned by it and stopped when
    the block exits.
    """

    def __init__(self, settings: Settings | None = None, *, clock: Clock | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.clock: Clock = clock or SystemClock()
        self.bus = EventBus()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

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
    ) -> RunResult:
        """Run a plan to its end and return every subplan's state.

        A failed run returns a result with `state == failed` (see `RunResult.raise_for_state`);
        cancellation of the caller propagates after the run's processes are gone.
        """
        run = self.prepare_run(plan, max_parallel=max_parallel, failure_mode=failure_mode)
        with self.bus.listening(on_event) if on_event else _nothing():
            return await run.execute()

    def prepare_run(
        self,
        plan: PlanSource,
        *,
        max_parallel: int | None = None,
        failure_mode: FailureMode | str | None = None,
    ) -> PreparedRun:
        """Build a run (id, tracker, dispatcher) without starting it."""
        plan = _as_plan(plan)
        # A plan's own value beats these: they are the global level of the precedence chain.
        defaults = ParallelExecutionConfig(
            max_parallel=max_parallel if max_parallel is not None else self.settings.max_parallel,
            failure_mode=FailureMode(failure_mode)
            if failure_mode is not None
            else self.settings.failure_mode,
        )
        run_id = new_id()
        tracker = SubplanTracker(
            run_id, plan.name, ((path, sub.kind) for path, sub in plan.walk()), clock=self.clock
        )
        settings = DispatchSettings(
            defaults=defaults,
            retry_backoff=self.settings.retry_backoff,
            kill_grace=self.settings.kill_grace,
            log_dir=Path(self.settings.data_dir).resolve() / "logs" / run_id,
            base_env=os.environ.copy(),
        )
        return PreparedRun(plan, tracker, ParallelSubplanDispatcher(plan, tracker, settings), self)


class PreparedRun:
    """One run of a plan: `await execute()` runs it; `result()` is its state at any time."""

    def __init__(
        self,
        plan: Plan,
        tracker: SubplanTracker,
        dispatcher: ParallelSubplanDispatcher,
        engine: Engine,
    ) -> None:
        self.plan = plan
        self.tracker = tracker
        self.dispatcher = dispatcher
        self._engine = engine
        self._failure: BaseException | None = None

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    async def execute(self) -> RunResult:
        bus = self._engine.bus
        self.tracker.emit = bus.publish if bus.active else None
        _importable(self.plan.base_dir)
        self._failure = await _execute(self.plan, self.tracker, self.dispatcher)
        return self.result()

    def result(self) -> RunResult:
        return build_result(self.tracker, self._failure)


async def _execute(
    plan: Plan, tracker: SubplanTracker, dispatcher: ParallelSubplanDispatcher
) -> BaseException | None:
    """Drive the run's state around the dispatcher; return the failure of a failed run."""
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
        tracker.set_run_state(RunState.CANCELLED, "interrupted")
        raise
    else:
        tracker.set_run_state(RunState.COMPLETED)
    return failure


def build_result(tracker: SubplanTracker, failure: BaseException | None = None) -> RunResult:
    started, finished = tracker.run_started_at, tracker.run_finished_at
    return RunResult(
        run_id=tracker.run_id,
        plan=tracker.plan_name,
        state=tracker.run_state,
        started_at=started,
        finished_at=finished,
        duration=(finished - started).total_seconds() if started and finished else None,
        error=tracker.run_error,
        exception=failure,
        subplans={
            path: SubplanResult.model_construct(
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


def _as_plan(plan: PlanSource) -> Plan:
    if isinstance(plan, Plan):
        return plan
    return load_plan(Path(os.fspath(plan)))


def _importable(folder: Path) -> None:
    """`call: pkg.mod:fn` finds modules that sit next to the plan file."""
    entry = str(folder)
    if entry not in sys.path:
        sys.path.insert(0, entry)


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
    """Run one plan in memory (no store) and return its result. See `Engine.run_plan`."""
    async with Engine(settings, clock=clock) as eng:
        return await eng.run_plan(plan, on_event=on_event, **overrides)
