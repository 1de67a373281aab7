"""`LockService`: TTL locks on plans, projects and resources, over the store's `LockStore` port.

This module owns the rules: re-entrancy, waiting (jittered exponential backoff, woken early when
this service releases the resource), renewal in the background every ttl/3, and release on every
exit path of `hold`. Renewal is done by the service's `renewer` task while somebody runs it (the
engine does, in its task group); without it each hold renews its lock in a task of its own.
Atomicity is the store's (one statement per step); this module never talks to a database
directly and reads time only from the injected `Clock`. Each change of hands is a `LockEvent` on
the engine's bus (built only while somebody wants it; re-entries are not events).
"""

from __future__ import annotations

import builtins
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import fields
from datetime import datetime, timedelta
from typing import TypeVar

import anyio

from engine.domain.events import LockEvent, LockEventType
from engine.domain.lock import LockRecord, Owner, Resource
from engine.errors import LockConflictError, LockExpiredError, LockNotFoundError, StoreError
from engine.events import EventBus
from engine.locks.models import Backoff, HeldLock, LockGuard, LockStatistics
from engine.locks.renewer import Renewal, Renewer
from engine.ports.clock import Clock
from engine.ports.store import LockRelease, LockStore

logger = logging.getLogger(__name__)

#: How long a `hold` may take to release its lock on the way out (shielded from cancellation).
RELEASE_TIMEOUT = 10.0

T = TypeVar("T")


class LockService:
    def __init__(
        self,
        store: LockStore,
        clock: Clock,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._bus = bus
        self._seq = 0
        #: Called once per acquire that has to wait, with the conflict it waits out (the CLI
        #: prints "waiting for ..."). Must not block.
        self.on_wait: Callable[[LockConflictError], None] | None = None
        #: Set (and replaced) whenever this service frees a resource: wakes its waiters.
        self._released_event: anyio.Event | None = None
        self._releases = 0
        self._stats = {f.name: 0 for f in fields(LockStatistics)}
        #: Renews the locks of every `hold` while it runs: `await task_group.start(
        #: locks.renewer.run)`, `locks.renewer.stop()`.
        self.renewer = Renewer(clock, self._renew_held, self._abandon)

    # -- one step each -------------------------------------------------------------------------

    async def acquire(
        self, resource: Resource | str, owner: Owner | str, ttl: float, *, wait: float = 0.0
    ) -> LockRecord:
        """Take `resource` for `owner` for `ttl` seconds (re-entrant for the same owner).

        Another owner's unexpired lock raises `LockConflictError` naming it; with `wait` > 0
        the attempt is repeated with backoff until the lock frees or expires, or `wait`
        seconds have passed.
        """
        res, who = Resource.of(resource), _owner(owner)
        _check_ttl(ttl)
        _check_wait(wait)
        # Most locks are free: one attempt, and the waiting machinery only after a conflict.
        started, releases = self.clock.monotonic(), self._releases
        record, holder = await self._attempt(res, who, ttl)
        if record is None:
            taken: list[LockRecord] = []

            async def take() -> LockRecord | None:
                got, other = await self._attempt(res, who, ttl)
                if got is not None:
                    taken.append(got)
                return other

            await self._retry(res, wait, take, lambda: bool(taken), started, releases, holder)
            record = taken[0]
        self._count("acquired")
        if record.depth > 1:
            self._count("reentered")
        else:
            self._emit("lock.acquired", res, who.id, record.run_id, record.expires_at)
        return record

    async def wait_until_free(
        self, resource: Resource | str, owner: Owner | str, *, wait: float
    ) -> None:
        """Return once no other owner holds `resource` unexpired (without taking it), within
        `wait` seconds; else `LockConflictError`. For callers that must not hold anything
        while they wait (the dispatcher holds no slot)."""
        res, who = Resource.of(resource), _owner(owner)
        _check_wait(wait)

        free: list[bool] = []

        async def look() -> LockRecord | None:
            held = await self.store.get_lock(res)
            if held is None or held.owner_id == who.id or held.expired(self.clock.now()):
                free.append(True)
                return None
            return held

        started, releases = self.clock.monotonic(), self._releases
        holder = await look()
        if not free:
            await self._retry(res, wait, look, lambda: bool(free), started, releases, holder)

    async def _retry(
        self,
        res: Resource,
        wait: float,
        attempt: Callable[[], Awaitable[LockRecord | None]],
        done: Callable[[], bool],
        started: float,
        releases: int,
        holder: LockRecord | None,
    ) -> None:
        """After a first `attempt` that did not succeed (made at monotonic time `started`, when
        this service's release count was `releases`; it saw `holder`), repeat it until
        `done()`, with jittered backoff, woken early by this service's releases and never
        sleeping past the holder's expiry; `LockConflictError` after `wait` seconds.

        `attempt` returns the other holder's lock, if it saw one. The callers make the first
        attempt themselves so that the common case (it succeeds) costs nothing more.
        """
        tries = 0
        while True:
            waited = self.clock.monotonic() - started
            if waited >= wait:
                self._count("conflicts")
                raise LockConflictError(
                    str(res),
                    holder.owner_id if holder else None,
                    holder.expires_at if holder else None,
                    waited=waited if wait > 0 else 0.0,
                )
            if tries == 0:
                self._count("waited")
                if self.on_wait is not None:
                    holder_id = holder.owner_id if holder else None
                    expires = holder.expires_at if holder else None
                    self.on_wait(LockConflictError(str(res), holder_id, expires, waited=wait))
            delay = min(self.backoff.delay(tries, self._rng), wait - waited)
            if holder is not None:
                until_expiry = (holder.expires_at - self.clock.now()).total_seconds()
                delay = min(delay, max(until_expiry, 0.0))
            if self._releases == releases:  # else something was freed meanwhile: retry now
                await self._pause(delay, self._released())
            tries += 1
            releases = self._releases
            holder = await attempt()
            if done():
                return

    async def release(self, resource: Resource | str, owner: Owner | str) -> bool:
        """Undo one acquire; False if `owner` does not hold the lock (any more)."""
        res, who = Resource.of(resource), _owner(owner)
        left = await self.store.release_lock(res, who.id)
        if left is None:
            return False
        self._count("released")
        if left == 0:
            self._notify_released()
            self._emit("lock.released", res, who.id, who.run_id)
        return True

    async def renew(self, resource: Resource | str, owner: Owner | str, ttl: float) -> LockRecord:
        """Extend a held lock to `ttl` seconds from now; `LockExpiredError` if it expired or
        another owner took it over meanwhile."""
        res, who = Resource.of(resource), _owner(owner)
        _check_ttl(ttl)
        now = self.clock.now()
        record = await self.store.renew_lock(res, who.id, now, now + timedelta(seconds=ttl))
        if record is not None:
            self._count("renewed")
            self._emit("lock.renewed", res, who.id, record.run_id, record.expires_at)
            return record
        current = await self.store.get_lock(res)
        if current is None:
            lost = LockExpiredError(str(res), who.id, reason="it is no longer held")
        elif current.owner_id != who.id:
            lost = LockExpiredError(str(res), who.id, taken_by=current.owner_id)
        else:
            lost = LockExpiredError(str(res), who.id, current.expires_at)
            self._emit("lock.expired", res, who.id, who.run_id, current.expires_at, str(lost))
            raise lost
        self._emit("lock.lost", res, who.id, who.run_id, error=str(lost))
        raise lost

    async def release_all_for_owner(self, owner: Owner | str) -> builtins.list[Resource]:
        who = _owner(owner)
        released = await self.store.release_locks_of(who.id)
        if released:
            self._notify_released()
        for res in released:
            self._emit("lock.released", res, who.id, who.run_id)
        return released

    async def force_release(self, resource: Resource | str) -> LockRecord:
        """Remove a lock whoever holds it (`locks release --force`)."""
        res = Resource.of(resource)
        removed = await self.store.delete_lock(res)
        if removed is None:
            raise LockNotFoundError(str(res), getattr(self.store, "location", None))
        self._notify_released()
        self._emit("lock.force_released", res, removed.owner_id, removed.run_id, removed.expires_at)
        return removed

    async def cleanup_expired(self) -> int:
        """Purge expired locks (the engine does it when it opens); how many were purged."""
        purged = await self.store.delete_expired_locks(self.clock.now())
        if purged:
            self._notify_released()
        return len(purged)

    async def count_stale(self) -> int:
        """Expired locks still in the store (what `diagnostics` reports; changes nothing)."""
        return await self.store.count_expired_locks(self.clock.now())

    async def is_locked(self, resource: Resource | str) -> bool:
        held = await self.store.get_lock(Resource.of(resource))
        return held is not None and not held.expired(self.clock.now())

    async def get(self, resource: Resource | str) -> LockRecord | None:
        """The stored lock of a resource, expired or not."""
        return await self.store.get_lock(Resource.of(resource))

    async def list(self) -> builtins.list[LockRecord]:
        """Every stored lock, expired ones included (see `LockRecord.expired`)."""
        return await self.store.list_locks()

    def statistics(self) -> LockStatistics:
        return LockStatistics(**self._stats)

    # -- held for a block ----------------------------------------------------------------------

    def hold(
        self, resource: Resource | str, owner: Owner | str, ttl: float, *, wait: float = 0.0
    ) -> AbstractAsyncContextManager[HeldLock]:
        """`async with locks.hold(...)`: acquire, renew every ttl/3 while the block runs, and
        release on every way out (shielded from cancellation).

        If renewal finds the lock expired or taken over, the block is cancelled and
        `LockExpiredError` is raised: the work stops instead of going on unprotected.
        """
        return self._hold(resource, owner, ttl, wait, _itself)

    def hold_all(
        self,
        claims: Sequence[tuple[Resource | str, float]],
        owner: Owner | str,
        *,
        wait: float = 0.0,
        taken: Sequence[LockRecord] = (),
    ) -> AbstractAsyncContextManager[LockGuard]:
        """`hold` several resources, taken in resource order (so that two holders of the same
        set never deadlock) within one `wait` budget; released in reverse order. `taken`: locks
        of `owner` acquired already (by a job's claim, `RunLocking`), held from here on
        without being acquired again: renewed and released like the others."""
        adopted = {record.resource: record for record in taken}
        if len(claims) == 1:  # a run's plan lock: one `hold` that shows a guard, no exit stack
            resource, ttl = claims[0]
            res = Resource.of(resource)
            return self._hold(res, owner, ttl, wait, _guard_of, adopted.get(res))
        return self._hold_in_order(claims, owner, wait, adopted)

    @asynccontextmanager
    async def _hold(
        self,
        resource: Resource | str,
        owner: Owner | str,
        ttl: float,
        wait: float,
        shown: Callable[[HeldLock], T],
        taken: LockRecord | None = None,
    ) -> AsyncIterator[T]:
        """`hold`, whose block gets `shown(held)`: the held lock, or a guard of it alone (one
        generator either way: a `hold_all` that wrapped `hold` would pay for two). `taken`:
        the lock, acquired already for `owner` (adopted, not acquired again)."""
        res, who = Resource.of(resource), _owner(owner)
        if taken is None:
            record = await self.acquire(res, who, ttl, wait=wait)
        else:
            record = self._adopt(taken, res, who)
        held = HeldLock(res, who, ttl, record)
        self._stats["held"] += 1
        failure: Exception | None = None
        renewal: Renewal | None = None
        try:
            if self.renewer.running:
                with anyio.CancelScope() as scope:
                    renewal = self.renewer.add(held, scope)
                    yield shown(held)
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_alive, held, tg.cancel_scope)
                    try:
                        yield shown(held)
                    except Exception as exc:
                        # Re-raised below, outside the task group (which would wrap it in a group).
                        failure = exc
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            self._stats["held"] -= 1
            if renewal is not None:
                await self.renewer.remove(renewal)  # after its renewal in flight, if any
            if not held.released:  # else a write released it with other changes
                with anyio.move_on_after(RELEASE_TIMEOUT, shield=True):
                    await self._release_quietly(held)
        if failure is not None:
            raise failure
        if held.lost is not None:
            raise held.lost

    @asynccontextmanager
    async def _hold_in_order(
        self,
        claims: Sequence[tuple[Resource | str, float]],
        owner: Owner | str,
        wait: float,
        taken: dict[Resource, LockRecord],
    ) -> AsyncIterator[LockGuard]:
        """`hold_all` of any number of claims but one."""
        ordered = sorted((Resource.of(r), ttl) for r, ttl in claims)
        guard = LockGuard()
        started = self.clock.monotonic()
        async with AsyncExitStack() as stack:
            for resource, ttl in ordered:
                left = max(0.0, wait - (self.clock.monotonic() - started))
                held = await stack.enter_async_context(
                    self._hold(resource, owner, ttl, left, _itself, taken.pop(resource, None))
                )
                guard.locks.append(held)
            yield guard

    # -- released by another write -------------------------------------------------------------

    def releases(self, guard: LockGuard) -> builtins.list[LockRelease]:
        """The releases of a `hold_all` block's locks, for a store write that makes them with
        other changes (`RunStore.write`: the recorder writes a run's locks with its end).
        Until `released_with` they are not renewed (the write may be deleting them). Call
        `released_with` after the write, whether it succeeded or not."""
        for held in guard.locks:
            held.handing_over = True
        return [LockRelease(held.resource, held.owner.id) for held in guard.locks]

    def released_with(self, guard: LockGuard, releases: Sequence[LockRelease]) -> None:
        """After the write of `releases`: those written count as released, and their block
        will not release them again; the others are released by their block as usual."""
        for held, release in zip(guard.locks, releases, strict=True):
            held.handing_over = False
            if not release.written:
                continue
            held.released = True
            if release.left is None:  # not ours any more: nothing was released
                continue
            self._count("released")
            if release.left == 0:
                self._notify_released()
                self._emit("lock.released", held.resource, held.owner.id, held.owner.run_id)

    # -- internals -----------------------------------------------------------------------------

    def _adopt(self, record: LockRecord, resource: Resource, owner: Owner) -> LockRecord:
        """A lock acquired for `owner` by another write (a job's claim): counted and announced
        as this service's own acquire."""
        if record.resource != resource or record.owner_id != owner.id:
            raise ValueError(f"lock {record.resource} of {record.owner_id} is not {owner}'s")
        self._count("acquired")
        self._emit("lock.acquired", resource, owner.id, record.run_id, record.expires_at)
        return record

    async def _attempt(
        self, resource: Resource, owner: Owner, ttl: float
    ) -> tuple[LockRecord | None, LockRecord | None]:
        """(the lock, None) if taken; (None, the holder's lock) if another owner has it."""
        holder: LockRecord | None = None
        for _ in range(3):
            self._count("attempts")
            claim = LockRecord.claim(resource, owner, self.clock.now(), ttl)
            # Not shielded here: the store answers a call that may have taken the lock even
            # when its caller is cancelled meanwhile (the `LockStore.acquire_lock` contract).
            record = await self.store.acquire_lock(claim)
            if record is not None:
                return record, None
            holder = await self.store.get_lock(resource)
            if holder is not None and not holder.expired(self.clock.now()):
                return None, holder
            # Released or expired between the two statements: try again at once.
        return None, holder

    async def _keep_alive(self, held: HeldLock, scope: anyio.CancelScope) -> None:
        """A hold's own renewal task, when no `renewer` runs."""
        interval: float | None = held.ttl / 3
        while interval is not None:
            await self.clock.sleep(interval)
            interval = await self._renew_held(held, scope)

    async def _renew_held(self, held: HeldLock, scope: anyio.CancelScope) -> float | None:
        """Renew a held lock once: seconds until the next renewal, or None if the lock is lost
        (then `scope`, its block's, is cancelled) or released by a write of its own."""
        if held.released:
            return None
        if held.handing_over:
            # A write may be deleting it right now (a renewal would find it gone and call it
            # lost): look again soon. The block is over by then; only a write slower than the
            # rest of the TTL lets the lock expire before it.
            return max(held.ttl / 10, 0.01)
        try:
            # Shielded: a statement cancelled in flight makes SQLAlchemy close its aiosqlite
            # connection in a task that may never finish, hanging the process at exit.
            with anyio.CancelScope(shield=True):
                held.record = await self.renew(held.resource, held.owner, held.ttl)
        except LockExpiredError as exc:
            self._lose(held, exc, scope)
            return None
        except StoreError as exc:
            # Still ours until it expires: try again sooner, and give up only then.
            left = (held.record.expires_at - self.clock.now()).total_seconds()
            if left <= 0:
                reason = f"it could not be renewed before it expired ({exc})"
                lost = LockExpiredError(
                    str(held.resource), held.owner.id, held.record.expires_at, reason=reason
                )
                self._emit(
                    "lock.expired",
                    held.resource,
                    held.owner.id,
                    held.owner.run_id,
                    held.record.expires_at,
                    str(lost),
                )
                self._lose(held, lost, scope)
                return None
            return max(min(held.ttl / 10, left / 2), 0.01)
        return held.ttl / 3

    def _abandon(self, held: HeldLock, scope: anyio.CancelScope, reason: str) -> None:
        """The renewer can no longer renew `held` (`reason`) while its block runs: stop the
        block, which would go on unprotected."""
        self._lose(held, LockExpiredError(str(held.resource), held.owner.id, reason=reason), scope)

    def _lose(self, held: HeldLock, exc: LockExpiredError, scope: anyio.CancelScope) -> None:
        held.lost = exc
        self._count("lost")
        logger.warning("%s", exc)
        scope.cancel()

    async def _release_quietly(self, held: HeldLock) -> None:
        try:
            await self.release(held.resource, held.owner)
        except StoreError as exc:
            logger.warning(
                "could not release lock %s (%s); it expires at %s UTC",
                held.resource,
                exc,
                held.record.expires_at,
            )

    async def _pause(self, seconds: float, released: anyio.Event) -> None:
        """Sleep on the clock for `seconds`, or less if this service releases a lock."""
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._wake_after, seconds, scope)
                await released.wait()
                scope.cancel()

    async def _wake_after(self, seconds: float, scope: anyio.CancelScope) -> None:
        await self.clock.sleep(seconds)
        scope.cancel()

    def _released(self) -> anyio.Event:
        if self._released_event is None:
            self._released_event = anyio.Event()
        return self._released_event

    def _notify_released(self) -> None:
        self._releases += 1
        event, self._released_event = self._released_event, None
        if event is not None:
            event.set()

    def _count(self, name: str) -> None:
        self._stats[name] += 1

    def _emit(
        self,
        type_: LockEventType,
        resource: Resource,
        owner_id: str,
        run_id: str | None,
        expires_at: datetime | None = None,
        error: str | None = None,
    ) -> None:
        """Publish a `LockEvent` if anybody wants it. A failing subscriber is logged: it must
        not leave a lock taken or freed without its holder knowing."""
        bus = self._bus
        if bus is None or not bus.wants(LockEvent):
            return
        self._seq += 1
        event = LockEvent(
            type=type_,
            at=self.clock.now(),
            seq=self._seq,
            run_id=run_id,
            resource=str(resource),
            owner=owner_id,
            expires_at=expires_at,
            error=error,
        )
        try:
            bus.publish(event)
        except Exception:
            logger.exception("an event bus subscriber failed on %s", event.type)


def _itself(held: HeldLock) -> HeldLock:
    return held


def _guard_of(held: HeldLock) -> LockGuard:
    return LockGuard([held])


def _owner(owner: Owner | str) -> Owner:
    return owner if isinstance(owner, Owner) else Owner.named(owner)


def _check_wait(wait: float) -> None:
    if not wait >= 0:
        raise ValueError(f"wait must be 0 or more seconds, got {wait}")


def _check_ttl(ttl: float) -> None:
    # The store keeps microseconds: a lock must outlive its own acquisition by at least that.
    if not (ttl >= 0.001 and math.isfinite(ttl)):
        raise ValueError(f"a lock's ttl must be a finite number of seconds >= 0.001, got {ttl}")
