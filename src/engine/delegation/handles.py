"""What a caller of the `Delegator` holds: a `DelegationHandle` per delegation, the completion
queue and its `CompletionStream`, and the settings and statistics. Only the `Delegator`
(`engine.delegation.delegator`) changes a handle's state or puts on the queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Self

import anyio
from anyio.lowlevel import checkpoint
from pydantic import BaseModel, ConfigDict, Field

from engine.domain.events import DelegationCompleted
from engine.domain.states import DelegationState
from engine.ids import new_id
from engine.ports.clock import Clock


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
        self.id = new_id()
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


class CompletionQueue:
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

    def __init__(self, queue: CompletionQueue) -> None:
        self._queue = queue

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> DelegationCompleted:
        try:
            return await self._queue.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
