"""`Delegator`: in-process background work with a handle, a hard cap and a completion queue.

This module owns ONLY the lifecycle of delegations: admission (the cap), the tasks that run
them (always inside a task group that its owner, or the `Delegator` itself, holds open),
their one transition table, their events and the completion queue. It never queues work
behind the cap, never persists anything and never lets a task outlive its `async with` block.

    async with Delegator(run_plan=eng.run_plan, clock=eng.clock, bus=eng.bus) as delegator:
        handle = delegator.delegate(fetch_report, goal="fetch the weekly report")
        ...                                    # `delegate` returned at once; keep working
        async for done in delegator.completions():
            print(done.goal, done.status, done.result_summary or done.error)

- `delegate()` is synchronous on purpose: the capacity check and the registration run without
  an `await` between them, so concurrent callers can never exceed `max_concurrent_delegations`.
  Call it from the event loop's thread.
- Each delegation goes `running -> succeeded | failed | cancelled` (`DELEGATION_TRANSITIONS`);
  every transition is a `DelegationStateChanged` on the bus, and the end is one
  `DelegationCompleted`, put on the completion queue (each one reaches exactly one consumer)
  and published on the bus. A completion that cannot be queued is logged and counted.
- Errors, summaries and reasons are redacted (`engine.redaction`) before they leave this module.

Wiring into `Engine` (for the integrator; `app.py` is the only module that builds one)
------------------------------------------------------------------------------------
1. Settings: `Engine.__init__(..., delegation: DelegationSettings | None = None)` keeps
   `self._delegation_settings = delegation or DelegationSettings()` (or a `delegation` section
   of `Settings`, env `ENGINE_DELEGATION_MAX_CONCURRENT_DELEGATIONS`, ...).
2. `Engine.__aenter__` enters it on the engine's `AsyncExitStack` (`self._stack`; add one if
   the store work has not), AFTER the store, so that it closes BEFORE the store (completions
   of cancelled work are emitted while the store and the bus are still alive)::

       self._delegator = await self._stack.enter_async_context(
           Delegator(
               run_plan=self.run_plan,          # (Plan | path) -> RunResult, events on self.bus
               clock=self.clock,
               bus=self.bus,
               settings=self._delegation_settings,
           )
       )

   If the engine runs its own task group (`self._tg`), pass `task_group=self._tg` and enter the
   Delegator inside that group's block; the group must outlive the Delegator's block.
   `Engine.__aexit__` needs nothing more: the stack closes the Delegator, which cancels running
   work (reason "closing"), waits for it, emits its completions and ends `completions()`.
3. Forwarders on `Engine` (each raises if the engine is not open)::

       def delegate(self, work: Work, *, goal: str, context: Any = None,
                    metadata: Mapping[str, Any] | None = None) -> DelegationHandle:
           return self._delegator.delegate(work, goal=goal, context=context, metadata=metadata)
       def completions(self) -> CompletionStream: return self._delegator.completions()
       def delegations(self) -> list[DelegationHandle]: return self._delegator.delegations()
       def interrupt_all(self, reason: str = "interrupted") -> int:
           return self._delegator.interrupt_all(reason)
       def delegation_statistics(self) -> DelegationStatistics:
           return self._delegator.statistics()

4. Exports from `engine`: Delegator, DelegationHandle, DelegationSettings, DelegationStatistics,
   CompletionStream, DelegationState, DelegationStateChanged, DelegationCompleted,
   DelegationRejected.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, assert_never

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint
from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from engine.domain.events import DelegationCompleted, DelegationStateChanged, Event
from engine.domain.plan import Plan
from engine.domain.results import RunResult
from engine.domain.states import DELEGATION_TRANSITIONS, DelegationState, RunState
from engine.errors import DelegationRejected, InputError, InvalidTransitionError, NotFoundError
from engine.events import EventBus
from engine.ports.clock import Clock, SystemClock
from engine.redaction import redact as redact_secrets

logger = logging.getLogger(__name__)

PlanSource = Plan | str | os.PathLike[str]
#: What runs Plan / plan-file work: `Engine.run_plan` fits.
PlanRunner = Callable[[PlanSource], Awaitable[RunResult]]
AsyncWork = Callable[[], Awaitable[Any]]
#: A zero-argument async callable, a `Plan`, or the path of a plan file.
Work = AsyncWork | Plan | str | os.PathLike[str]

CLOSE_REASON = "closing"
MAX_TEXT = 2000
SUMMARY_CHARS = 500


class DelegationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Delegations running at once; one more is rejected, never queued.
    max_concurrent_delegations: int = Field(default=3, ge=1)
    #: Finished delegations kept for `delegations()`; the oldest finished are pruned first.
    retention: int = Field(default=50, ge=0)
    #: Completions waiting for a consumer; beyond this a completion is dropped (logged, counted).
    completion_buffer: int = Field(default=1000, ge=1)


@dataclass(frozen=True, slots=True)
class DelegationStatistics:
    capacity: int
    running: int
    #: Finished with `succeeded`.
    completed: int
    failed: int
    cancelled: int
    #: `delegate()` calls refused (at capacity or closing).
    rejected: int
    dispatched: int
    #: Completions handed to a consumer of `completions()`.
    delivered: int
    #: Completions that could not be queued (buffer full or queue closed).
    undelivered: int
    pending_completions: int
    #: Finished delegations still listed by `delegations()`.
    retained: int
    #: Bus subscribers that raised while receiving a delegation event.
    publish_errors: int


class DelegationHandle:
    """One delegation, as its caller sees it. Only the `Delegator` changes its state."""

    __slots__ = (
        "_cancel_reason",
        "_completion",
        "_done",
        "_exception",
        "_scope",
        "_seq",
        "_state",
        "_t0",
        "context",
        "dispatched_at",
        "goal",
        "id",
        "metadata",
        "work",
    )

    def __init__(
        self, *, goal: str, work: str, context: Any, metadata: dict[str, Any], clock: Clock
    ) -> None:
        self.id = str(ULID())
        self.goal = goal
        self.work = work
        self.context = context
        self.metadata = metadata
        self.dispatched_at: datetime = clock.now()
        self._t0 = clock.monotonic()
        self._state = DelegationState.RUNNING
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._cancel_reason: str | None = None
        self._completion: DelegationCompleted | None = None
        self._exception: BaseException | None = None
        self._seq = 0

    def __repr__(self) -> str:
        return f"<DelegationHandle {self.id} {self._state.value} goal={self.goal!r}>"

    @property
    def state(self) -> DelegationState:
        return self._state

    @property
    def done(self) -> bool:
        return self._completion is not None

    @property
    def completion(self) -> DelegationCompleted | None:
        """The completion event once finished (the same object the queue delivers)."""
        return self._completion

    @property
    def exception(self) -> BaseException | None:
        """The exception of failed work, unredacted and in-process only (for its traceback)."""
        return self._exception

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel_reason

    def cancel(self, reason: str = "cancelled") -> bool:
        """Ask running work to stop; True if this call signalled it (the first reason wins)."""
        if self._state is not DelegationState.RUNNING or self._cancel_reason is not None:
            return False
        self._cancel_reason = reason
        self._scope.cancel()
        return True

    async def wait(self) -> DelegationCompleted:
        """Wait for the end; does not take the completion off the queue."""
        await self._done.wait()
        assert self._completion is not None
        return self._completion

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


class _CompletionQueue:
    """FIFO where each item goes to exactly one consumer; once closed it drains, then ends."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[DelegationCompleted] = deque()
        self._capacity = capacity
        self._closed = False
        self._changed = anyio.Event()
        #: Items handed to a consumer.
        self.delivered = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: DelegationCompleted) -> Literal["ok", "full", "closed"]:
        if self._closed:
            return "closed"
        if len(self._items) >= self._capacity:
            return "full"
        self._items.append(item)
        self._wake()
        return "ok"

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def get(self) -> DelegationCompleted:
        # Every await happens before an item is taken, so a cancelled consumer loses nothing.
        await checkpoint()
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            await self._changed.wait()
        self.delivered += 1
        return self._items.popleft()


class CompletionStream:
    """`async for completion in delegator.completions()`; ends once the Delegator is closed
    and the queue is drained. Several streams may be consumed at once: each item goes to one."""

    def __init__(self, queue: _CompletionQueue) -> None:
        self._queue = queue

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> DelegationCompleted:
        try:
            return await self._queue.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class Delegator:
    """Runs delegated work in the background under a cap; see the module docstring."""

    def __init__(
        self,
        *,
        run_plan: PlanRunner | None = None,
        clock: Clock | None = None,
        bus: EventBus | None = None,
        settings: DelegationSettings | None = None,
        task_group: TaskGroup | None = None,
        redact: Callable[[str], str] = redact_secrets,
    ) -> None:
        self._settings = settings if settings is not None else DelegationSettings()
        self._run_plan = run_plan
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._bus = bus
        self._given_group = task_group
        self._redact = redact
        self._phase: Literal["new", "open", "closing", "closed"] = "new"
        self._stack = AsyncExitStack()
        self._group: TaskGroup | None = None
        self._queue: _CompletionQueue | None = None
        self._drained: anyio.Event | None = None
        self._handles: dict[str, DelegationHandle] = {}
        self._finished: deque[str] = deque()
        self._running = 0
        self._ended = dict.fromkeys(DelegationState, 0)
        self._rejected = self._dispatched = 0
        self._undelivered = self._publish_errors = 0

    async def __aenter__(self) -> Self:
        if self._phase != "new":
            raise RuntimeError("a Delegator can be opened only once")
        self._queue = _CompletionQueue(self._settings.completion_buffer)
        if self._given_group is None:
            self._group = await self._stack.enter_async_context(anyio.create_task_group())
        else:
            self._group = self._given_group
        self._phase = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Cancel what runs, wait for it (its completions are emitted), then end the queue."""
        self._phase = "closing"
        self.interrupt_all(CLOSE_REASON)
        try:
            if self._given_group is None:
                return await self._stack.__aexit__(exc_type, exc, tb)
            if self._running:
                self._drained = anyio.Event()
                await self._drained.wait()
            return None
        finally:
            self._phase = "closed"
            assert self._queue is not None
            self._queue.close()

    # -- the API -------------------------------------------------------------------------

    def delegate(
        self,
        work: Work,
        *,
        goal: str,
        context: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> DelegationHandle:
        """Start `work` in the background and return its handle at once.

        Raises `DelegationRejected` at capacity (the work is not queued) or while closing, and
        `InputError` for work that is neither an async callable, a Plan nor a plan path.
        """
        if self._phase == "new" or self._group is None:
            raise RuntimeError("open the Delegator first: `async with Delegator(...)`")
        run, described = self._as_async_work(work)
        if not isinstance(goal, str) or not goal.strip():
            raise InputError(f"goal must be a non-empty string, got {goal!r}")
        meta = dict(metadata or {})
        if not all(isinstance(key, str) for key in meta):
            raise InputError("metadata keys must be strings")
        limit = self._settings.max_concurrent_delegations
        if self._phase != "open" or self._running >= limit:
            self._rejected += 1
            raise DelegationRejected(limit, self._running, closed=self._phase != "open")
        # No await from the check above to the registration below: that is the atomicity.
        handle = DelegationHandle(
            goal=goal, work=described, context=context, metadata=meta, clock=self._clock
        )
        self._handles[handle.id] = handle
        self._running += 1
        try:
            self._group.start_soon(self._drive, handle, run, name=f"delegation {handle.id}")
        except BaseException:
            del self._handles[handle.id]
            self._running -= 1
            raise
        self._dispatched += 1
        self._publish(
            DelegationStateChanged(
                at=handle.dispatched_at,
                seq=handle._next_seq(),
                delegation_id=handle.id,
                goal=goal,
                to=DelegationState.RUNNING,
            )
        )
        return handle

    def completions(self) -> CompletionStream:
        if self._queue is None:
            raise RuntimeError("open the Delegator first: `async with Delegator(...)`")
        return CompletionStream(self._queue)

    def delegations(self) -> list[DelegationHandle]:
        """Running and recently finished delegations, oldest dispatch first."""
        return list(self._handles.values())

    def get(self, delegation_id: str) -> DelegationHandle:
        try:
            return self._handles[delegation_id]
        except KeyError:
            raise NotFoundError(
                f"no delegation {delegation_id!r} (unknown, or pruned after finishing)"
            ) from None

    def interrupt_all(self, reason: str = "interrupted") -> int:
        """Cancel every running delegation; return how many this call signalled."""
        return sum(handle.cancel(reason) for handle in list(self._handles.values()))

    def statistics(self) -> DelegationStatistics:
        return DelegationStatistics(
            capacity=self._settings.max_concurrent_delegations,
            running=self._running,
            completed=self._ended[DelegationState.SUCCEEDED],
            failed=self._ended[DelegationState.FAILED],
            cancelled=self._ended[DelegationState.CANCELLED],
            rejected=self._rejected,
            dispatched=self._dispatched,
            delivered=self._queue.delivered if self._queue is not None else 0,
            undelivered=self._undelivered,
            pending_completions=len(self._queue) if self._queue is not None else 0,
            retained=len(self._finished),
            publish_errors=self._publish_errors,
        )

    # -- inside ----------------------------------------------------------------------------

    def _as_async_work(self, work: Work) -> tuple[AsyncWork, str]:
        if isinstance(work, Plan | str | os.PathLike):
            if self._run_plan is None:
                raise InputError("this Delegator was given no run_plan: it cannot run plans")
            what = f"plan {work.name}" if isinstance(work, Plan) else f"plan file {work}"
            return functools.partial(self._run_plan, work), what
        if inspect.iscoroutine(work):
            work.close()  # never awaited otherwise
            raise InputError(
                "pass the async function, not a coroutine: delegate(fetch, ...) or "
                "delegate(lambda: fetch(arg), ...)"
            )
        if not callable(work):
            raise InputError(
                "work must be a zero-argument async callable, a Plan or a plan file path, "
                f"got {type(work).__name__}"
            )
        target = work.func if isinstance(work, functools.partial) else work
        module = getattr(target, "__module__", None)
        name = getattr(target, "__qualname__", None) or type(target).__qualname__
        return work, f"{module}.{name}" if module else name

    async def _drive(self, handle: DelegationHandle, run: AsyncWork) -> None:
        value: Any = None
        try:
            with handle._scope:
                awaitable = run()
                if not inspect.isawaitable(awaitable):
                    raise TypeError(
                        f"work returned {type(awaitable).__name__}, not an awaitable "
                        "(delegate an async function)"
                    )
                value = await awaitable
        except Exception as exc:
            handle._exception = exc
            error_type, error = _describe(exc)
            self._finish(handle, DelegationState.FAILED, error=error, error_type=error_type)
            return
        except BaseException:
            # Cancelled from outside (the owner's group) or KeyboardInterrupt: report, go on.
            reason = handle._cancel_reason or "interrupted"
            self._finish(handle, DelegationState.CANCELLED, reason=reason)
            raise
        if handle._scope.cancelled_caught:
            self._finish(handle, DelegationState.CANCELLED, reason=handle._cancel_reason)
        elif isinstance(value, RunResult):
            self._finish_run(handle, value)
        else:
            self._finish(handle, DelegationState.SUCCEEDED, value=value)

    def _finish_run(self, handle: DelegationHandle, result: RunResult) -> None:
        """A plan run returns its failure as a state, not an exception."""
        error_type = type(result.exception).__name__ if result.exception is not None else None
        match result.state:
            case RunState.COMPLETED:
                self._finish(handle, DelegationState.SUCCEEDED, value=result)
            case RunState.CANCELLED:
                reason = result.error or "plan run cancelled"
                self._finish(handle, DelegationState.CANCELLED, value=result, reason=reason)
            case RunState.FAILED | RunState.PENDING | RunState.RUNNING:
                error = result.error or f"plan run ended {result.state.value}"
                self._finish(
                    handle, DelegationState.FAILED, value=result, error=error, error_type=error_type
                )
            case _:
                assert_never(result.state)

    def _finish(
        self,
        handle: DelegationHandle,
        new: DelegationState,
        *,
        value: Any = None,
        error: str | None = None,
        error_type: str | None = None,
        reason: str | None = None,
    ) -> None:
        """The ONE place a delegation changes state after dispatch."""
        old = handle._state
        if new not in DELEGATION_TRANSITIONS[old]:
            raise InvalidTransitionError(f"delegation {handle.id}", old, new)
        now = self._clock.now()
        duration = max(0.0, self._clock.monotonic() - handle._t0)
        handle._state = new
        self._running -= 1
        self._ended[new] += 1
        error_text = self._clean(error)
        reason = self._clean(reason)
        self._publish(
            DelegationStateChanged(
                at=now,
                seq=handle._next_seq(),
                delegation_id=handle.id,
                goal=handle.goal,
                from_=old,
                to=new,
                error=error_text,
                reason=reason,
                duration=duration,
            )
        )
        completion = DelegationCompleted(
            at=now,
            seq=handle._next_seq(),
            delegation_id=handle.id,
            goal=handle.goal,
            work=handle.work,
            context=handle.context,
            metadata=handle.metadata,
            status=new,
            result=value,
            result_summary=self._clean(_summarize(value)),
            error=error_text,
            error_type=error_type,
            reason=reason,
            dispatched_at=handle.dispatched_at,
            completed_at=now,
            duration=duration,
        )
        handle._completion = completion
        handle._done.set()
        self._finished.append(handle.id)
        while len(self._finished) > self._settings.retention:
            self._handles.pop(self._finished.popleft(), None)
        self._deliver(completion)
        self._publish(completion)
        if self._running == 0 and self._drained is not None:
            self._drained.set()

    def _deliver(self, completion: DelegationCompleted) -> None:
        assert self._queue is not None
        outcome = self._queue.put(completion)
        if outcome != "ok":
            self._undelivered += 1
            logger.error(
                "delegation %s (%s): completion not delivered: queue %s; "
                "it stays in delegations() until pruned",
                completion.delegation_id,
                completion.status.value,
                outcome,
            )

    def _publish(self, event: Event) -> None:
        if self._bus is None or not self._bus.active:
            return
        try:
            self._bus.publish(event)
        except Exception:
            self._publish_errors += 1
            logger.exception("an event bus subscriber failed on %s", event.type)

    def _clean(self, text: str | None) -> str | None:
        """Redact first, then cut: cutting first could leave half a secret unrecognized."""
        if text is None:
            return None
        try:
            text = self._redact(text)
        except Exception:
            logger.exception("redaction failed; the text is withheld")
            return "<withheld: redaction failed>"
        return text if len(text) <= MAX_TEXT else f"{text[: MAX_TEXT - 1]}…"


def _describe(exc: BaseException) -> tuple[str, str]:
    """(type name, "Type: message"), with each leaf of an exception group."""
    name = type(exc).__name__
    if isinstance(exc, BaseExceptionGroup):
        return name, "; ".join(_describe(leaf)[1] for leaf in exc.exceptions)
    message = str(exc)
    return name, f"{name}: {message}" if message else name


def _summarize(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, RunResult):
        counts: dict[str, int] = {}
        for sub in value.subplans.values():
            counts[sub.state.value] = counts.get(sub.state.value, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        took = f" in {value.duration:.3f}s" if value.duration is not None else ""
        return f"plan {value.plan!r} run {value.run_id} {value.state.value}{took} ({states})"
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} (repr failed)>"
    return text if len(text) <= SUMMARY_CHARS else f"{text[: SUMMARY_CHARS - 1]}…"
