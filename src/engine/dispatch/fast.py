"""`dispatch()`: the in-process fast path for a flat list of async callables.

No files, no store, no subprocesses: a fixed pool of `max_parallel` worker tasks pulls the next
index from one shared iterator, so at most `max_parallel` tasks ever exist and no per-item task
or semaphore is created. States are still tracked per item through `SubplanTracker`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from engine.dispatch.tracker import Emit, SubplanTracker
from engine.domain.plan import MAX_PARALLEL_LIMIT
from engine.domain.states import FailureMode, RunState, SubplanState
from engine.errors import AggregateSubplanError, InputError, SubplanExecutionError
from engine.ports.clock import Clock, SystemClock

_CLOCK = SystemClock()


async def dispatch(
    funcs: Sequence[Callable[[], Awaitable[Any]]],
    *,
    max_parallel: int = 4,
    failure_mode: FailureMode | str = FailureMode.FAIL_FAST,
    on_event: Emit | None = None,
    clock: Clock | None = None,
    run_id: str = "dispatch",
) -> list[Any]:
    """Run zero-argument async callables, at most `max_parallel` at once; results in order.

    fail_fast: the first exception cancels the others and raises SubplanExecutionError (its
    path is the index; the original exception is its __cause__). continue_on_error: all run,
    then AggregateSubplanError carries every failure.
    """
    if isinstance(max_parallel, bool) or not 1 <= max_parallel <= MAX_PARALLEL_LIMIT:
        raise InputError(
            f"max_parallel must be between 1 and {MAX_PARALLEL_LIMIT}, got {max_parallel!r}"
        )
    try:
        mode = FailureMode(failure_mode)
    except ValueError:
        allowed = ", ".join(m.value for m in FailureMode)
        raise InputError(f"failure_mode must be one of {allowed}, got {failure_mode!r}") from None
    count = len(funcs)
    keys = [str(i) for i in range(count)]
    tracker = SubplanTracker(
        run_id,
        "dispatch",
        ((key, "call") for key in keys),
        clock=clock or _CLOCK,
        emit=on_event,
        wall_times=False,
    )
    results: list[Any] = [None] * count
    failures: list[SubplanExecutionError] = []
    fail_fast = mode is FailureMode.FAIL_FAST
    next_index = iter(range(count)).__next__
    transition = tracker.transition
    running, completed, failed = SubplanState.RUNNING, SubplanState.COMPLETED, SubplanState.FAILED

    async def worker() -> None:
        cancel_scope = tg.cancel_scope
        while True:
            if cancel_scope.cancel_called:
                # fail-fast fired while this worker ran without a checkpoint: start nothing.
                return
            try:
                index = next_index()
            except StopIteration:
                return
            key = keys[index]
            transition(key, running)
            try:
                results[index] = await funcs[index]()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                transition(key, failed, error)
                failure = SubplanExecutionError(key, error)
                failure.__cause__ = exc
                failures.append(failure)
                if fail_fast:
                    tg.cancel_scope.cancel()
                    return
            except BaseException:
                transition(key, SubplanState.CANCELLED, "cancelled")
                raise
            else:
                transition(key, completed)

    tracker.set_run_state(RunState.RUNNING)
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(min(max_parallel, count)):
                tg.start_soon(worker)
    except BaseException:
        _cancel_pending(tracker)
        tracker.set_run_state(RunState.CANCELLED, "interrupted")
        raise
    _cancel_pending(tracker)
    if failures:
        tracker.set_run_state(RunState.FAILED, str(failures[0]))
    else:
        tracker.set_run_state(RunState.COMPLETED)
    if failures:
        if fail_fast:
            raise failures[0]
        raise AggregateSubplanError(failures)
    return results


def _cancel_pending(tracker: SubplanTracker) -> None:
    for key, status in tracker.subplans.items():
        if status.state is SubplanState.PENDING:
            tracker.transition(key, SubplanState.CANCELLED, "cancelled before it started")
