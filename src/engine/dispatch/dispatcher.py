"""`ParallelSubplanDispatcher`: runs the subplan tree of one run.

One anyio task group per group; a slot of the group's `AsyncSemaphoreLimiter` is acquired
*before* a child's task is created and released when the child is terminal; `needs` edges gate
readiness. fail_fast cancels the group's scope at the first failure; continue_on_error lets every
child finish and aggregates. A group returns only when every child is terminal.

What a step's failure leaves for the record (the tail of a `run` step's output, a `call`'s
error) passes through the redactor first (`engine.redaction`, with the step's environment):
what is stored and shown never holds its secrets. The log files keep the raw output.

A child that declares `locks` is handed to a task of its own that waits for its locks holding
no slot (so the group's other ready children run meanwhile), then holds a slot and its locks
together (`engine.locks.enforce`), and releases the locks once the child is terminal. A lock it
cannot get fails it; a lock lost while it runs cancels it and fails it with the loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from engine.dispatch.limiter import AsyncSemaphoreLimiter
from engine.dispatch.steps import (
    CallTarget,
    StepFailed,
    read_tail,
    run_command,
    write_traceback,
)
from engine.dispatch.tracker import SubplanTracker
from engine.domain.graph import dependents
from engine.domain.plan import ParallelExecutionConfig, Plan, Subplan
from engine.domain.states import FailureMode, SubplanState
from engine.errors import AggregateSubplanError, LockError, StoreError, SubplanExecutionError
from engine.redaction import Redactor

if TYPE_CHECKING:
    from engine.locks.enforce import SubplanLocks

MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class DispatchSettings:
    """What the dispatcher needs from the global configuration."""

    defaults: ParallelExecutionConfig = field(default_factory=ParallelExecutionConfig)
    retry_backoff: float = 1.0
    kill_grace: float = 5.0
    log_dir: Path = Path(".engine/logs")
    #: The environment commands start from; None: this process's, as it is when they start.
    base_env: Mapping[str, str] | None = None


def log_file_name(path: str) -> str:
    return path.replace("/", "__") + ".log"


class ParallelSubplanDispatcher:
    def __init__(
        self,
        plan: Plan,
        tracker: SubplanTracker,
        settings: DispatchSettings,
        *,
        skip: Callable[[str], bool] | None = None,
        rng: random.Random | None = None,
        locks: SubplanLocks | None = None,
    ) -> None:
        self.plan = plan
        self.tracker = tracker
        self.settings = settings
        #: The `resource:` locks of subplans that declare `locks` (None: locks are not held).
        self.locks = locks
        self._skip_completed = skip
        #: The retry backoff's jitter; made on the first retry (most runs never need one).
        self._rng = rng
        self.limiters: dict[str, AsyncSemaphoreLimiter] = {}
        self._callables: dict[str, CallTarget] = {}

    async def run(self) -> None:
        """Run the whole tree. Raises SubplanExecutionError / AggregateSubplanError on failure."""
        plan = self.plan
        config = self.settings.defaults.for_group(plan.max_parallel, plan.failure_mode)
        env = dict(plan.env)  # what plans add; the base is merged in only when a command starts
        cwd = _join_cwd(plan.base_dir, plan.cwd)
        await self._run_group(plan.subplans, "", config, env, cwd)

    async def _run_group(
        self,
        children: list[Subplan],
        prefix: str,
        config: ParallelExecutionConfig,
        env: dict[str, str],
        cwd: Path,
    ) -> None:
        """Run one group's children to a terminal state each.

        A pool of at most `max_parallel` worker tasks takes ready children in turn; each worker
        holds a limiter slot while its child runs. No task is created per child.
        """
        tracker = self.tracker
        by_name = {c.name: c for c in children}
        waiting = {c.name: len(c.needs) for c in children}
        needed_by = dependents({c.name: c.needs for c in children})
        ready: deque[Subplan] = deque()
        unstarted = len(children)
        failures: list[SubplanExecutionError] = []
        limiter = AsyncSemaphoreLimiter(config.max_parallel)
        self.limiters[prefix.rstrip("/")] = limiter
        wake = asyncio.Event()
        fail_fast = config.failure_mode is FailureMode.FAIL_FAST

        def close(name: str, state: SubplanState, reason: str) -> None:
            """A child that will never start: skipped (a need failed) or cancelled; and then its
            dependents, depth first. A loop, not recursion: a function that calls itself is a
            reference cycle, which would keep the whole run alive until the garbage collector
            finds it."""
            nonlocal unstarted
            todo = [(name, reason)]
            while todo:
                name, reason = todo.pop()
                path = prefix + name
                if tracker.subplans[path].state is not SubplanState.PENDING:
                    continue
                tracker.transition(path, state, reason)
                self._close_subtree(path, state, reason)
                unstarted -= 1
                todo.extend((d, _need_reason(name, state)) for d in reversed(needed_by[name]))

        def finished(name: str, state: SubplanState, errors: list[SubplanExecutionError]) -> None:
            limiter.release()
            settle(name, state, errors)

        def settle(name: str, state: SubplanState, errors: list[SubplanExecutionError]) -> None:
            if errors:
                failures.extend(errors)
                if fail_fast:
                    scope.cancel()
            for dependent in needed_by[name]:
                if state is SubplanState.COMPLETED:
                    waiting[dependent] -= 1
                    if waiting[dependent] == 0:
                        ready.append(by_name[dependent])
                else:
                    close(dependent, SubplanState.SKIPPED, _need_reason(name, state))
            wake.set()

        async def worker() -> None:
            nonlocal unstarted
            cancel_scope = scope
            while True:
                while not ready:
                    if unstarted == 0:
                        return
                    wake.clear()
                    await wake.wait()
                if cancel_scope.cancel_called:
                    # fail-fast fired while this worker ran without a checkpoint: start nothing.
                    return
                child = ready.popleft()
                unstarted -= 1
                if unstarted == 0:
                    wake.set()  # let idle workers see there is nothing left to take
                if (
                    locks is not None
                    and child.locks
                    and locks.wanted(prefix + child.name, child.locks)
                ):
                    tg.start_soon(locked, child, locks)
                    continue
                await limiter.acquire()
                await self._run_child(child, prefix, config, env, cwd, finished)

        async def locked(child: Subplan, locks: SubplanLocks) -> None:
            """Wait for the child's locks holding no slot; then run it like the others."""
            path = prefix + child.name
            try:
                async with locks.hold(path, child.locks, limiter.acquire, limiter.release) as guard:
                    await self._run_child(
                        child, prefix, config, env, cwd, finished, lost=lambda: guard.lost
                    )
            except (LockError, StoreError) as exc:
                # Refused (another run holds it past --lock-wait) or the store failed; a child
                # that ran (and maybe lost its lock) has recorded its end already.
                if tracker.subplans[path].state is SubplanState.PENDING:
                    tracker.transition(path, SubplanState.RUNNING)
                    tracker.transition(path, SubplanState.FAILED, str(exc))
                    self._close_subtree(path, SubplanState.CANCELLED, "its lock was not acquired")
                    failure = SubplanExecutionError(path, str(exc))
                    failure.__cause__ = exc
                    settle(child.name, SubplanState.FAILED, [failure])

        locks = self.locks
        for child in children:
            if self._is_kept(prefix + child.name):
                # Resumed run: kept from the earlier run, counts as completed for `needs`.
                unstarted -= 1
                for dependent in needed_by[child.name]:
                    waiting[dependent] -= 1
        for child in children:
            if waiting[child.name] == 0 and not self._is_kept(prefix + child.name):
                ready.append(child)

        workers = min(config.max_parallel, unstarted)
        no_lock_waits = locks is None or not any(c.locks for c in children)
        #: What fail-fast cancels: the workers' scope.
        scope = anyio.CancelScope()
        try:
            if unstarted == 1 and no_lock_waits:
                # One child to run, in this task: fail-fast has nothing else to cancel.
                await worker()
            elif workers == 1 and no_lock_waits:
                # One worker and no lock waits: it runs in this task (no task group to make).
                with scope:
                    await worker()
            else:
                async with anyio.create_task_group() as tg:
                    scope = tg.cancel_scope
                    for _ in range(workers):
                        tg.start_soon(worker)
        finally:
            for child in children:
                close(child.name, SubplanState.CANCELLED, "cancelled before it started")

        if failures:
            if fail_fast:
                raise failures[0]
            raise AggregateSubplanError(failures)

    def _is_kept(self, path: str) -> bool:
        return self._skip_completed is not None and self._skip_completed(path)

    def _close_subtree(self, path: str, state: SubplanState, reason: str) -> None:
        prefix = path + "/"
        for sub_path, status in self.tracker.subplans.items():
            if sub_path.startswith(prefix) and status.state is SubplanState.PENDING:
                self.tracker.transition(sub_path, state, reason)

    async def _run_child(
        self,
        child: Subplan,
        prefix: str,
        config: ParallelExecutionConfig,
        env: dict[str, str],
        cwd: Path,
        finished: Callable[[str, SubplanState, list[SubplanExecutionError]], None],
        *,
        lost: Callable[[], LockError | None] | None = None,
    ) -> None:
        path = prefix + child.name
        tracker = self.tracker
        state = SubplanState.CANCELLED
        errors: list[SubplanExecutionError] = []
        child_env = {**env, **child.env} if child.env else env
        child_cwd = _join_cwd(cwd, child.cwd)
        try:
            tracker.transition(path, SubplanState.RUNNING)
            try:
                if child.subplans is not None:
                    with _timeout(child.timeout):
                        await self._run_group(
                            child.subplans,
                            path + "/",
                            config.for_group(child.max_parallel, child.failure_mode),
                            child_env,
                            child_cwd,
                        )
                else:
                    await self._run_step(child, path, child_env, child_cwd)
            except SubplanExecutionError as exc:
                errors = [exc]
            except AggregateSubplanError as exc:
                errors = exc.failures
            except StepFailed as exc:
                errors = [SubplanExecutionError(path, exc.message)]
            except TimeoutError:
                errors = [SubplanExecutionError(path, f"timed out after {child.timeout:g}s")]
            if errors:
                state = SubplanState.FAILED
                message = errors[0].error if errors[0].path == path else str(_group_error(errors))
                tracker.transition(path, state, message)
            else:
                state = SubplanState.COMPLETED
                tracker.transition(path, state)
        finally:
            if state is SubplanState.CANCELLED:
                cause = lost() if lost is not None else None
                if cause is not None:
                    # Its lock was lost: it failed, it was not merely cancelled.
                    state = SubplanState.FAILED
                    errors = [SubplanExecutionError(path, str(cause))]
                    errors[0].__cause__ = cause
                tracker.transition(path, state, str(cause) if cause else "cancelled")
                self._close_subtree(path, SubplanState.CANCELLED, "cancelled")
            finished(child.name, state, errors)

    async def _run_step(self, child: Subplan, path: str, env: dict[str, str], cwd: Path) -> None:
        """Every attempt of one step; raises StepFailed after the last failed attempt."""
        status = self.tracker.subplans[path]
        attempts = child.retries + 1
        for attempt in range(1, attempts + 1):
            status.attempts = attempt
            try:
                if child.timeout is None:
                    await self._attempt(child, path, env, cwd)
                else:
                    with anyio.fail_after(child.timeout):
                        await self._attempt(child, path, env, cwd)
                return
            except TimeoutError:
                error = f"timed out after {child.timeout:g}s"
                if attempt == attempts:
                    raise StepFailed(error) from None
            except StepFailed as exc:
                error = exc.message
                if attempt == attempts:
                    raise
            delay = self._backoff(attempt)
            self.tracker.attempt_failed(path, error, delay)
            await anyio.sleep(delay)

    async def _attempt(self, child: Subplan, path: str, env: dict[str, str], cwd: Path) -> None:
        status = self.tracker.subplans[path]
        if child.run is not None:
            log_path = self.log_path(path)
            status.log_path = str(log_path)
            step_env = {
                **self._environment(env),
                "ENGINE_RUN_ID": self.tracker.run_id,
                "ENGINE_SUBPLAN_PATH": path,
            }
            try:
                await run_command(
                    child.run,
                    env=step_env,
                    cwd=cwd,
                    log_path=log_path,
                    kill_grace=self.settings.kill_grace,
                )
            finally:
                tail = read_tail(log_path)
                status.output_tail = Redactor(step_env)(tail) if tail is not None else None
            return
        assert child.call is not None
        target = self._callables.get(child.call)
        if target is None:
            target = self._callables[child.call] = CallTarget.resolve(child.call)
        try:
            status.result = await target.invoke(child.with_ or {})
        except StepFailed as exc:
            log_path = self.log_path(path)
            write_traceback(log_path, exc)
            status.log_path = str(log_path)
            secrets = Redactor(self._environment(env))
            raise StepFailed(secrets(exc.message)) from exc.__cause__

    def _environment(self, env: dict[str, str]) -> dict[str, str]:
        """A step's whole environment: the base (this process's by default) and what the plan
        and its groups add (`env`)."""
        base = self.settings.base_env
        return {**(os.environ if base is None else base), **env}

    def log_path(self, path: str) -> Path:
        return self.settings.log_dir / log_file_name(path)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform in [0, base * 2**(attempt-1)]."""
        ceiling = min(MAX_BACKOFF, self.settings.retry_backoff * 2 ** (attempt - 1))
        if self._rng is None:
            self._rng = random.Random()
        return self._rng.uniform(0, ceiling)


def _need_reason(name: str, state: SubplanState) -> str:
    return f"needs {name!r}, which was {state.value}"


def _group_error(errors: list[SubplanExecutionError]) -> Exception:
    return errors[0] if len(errors) == 1 else AggregateSubplanError(errors)


def _join_cwd(base: Path, cwd: str | None) -> Path:
    return base if cwd is None else (base / cwd)


@contextlib.contextmanager
def _timeout(seconds: float | None) -> Iterator[None]:
    if seconds is None:
        yield
    else:
        with anyio.fail_after(seconds):
            yield
