"""What a run holds: `plan:<name>` and `project:<project>` for its whole life (`run_claims`),
and `resource:<name>` around each subplan that declares `locks` (`SubplanLocks`).

A subplan's locks are owned by its execution (run id + path), not by the process, so two
subplans of one run that lock the same resource exclude each other too. A subplan that waits for
a lock holds nothing: no slot of its group and no other lock. Only when its resources look free
does it take a slot, and then its locks in one go (one statement each, no waiting); if one was
taken meanwhile it gives everything back and waits again. Nothing is ever held while waiting for
something else, so locks and slots cannot wait for each other in a circle (a nested group holds
a slot of its parent while its own subplans wait, which is why the other order would deadlock).
Within a run, waiting for a sibling is woken by the sibling's release and has no time limit;
waiting for another run's lock is polled with backoff for at most `--lock-wait` seconds. A
subplan whose ancestor holds a resource is covered by that lock and does not take it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import anyio

from engine.config import LockSettings
from engine.domain.lock import LockKind, Owner, Resource
from engine.domain.plan import Plan
from engine.errors import LockConflictError
from engine.locks.models import LockGuard
from engine.locks.service import LockService


def run_claims(plan: Plan, settings: LockSettings) -> list[tuple[Resource | str, float]]:
    """The locks a run of `plan` holds, with their TTLs."""
    claims: list[tuple[Resource | str, float]] = [
        (Resource(LockKind.PLAN, plan.name), settings.plan_ttl)
    ]
    if plan.project is not None:
        claims.append((Resource(LockKind.PROJECT, plan.project), settings.project_ttl))
    return claims


def declares_locks(plan: Plan) -> bool:
    return any(sub.locks for _, sub in plan.walk())


class SubplanLocks:
    """The `resource:` locks of one run's subplans, for the dispatcher."""

    def __init__(
        self, service: Callable[[], LockService], run_id: str, *, ttl: float, wait: float
    ) -> None:
        self._service = service
        self.run_id = run_id
        self.ttl = ttl
        #: How long to wait for another run's lock (`--lock-wait`); siblings wait for each other.
        self.wait = wait
        #: Path of a subplan holding its locks -> the names it holds; and all of those names.
        self._held: dict[str, frozenset[str]] = {}
        self._busy: set[str] = set()
        self._freed: anyio.Event | None = None

    def wanted(self, path: str, names: Sequence[str]) -> list[str]:
        """The names `path` must lock itself: those no ancestor holds, in lock order."""
        covered: set[str] = set()
        parent = path
        while "/" in parent:
            parent = parent.rpartition("/")[0]
            covered.update(self._held.get(parent, ()))
        return sorted(set(names) - covered)

    @asynccontextmanager
    async def hold(
        self,
        path: str,
        names: Sequence[str],
        take_slot: Callable[[], Awaitable[None]],
        give_slot: Callable[[], None],
    ) -> AsyncIterator[LockGuard]:
        """Wait (holding nothing) until `path`'s resources are free, then hold a slot (taken
        with `take_slot`; the body gives it back) and the locks until the block exits."""
        service = self._service()
        wanted = self.wanted(path, names)
        claims: list[tuple[Resource | str, float]] = [
            (Resource(LockKind.RESOURCE, name), self.ttl) for name in wanted
        ]
        owner = Owner.of_subplan(self.run_id, path)
        left = self.wait  # for other runs' locks; waiting for siblings does not count
        while True:
            while self._busy.intersection(wanted):
                await self._freed_event().wait()  # a sibling holds one: it will say when done
            await take_slot()
            if self._busy.intersection(wanted):
                give_slot()  # another sibling was quicker
                continue
            self._take(path, wanted)
            stack = AsyncExitStack()
            try:
                guard = await stack.enter_async_context(service.hold_all(claims, owner))
                break
            except LockConflictError as conflict:
                give_slot()
                self._give_back(path)
                if left <= 0:
                    if self.wait <= 0:
                        raise
                    raise LockConflictError(
                        conflict.resource, conflict.holder, conflict.expires_at, waited=self.wait
                    ) from None
                # Another run holds it: wait for that holding nothing, then try again.
                blocked = conflict.resource if conflict.resource is not None else claims[0][0]
                before = service.clock.monotonic()
                await service.wait_until_free(blocked, owner, wait=left)
                left -= service.clock.monotonic() - before
            except BaseException:
                give_slot()
                self._give_back(path)
                raise
        try:
            async with stack:
                yield guard
        finally:
            self._give_back(path)

    def _take(self, path: str, names: list[str]) -> None:
        self._held[path] = frozenset(names)
        self._busy.update(names)

    def _give_back(self, path: str) -> None:
        self._busy.difference_update(self._held.pop(path, ()))
        freed, self._freed = self._freed, None
        if freed is not None:
            freed.set()

    def _freed_event(self) -> anyio.Event:
        if self._freed is None:
            self._freed = anyio.Event()
        return self._freed
