"""`Delegator`: admission under the cap, the tasks that run delegations, their one transition
table, their events and the completion queue (see the package docstring).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal, Self, assert_never

import anyio
from anyio.abc import TaskGroup

from engine.delegation.handles import (
    CompletionQueue,
    CompletionStream,
    DelegationHandle,
    DelegationSettings,
    DelegationStatistics,
)
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
        self._queue: CompletionQueue | None = None
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
        self._queue = CompletionQueue(self._settings.completion_buffer)
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
