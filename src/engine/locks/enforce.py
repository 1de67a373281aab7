"""What a run holds: `plan:<name>` and `project:<project>` for its whole life (`run_claims`),
and `resource:<name>` around each subplan that declares `locks` (`SubplanLocks`).

A subplan's locks are owned by its execution (run id + path), not by the process, so two
subplans of one run that lock the same resource exclude each other too. Within a run they queue
in this process on a FIFO gate per resource (no polling, handed over the moment the holder is
done); only then do they go to the store, where another run's lock is waited for up to
`--lock-wait`. A subplan whose ancestor holds a resource is covered by that lock and does not
take it again (it would wait for its own ancestor forever).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import anyio

from engine.config import LockSettings
from engine.domain.lock import LockKind, Owner, Resource
from engine.domain.plan import Plan
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
        self._gates: dict[str, anyio.Lock] = {}
        #: Path of a subplan holding its locks -> the names it holds.
        self._held: dict[str, frozenset[str]] = {}

    def wanted(self, path: str, names: Sequence[str]) -> list[str]:
        """The names `path` must lock itself: those no ancestor holds, in lock order."""
        covered: set[str] = set()
        parent = path
        while "/" in parent:
            parent = parent.rpartition("/")[0]
            covered.update(self._held.get(parent, ()))
        return sorted(set(names) - covered)

    @asynccontextmanager
    async def hold(self, path: str, names: Sequence[str]) -> AsyncIterator[LockGuard]:
        """Hold the resources `path` declares (waiting for them, holding nothing else)."""
        wanted = self.wanted(path, names)
        claims: list[tuple[Resource | str, float]] = [
            (Resource(LockKind.RESOURCE, name), self.ttl) for name in wanted
        ]
        async with AsyncExitStack() as stack:
            for name in wanted:
                await stack.enter_async_context(self._gate(name))
            owner = Owner.of_subplan(self.run_id, path)
            guard = await stack.enter_async_context(
                self._service().hold_all(claims, owner, wait=self.wait)
            )
            self._held[path] = frozenset(wanted)
            stack.callback(self._held.pop, path, None)
            yield guard

    def _gate(self, name: str) -> anyio.Lock:
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = anyio.Lock()
        return gate
