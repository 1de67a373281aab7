"""`GroupCommit`: many callers' small writes, made as one statement per batch.

A caller queues its request and waits. Whoever finds no batch in flight leads: it lets the
tasks that are ready to run at that moment queue theirs too (one turn of the event loop: tasks
started together make one batch, not a batch of one and a batch of the rest), then takes the
queued requests (one per key: a second request for the same key waits for the next batch, so one
statement never touches a row twice) and runs them through `run_batch` in one go. When that
batch is done, the next queued request, if any, leads the next one. No background task: the
callers do the work, so nothing outlives them. Waiting and leading are shielded from
cancellation, because a request that is in a statement is made whether or not its caller is
still there to hear the answer (the lock service relies on hearing it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import anyio
import anyio.lowlevel

Request = TypeVar("Request")
Answer = TypeVar("Answer")

#: Most requests in one statement (SQLite allows 32,766 parameters; a lock row has nine).
MAX_BATCH = 256


@dataclass(slots=True, eq=False)
class _Pending(Generic[Request, Answer]):
    request: Request
    key: Hashable
    #: Set when its batch ran or it is to lead the next one; only a request that waits has one.
    woken: anyio.Event | None = None
    finished: bool = False
    answer: Answer | None = None
    error: BaseException | None = None


class GroupCommit(Generic[Request, Answer]):
    def __init__(
        self,
        run_batch: Callable[[list[Request]], Awaitable[Sequence[Answer]]],
        key: Callable[[Request], Hashable],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run_batch = run_batch
        self._key = key
        self._max = max_batch
        self._queue: deque[_Pending[Request, Answer]] = deque()
        self._busy = False
        #: Statements made and requests answered (for benchmarks).
        self.batches = 0
        self.requests = 0

    async def submit(self, request: Request) -> Answer:
        """Queue `request` and return its answer once its batch ran (or raise its error)."""
        item: _Pending[Request, Answer] = _Pending(request, self._key(request))
        self._queue.append(item)
        with anyio.CancelScope(shield=True):
            if self._busy:
                item.woken = anyio.Event()
                await item.woken.wait()
            else:
                self._busy = True
                # Let the tasks that are ready now queue their requests too: one batch.
                await anyio.lowlevel.checkpoint()
            if not item.finished:
                await self._lead()
        if item.error is not None:
            raise item.error
        return cast(Answer, item.answer)  # set when `finished` and no error

    async def _lead(self) -> None:
        batch = self._take()
        try:
            answers = await self._run_batch([p.request for p in batch])
            for pending, answer in zip(batch, answers, strict=True):
                pending.answer = answer
        except Exception as exc:
            for pending in batch:
                pending.error = exc
        finally:
            self.batches += 1
            self.requests += len(batch)
            # The next leader first: its batch is sent before this batch's callers run on.
            if self._queue:
                _wake(self._queue[0])  # it leads the next batch (it queued behind this one)
            else:
                self._busy = False
            for pending in batch:
                pending.finished = True
                _wake(pending)

    def _take(self) -> list[_Pending[Request, Answer]]:
        """The oldest queued requests, one per key, at most `max_batch`; the rest stay queued
        in their order."""
        batch: list[_Pending[Request, Answer]] = []
        keys: set[Hashable] = set()
        kept: deque[_Pending[Request, Answer]] = deque()
        while self._queue and len(batch) < self._max:
            pending = self._queue.popleft()
            if pending.key in keys:
                kept.append(pending)
            else:
                keys.add(pending.key)
                batch.append(pending)
        kept.extend(self._queue)
        self._queue = kept
        return batch


def _wake(pending: _Pending[Any, Any]) -> None:
    # A leader has no event: it never waits to be woken, and its batch ends before it returns.
    if pending.woken is not None:
        pending.woken.set()
