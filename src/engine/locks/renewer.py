"""`Renewer`: one task that renews every lock a `LockService` holds, instead of one task per hold.

A hold registers its lock and its block's cancel scope; the renewer keeps them in a heap by due
time, sleeps on the clock until the earliest is due (woken early when a hold registers an earlier
one, or any one while it has none), and renews each due lock in a task of its own, so a slow
store delays no other lock. What a renewal does (and when a lost lock cancels its block) is the
service's; this module only keeps the schedule. A hold leaving waits for its lock's renewal in
flight, so the lock is released after it, never renewed after its release. When the renewer
stops, the blocks it still renews are cancelled as having lost their locks: they would go on
unprotected otherwise. So is a block whose renewal raised something unexpected (a bug must not
stop the other locks' renewals).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from engine.locks.models import HeldLock
from engine.ports.clock import Clock

#: One renewal of a held lock: seconds until the next one, or None if the lock was lost (its
#: block's scope is cancelled then).
RenewOnce = Callable[[HeldLock, anyio.CancelScope], Awaitable[float | None]]
#: What the renewer does with a block whose lock it can no longer renew (it stopped, or the
#: renewal raised something unexpected): `reason` says which.
Abandon = Callable[[HeldLock, anyio.CancelScope, str], None]


@dataclass(eq=False, slots=True)
class Renewal:
    """One registered hold: its lock, its block's scope, and whether a renewal is in flight."""

    held: HeldLock
    scope: anyio.CancelScope
    active: bool = True
    #: Set when the renewal in flight ends (None: none is).
    renewing: anyio.Event | None = None


class Renewer:
    def __init__(self, clock: Clock, renew: RenewOnce, abandon: Abandon) -> None:
        self._clock = clock
        self._renew = renew
        self._abandon = abandon
        self._heap: list[tuple[float, int, Renewal]] = []
        self._order = itertools.count()
        self._active: dict[Renewal, None] = {}
        #: What the loop waits for now: the due time it sleeps until, and the scope that wakes it.
        self._waiting_until = math.inf
        self._waiting: anyio.CancelScope | None = None
        #: Set by the next `add` while the loop has nothing to renew (None: it has something).
        self._added: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def add(self, held: HeldLock, scope: anyio.CancelScope) -> Renewal:
        """Renew `held` every ttl/3 from now until `remove`; a loss cancels `scope`."""
        renewal = Renewal(held, scope)
        self._active[renewal] = None
        self._schedule(renewal, held.ttl / 3)
        return renewal

    async def remove(self, renewal: Renewal) -> None:
        """Stop renewing; returns once a renewal in flight has ended, cancelled or not (the lock
        is released after it, never renewed after its release)."""
        renewal.active = False
        self._active.pop(renewal, None)
        if renewal.renewing is not None:
            with anyio.CancelScope(shield=True):
                await renewal.renewing.wait()
        if len(self._heap) > 2 * len(self._active) + 64:
            # Removed holds leave their entries behind; drop them now and then.
            self._heap = [entry for entry in self._heap if entry[2].active]
            heapq.heapify(self._heap)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew until `stop()`. Start it with `await task_group.start(renewer.run)`."""
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as tg:
                    self._running = True
                    task_status.started()
                    await self._loop(tg)
        finally:
            self._running = False
            self._scope = None
            left, self._active = list(self._active), {}
            for renewal in left:
                renewal.active = False
                self._abandon(renewal.held, renewal.scope, "its renewer stopped")

    async def _loop(self, tg: TaskGroup) -> None:
        while True:
            heap = self._heap  # replaced when removed entries are dropped
            while heap and not heap[0][2].active:
                heapq.heappop(heap)
            if not heap:
                await self._wait_for_add()
                continue
            due = heap[0][0]
            delay = due - self._clock.monotonic()
            if delay > 0:
                with anyio.CancelScope() as self._waiting:
                    self._waiting_until = due
                    await self._clock.sleep(delay)
                self._waiting, self._waiting_until = None, math.inf
                continue  # woken early by an earlier due time, or due now: look again
            renewal = heapq.heappop(heap)[2]
            renewal.renewing = anyio.Event()
            tg.start_soon(self._renew_one, renewal)

    async def _wait_for_add(self) -> None:
        # An event, not a cancel scope like a timed wait: cancelling a scope costs several
        # times more (anyio formats the task's repr), and holds that come one at a time find
        # the loop idle each time.
        self._added = anyio.Event()
        try:
            await self._added.wait()
        finally:
            self._added = None

    async def _renew_one(self, renewal: Renewal) -> None:
        interval: float | None = None
        try:
            interval = await self._renew(renewal.held, renewal.scope)
        except Exception as exc:
            reason = f"its renewal failed ({type(exc).__name__}: {exc})"
            self._abandon(renewal.held, renewal.scope, reason)
        finally:
            renewing, renewal.renewing = renewal.renewing, None
            if renewing is not None:
                renewing.set()
        if interval is not None and renewal.active:
            self._schedule(renewal, interval)

    def _schedule(self, renewal: Renewal, interval: float) -> None:
        due = self._clock.monotonic() + interval
        heapq.heappush(self._heap, (due, next(self._order), renewal))
        if self._added is not None:
            self._added.set()
        elif due < self._waiting_until and self._waiting is not None:
            self._waiting.cancel()
