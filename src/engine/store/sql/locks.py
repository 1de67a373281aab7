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
a time. Statements run in autocommit (one round trip each; PERFORMANCE.md) through the store's
`Transactions`, and on SQLite they share the process's write lock with the recorder's batches.
The acquire is written as driver SQL, in one place for both backends (`litebatch.ON_CONFLICT`;
PostgreSQL sends its rows as arrays, `pgbatch`), and so is SQLite's release: through Core each
statement was compiled and its parameters processed row by row, several times the cost.

Acquires and releases that arrive while another is in flight are made together (`GroupCommit`):
one multi-row upsert for the acquires, one DELETE and one UPDATE for the releases, each row
answered on its own. A batch never holds the same lock twice, so its rows cannot interfere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.domain.lock import LockKind, LockRecord, Resource
from engine.store.sql import litebatch
from engine.store.sql.batch import GroupCommit
from engine.store.sql.errors import translated
from engine.store.sql.pgbatch import PgStatements
from engine.store.sql.tables import locks
from engine.store.sql.transact import DriverSql, Transactions

_KEY = (locks.c.resource_type, locks.c.resource_id)

Key = tuple[str, str]
#: A lock to release: its key and the owner releasing it.
Mine = tuple[str, str, str]

#: The locks a release statement is about: several as a list `mine` of `Mine` tuples, or one
#: as plain parameters `type`, `id`, `owner`. An expanding IN is rendered again at every
#: execution: measured on SQLite, a single release took about twice the CPU that way.
_MANY = sa.tuple_(locks.c.resource_type, locks.c.resource_id, locks.c.owner_id).in_(
    sa.bindparam("mine", expanding=True)
)
_ONE = sa.and_(
    locks.c.resource_type == sa.bindparam("type"),
    locks.c.resource_id == sa.bindparam("id"),
    locks.c.owner_id == sa.bindparam("owner"),
)


def _release_last(mine: sa.ColumnElement[bool]) -> sa.Executable:
    """Delete the locks held once."""
    return sa.delete(locks).where(mine, locks.c.depth == 1).returning(*_KEY, locks.c.owner_id)


def _release_one_level(mine: sa.ColumnElement[bool]) -> sa.Executable:
    """Count down the re-entered locks."""
    return (
        sa.update(locks)
        .where(mine, locks.c.depth > 1)
        .values(depth=locks.c.depth - 1)
        .returning(*_KEY, locks.c.owner_id, locks.c.depth)
    )


#: Each release step for (several locks, one lock).
_RELEASE_LAST = (_release_last(_MANY), _release_last(_ONE))
_RELEASE_ONE_LEVEL = (_release_one_level(_MANY), _release_one_level(_ONE))


def release_locks(conn: Connection, requests: Sequence[tuple[Resource, str]]) -> list[int | None]:
    """Undo one acquire of each (resource, owner id): delete the locks held once, count down
    the re-entered ones. The depth left of each (0: released), None for a lock the owner does
    not hold. Run on its own (each statement commits) or inside a larger transaction (the
    recorder's: a run's locks go with the write of its end). Core statements (PostgreSQL);
    SQLite's own SQL is `release_locks_lite`."""
    return _release(lambda last, todo: _core_step(conn, last, todo), requests)


def release_locks_lite(
    sql: DriverSql, requests: Sequence[tuple[Resource, str]]
) -> list[int | None]:
    """`release_locks` in SQLite's own SQL (`litebatch`)."""
    return _release(lambda last, todo: litebatch.release_step(sql, last, sorted(todo)), requests)


def _release(
    step: Callable[[bool, set[Mine]], Iterable[Sequence[Any]]],
    requests: Sequence[tuple[Resource, str]],
) -> list[int | None]:
    """`release_locks` with `step(last, todo)`: one release step's rows (type, id, owner,
    depth left) over the locks `todo` (`last`: delete those held once; else count down)."""
    wanted = {(*_key(resource), owner) for resource, owner in requests}
    left: dict[Mine, int] = {}
    todo = wanted
    # Two tries: in autocommit, another process of the same owner may re-enter or release
    # between the two statements (each commits on its own).
    for _ in range(2):
        for last in (True, False):
            for type_, id_, owner, depth in step(last, todo):
                left[(type_, id_, owner)] = depth
            todo = {t for t in todo if t not in left}
            if not todo:
                break
        if not todo:
            break
    return [left.get((*_key(resource), owner)) for resource, owner in requests]


def _core_step(conn: Connection, last: bool, todo: set[Mine]) -> Iterable[Sequence[Any]]:
    """The rows of one release step over the locks `todo`: type, id, owner, depth left."""
    many, one = _RELEASE_LAST if last else _RELEASE_ONE_LEVEL
    if len(todo) == 1:
        ((type_, id_, owner),) = todo
        rows = conn.execute(one, {"type": type_, "id": id_, "owner": owner}).mappings()
    else:
        rows = conn.execute(many, {"mine": list(todo)}).mappings()
    return [
        (r["resource_type"], r["resource_id"], r["owner_id"], r["depth"] if not last else 0)
        for r in rows
    ]


def _key(resource: Resource) -> Key:
    return (resource.kind.value, resource.name)


def _key_of_claim(claim: LockRecord) -> Key:
    return _key(claim.resource)


def _is(resource: Resource) -> sa.ColumnElement[bool]:
    return sa.and_(
        locks.c.resource_type == resource.kind.value, locks.c.resource_id == resource.name
    )


def _record(row: Mapping[Any, Any], resource: Resource | None = None) -> LockRecord:
    """The lock in `row`. Pass `resource` when it is known to be the row's (the one the statement
    asked for): it is used as it is, not parsed and validated again."""
    if resource is None:
        resource = Resource(LockKind(row["resource_type"]), row["resource_id"])
    return LockRecord(
        resource=resource,
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
    """Needs `_tx` (its write path) and `_pg` (driver SQL, PostgreSQL only) from the store it
    is a base of."""

    _tx: Transactions
    _pg: PgStatements | None

    def __init__(self, engine: AsyncEngine, location: str) -> None:
        self._engine = engine
        self._location = location
        self._acquires: GroupCommit[LockRecord, LockRecord | None] = GroupCommit(
            self._acquire_batch, _key_of_claim
        )
        self._releases: GroupCommit[tuple[Resource, str], int | None] = GroupCommit(
            self._release_batch, lambda request: _key(request[0])
        )

    async def acquire_lock(self, claim: LockRecord) -> LockRecord | None:
        return await self._acquires.submit(claim)

    async def _acquire_batch(self, claims: list[LockRecord]) -> list[LockRecord | None]:
        doing = f"acquiring lock {claims[0].resource}" if len(claims) == 1 else "acquiring locks"
        returned: Sequence[Mapping[Any, Any]]
        if self._engine.dialect.name == "sqlite":
            returned = await self._tx.run_sqlite(
                doing, lambda sql: litebatch.acquire(sql, claims), transaction=False
            )
        else:
            assert self._pg is not None  # PostgreSQL
            sql, params = self._pg.acquire(claims)
            returned = await self._tx.fetch(doing, sql, params)
        taken = {(row["resource_type"], row["resource_id"]): row for row in returned}
        answers: list[LockRecord | None] = []
        for claim in claims:
            row = taken.get(_key(claim.resource))
            if row is not None and row["owner_id"] == claim.owner_id:
                answers.append(_record(row, claim.resource))  # its row: one per key per batch
            else:
                answers.append(None)
        return answers

    async def renew_lock(
        self, resource: Resource, owner_id: str, now: datetime, expires_at: datetime
    ) -> LockRecord | None:
        statement = (
            sa.update(locks)
            .where(_is(resource), locks.c.owner_id == owner_id, locks.c.expires_at > now)
            .values(expires_at=expires_at)
            .returning(*locks.c)
        )
        rows = await self._tx.one(f"renewing lock {resource}", statement)
        return _record(rows[0], resource) if rows else None

    async def release_lock(self, resource: Resource, owner_id: str) -> int | None:
        return await self._releases.submit((resource, owner_id))

    async def _release_batch(self, requests: list[tuple[Resource, str]]) -> list[int | None]:
        doing = "releasing locks" if len(requests) > 1 else f"releasing lock {requests[0][0]}"
        if self._engine.dialect.name == "sqlite":
            return await self._tx.run_sqlite(
                doing, lambda sql: release_locks_lite(sql, requests), transaction=False
            )
        return await self._tx.run(
            doing, lambda conn: release_locks(conn, requests), transaction=False
        )

    async def release_locks_of(self, owner_id: str) -> list[Resource]:
        statement = sa.delete(locks).where(locks.c.owner_id == owner_id).returning(*_KEY)
        rows = await self._tx.one("releasing an owner's locks", statement)
        return _resources(rows)

    async def delete_lock(self, resource: Resource) -> LockRecord | None:
        statement = sa.delete(locks).where(_is(resource)).returning(*locks.c)
        rows = await self._tx.one(f"removing lock {resource}", statement)
        return _record(rows[0], resource) if rows else None

    async def delete_expired_locks(self, now: datetime) -> list[Resource]:
        statement = sa.delete(locks).where(locks.c.expires_at <= now).returning(*_KEY)
        rows = await self._tx.one("purging expired locks", statement)
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
        return _record(rows[0], resource) if rows else None

    async def list_locks(self) -> list[LockRecord]:
        rows = await self._read("listing locks", sa.select(locks).order_by(*_KEY))
        return [_record(row) for row in rows]

    async def _read(self, doing: str, query: sa.Select[Any]) -> list[RowMapping]:
        with translated(self._location, doing):
            async with self._engine.connect() as conn:
                return list((await conn.execute(query)).mappings().all())
