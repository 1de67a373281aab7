"""`MemoryLocks`: the lock part of the store port in one dictionary (a base of `MemoryStore`).

Each method runs without an await point, so it is as atomic here as one statement is in SQL,
and a cancellation can never come between a lock taken and its caller hearing of it (which the
port asks of `acquire_lock`).
Same contract as `engine.store.sql.locks` (tests/test_lock_store_contract.py).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from engine.domain.lock import LockRecord, Resource


class MemoryLocks:
    def __init__(self) -> None:
        self._locks: dict[Resource, LockRecord] = {}

    async def acquire_lock(self, claim: LockRecord) -> LockRecord | None:
        return self._acquire(claim)

    def _acquire(self, claim: LockRecord) -> LockRecord | None:
        claim = _in_utc(claim)
        held = self._locks.get(claim.resource)
        if held is None or held.expired(claim.acquired_at):
            self._locks[claim.resource] = claim
            return claim
        if held.owner_id != claim.owner_id:
            return None
        record = replace(
            held,
            depth=held.depth + 1,
            expires_at=max(held.expires_at, claim.expires_at),
            host=claim.host,
            pid=claim.pid,
            run_id=claim.run_id,
        )
        self._locks[claim.resource] = record
        return record

    async def renew_lock(
        self, resource: Resource, owner_id: str, now: datetime, expires_at: datetime
    ) -> LockRecord | None:
        held = self._locks.get(resource)
        if held is None or held.owner_id != owner_id or held.expired(_utc(now)):
            return None
        record = replace(held, expires_at=_utc(expires_at))
        self._locks[resource] = record
        return record

    async def release_lock(self, resource: Resource, owner_id: str) -> int | None:
        return self._release(resource, owner_id)

    def _release(self, resource: Resource, owner_id: str) -> int | None:
        held = self._locks.get(resource)
        if held is None or held.owner_id != owner_id:
            return None
        if held.depth <= 1:
            del self._locks[resource]
            return 0
        self._locks[resource] = replace(held, depth=held.depth - 1)
        return held.depth - 1

    async def release_locks_of(self, owner_id: str) -> list[Resource]:
        mine = sorted(r for r, held in self._locks.items() if held.owner_id == owner_id)
        for resource in mine:
            del self._locks[resource]
        return mine

    async def delete_lock(self, resource: Resource) -> LockRecord | None:
        return self._locks.pop(resource, None)

    async def delete_expired_locks(self, now: datetime) -> list[Resource]:
        now = _utc(now)
        expired = sorted(r for r, held in self._locks.items() if held.expired(now))
        for resource in expired:
            del self._locks[resource]
        return expired

    async def count_expired_locks(self, now: datetime) -> int:
        now = _utc(now)
        return sum(1 for held in self._locks.values() if held.expired(now))

    async def get_lock(self, resource: Resource) -> LockRecord | None:
        return self._locks.get(resource)

    async def list_locks(self) -> list[LockRecord]:
        return [self._locks[r] for r in sorted(self._locks)]


def _in_utc(claim: LockRecord) -> LockRecord:
    """`claim` with UTC times: itself if they are already (the clock's are; records are
    immutable, so the store may keep the caller's)."""
    if claim.acquired_at.tzinfo is UTC and claim.expires_at.tzinfo is UTC:
        return claim
    return replace(claim, acquired_at=_utc(claim.acquired_at), expires_at=_utc(claim.expires_at))


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps UTC times only")
    return value if value.tzinfo is UTC else value.astimezone(UTC)
