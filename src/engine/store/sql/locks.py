"""`SqlLocks`: the lock part of the store port in SQL (a base of `SqlStore`).

Acquire is ONE statement on SQLite and PostgreSQL alike, with no check-then-insert race:

    INSERT INTO engine_locks (...) VALUES (...)
    ON CONFLICT (resource_type, resource_id) DO UPDATE SET <re-enter or take over>
    WHERE engine_locks.owner_id = excluded.owner_id
       OR engine_locks.expires_at <= excluded.acquired_at
    RETURNING ...

No row back means another owner holds the lock unexpired. On PostgreSQL under READ COMMITTED,
`ON CONFLICT DO UPDATE` locks the conflicting row and evaluates its WHERE against the latest
committed version of it (not the statement's snapshot), and a concurrent insert of the same key
makes the second statement wait and then take the conflict path: two acquirers can never both
win. Renew and release are single conditional UPDATE/DELETE statements, which PostgreSQL
re-checks the same way after waiting for a concurrent writer of the row. SQLite has one writer at
a time. Statements run in autocommit (one round trip each; PERFORMANCE.md), and on SQLite they
share the process's write lock with the recorder's batches.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import datetime
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.domain.lock import LockKind, LockRecord, Resource
from engine.store.sql.engine import autocommit
from engine.store.sql.errors import translated
from engine.store.sql.tables import locks

_KEY = (locks.c.resource_type, locks.c.resource_id)


def acquire_statement(dialect: str) -> sa.Insert:
    """The one-statement acquire in the dialect's upsert syntax."""
    insert = postgresql.insert(locks) if dialect == "postgresql" else sqlite.insert(locks)
    new = insert.excluded
    # The same owner holding it unexpired re-enters; anything else that matches WHERE (the same
    # owner's expired lock, another owner's expired lock) is a fresh take-over.
    mine = sa.and_(locks.c.owner_id == new.owner_id, locks.c.expires_at > new.acquired_at)
    later = sa.and_(mine, locks.c.expires_at > new.expires_at)
    return insert.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={
            "depth": sa.case((mine, locks.c.depth + 1), else_=1),
            "acquired_at": sa.case((mine, locks.c.acquired_at), else_=new.acquired_at),
            "expires_at": sa.case((later, locks.c.expires_at), else_=new.expires_at),
            "owner_id": new.owner_id,
            "host": new.host,
            "pid": new.pid,
            "run_id": new.run_id,
        },
        where=sa.or_(locks.c.owner_id == new.owner_id, locks.c.expires_at <= new.acquired_at),
    ).returning(*locks.c)


def _is(resource: Resource) -> sa.ColumnElement[bool]:
    return sa.and_(
        locks.c.resource_type == resource.kind.value, locks.c.resource_id == resource.name
    )


def _record(row: RowMapping) -> LockRecord:
    return LockRecord(
        resource=Resource(LockKind(row["resource_type"]), row["resource_id"]),
        owner_id=row["owner_id"],
        acquired_at=row["acquired_at"],
        expires_at=row["expires_at"],
        depth=row["depth"],
        host=row["host"],
        pid=row["pid"],
        run_id=row["run_id"],
    )


def _resources(rows: list[RowMapping]) -> list[Resource]:
    return sorted(Resource(LockKind(r["resource_type"]), r["resource_id"]) for r in rows)


class SqlLocks:
    """Needs `_write_lock` from the store it is a base of (SQLite's in-process writer lock)."""

    _write_lock: anyio.Lock

    def __init__(self, engine: AsyncEngine, location: str) -> None:
        self._engine = engine
        self._location = location
        sqlite_backend = engine.dialect.name == "sqlite"
        self._single = (
            autocommit(engine)
            if sqlite_backend
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._serialize_locks = sqlite_backend
        self._acquire = acquire_statement(engine.dialect.name)

    def _writing(self) -> AbstractAsyncContextManager[Any]:
        return self._write_lock if self._serialize_locks else nullcontext()

    async def _write(self, doing: str, statement: sa.Executable, params: Any = None) -> Any:
        """One statement in autocommit; its rows, fetched before the cursor closes."""
        async with self._writing():
            with translated(self._location, doing):
                async with self._single.begin() as conn:
                    result = await conn.execute(statement, params)
                    return result.mappings().all() if result.returns_rows else result.rowcount

    async def acquire_lock(self, claim: LockRecord) -> LockRecord | None:
        params = {
            "resource_type": claim.resource.kind.value,
            "resource_id": claim.resource.name,
            "owner_id": claim.owner_id,
            "acquired_at": claim.acquired_at,
            "expires_at": claim.expires_at,
            "depth": 1,
            "host": claim.host,
            "pid": claim.pid,
            "run_id": claim.run_id,
        }
        rows = await self._write(f"acquiring lock {claim.resource}", self._acquire, params)
        return _record(rows[0]) if rows else None

    async def renew_lock(
        self, resource: Resource, owner_id: str, now: datetime, expires_at: datetime
    ) -> LockRecord | None:
        statement = (
            sa.update(locks)
            .where(_is(resource), locks.c.owner_id == owner_id, locks.c.expires_at > now)
            .values(expires_at=expires_at)
            .returning(*locks.c)
        )
        rows = await self._write(f"renewing lock {resource}", statement)
        return _record(rows[0]) if rows else None

    async def release_lock(self, resource: Resource, owner_id: str) -> int | None:
        mine = sa.and_(_is(resource), locks.c.owner_id == owner_id)
        last = sa.delete(locks).where(mine, locks.c.depth == 1).returning(locks.c.depth)
        fewer = (
            sa.update(locks)
            .where(mine, locks.c.depth > 1)
            .values(depth=locks.c.depth - 1)
            .returning(locks.c.depth)
        )
        doing = f"releasing lock {resource}"
        # Two tries: the same owner may re-enter or release between the two statements.
        for _ in range(2):
            if await self._write(doing, last):
                return 0
            rows = await self._write(doing, fewer)
            if rows:
                depth: int = rows[0]["depth"]
                return depth
        return None

    async def release_locks_of(self, owner_id: str) -> list[Resource]:
        statement = sa.delete(locks).where(locks.c.owner_id == owner_id).returning(*_KEY)
        rows = await self._write("releasing an owner's locks", statement)
        return _resources(rows)

    async def delete_lock(self, resource: Resource) -> LockRecord | None:
        statement = sa.delete(locks).where(_is(resource)).returning(*locks.c)
        rows = await self._write(f"removing lock {resource}", statement)
        return _record(rows[0]) if rows else None

    async def delete_expired_locks(self, now: datetime) -> list[Resource]:
        statement = sa.delete(locks).where(locks.c.expires_at <= now).returning(*_KEY)
        rows = await self._write("purging expired locks", statement)
        return _resources(rows)

    async def count_expired_locks(self, now: datetime) -> int:
        query = sa.select(sa.func.count()).select_from(locks).where(locks.c.expires_at <= now)
        with translated(self._location, "counting expired locks"):
            async with self._engine.connect() as conn:
                count: int = (await conn.execute(query)).scalar_one()
        return count

    async def get_lock(self, resource: Resource) -> LockRecord | None:
        query = sa.select(locks).where(_is(resource))
        rows = await self._read(f"reading lock {resource}", query)
        return _record(rows[0]) if rows else None

    async def list_locks(self) -> list[LockRecord]:
        rows = await self._read("listing locks", sa.select(locks).order_by(*_KEY))
        return [_record(row) for row in rows]

    async def _read(self, doing: str, query: sa.Select[Any]) -> list[RowMapping]:
        with translated(self._location, doing):
            async with self._engine.connect() as conn:
                return list((await conn.execute(query)).mappings().all())
