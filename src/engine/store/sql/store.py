"""`SqlStore`: the store port on SQLAlchemy 2.x async Core (SQLite and PostgreSQL).

One writer path per process: batches are written one at a time (an `anyio.Lock`), each in one
short transaction (`BEGIN IMMEDIATE` on SQLite) made by ONE call of a plain function of a
connection (`Transactions`: on an SQLite file, one thread hop per transaction). Reads are Core
selects on the async pool and never take the write lock. The per-subplan and per-event writes
(thousands per run) are driver-level executemany with tuples converted here: SQLAlchemy's
per-row parameter processing would cost more than the database itself
(benchmarks/store_overhead.py). Every driver error is translated
into a `StoreError` here; nothing above this module imports SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.domain.events import Event
from engine.domain.lock import LockKind, Resource
from engine.domain.states import (
    TERMINAL_RUN_STATES,
    TERMINAL_SUBPLAN_STATES,
    RunState,
    SubplanState,
)
from engine.errors import StoreError
from engine.ports.store import LOST_RUN_ERROR, Changes, RunRecord, SubplanRecord
from engine.store.sql import mapping
from engine.store.sql.errors import translated
from engine.store.sql.jobs import SqlJobs
from engine.store.sql.locks import SqlLocks, release_locks, release_locks_lite
from engine.store.sql.pgbatch import PgStatements
from engine.store.sql.tables import events, locks, runs, subplan_runs
from engine.store.sql.transact import AlchemySql, DriverSql, Transactions

#: One row for a driver-level executemany (engine.store.sql.mapping).
Row = tuple[Any, ...]

_RUN_COLUMNS = [c for c in runs.c if c.name != "plan"]


class _HotStatements:
    """The per-run, per-subplan and per-event statements as driver SQL in the dialect's
    paramstyle."""

    def __init__(self, dialect: Dialect) -> None:
        self.time: mapping.TimeParam = (
            mapping.sqlite_time if dialect.name == "sqlite" else mapping.aware_time
        )
        marks = _placeholders(dialect.paramstyle)
        run_cols = ", ".join(mapping.RUN_COLUMNS)
        self.insert_runs = (
            f"INSERT INTO {runs.name} ({run_cols}) "
            f"VALUES ({', '.join(marks(len(mapping.RUN_COLUMNS)))})"
        )
        sub_cols = ", ".join(mapping.SUBPLAN_COLUMNS)
        self.insert_subplans = (
            f"INSERT INTO {subplan_runs.name} ({sub_cols}) "
            f"VALUES ({', '.join(marks(len(mapping.SUBPLAN_COLUMNS)))})"
        )
        update_marks = marks(len(mapping.SUBPLAN_UPDATE_COLUMNS) + 2)
        sets = ", ".join(
            f"{c} = {m}" for c, m in zip(mapping.SUBPLAN_UPDATE_COLUMNS, update_marks, strict=False)
        )
        self.update_subplans = (
            f"UPDATE {subplan_runs.name} SET {sets} "
            f"WHERE run_id = {update_marks[-2]} AND path = {update_marks[-1]}"
        )
        update_marks = marks(len(mapping.RUN_UPDATE_COLUMNS) + 1)
        sets = ", ".join(
            f"{c} = {m}" for c, m in zip(mapping.RUN_UPDATE_COLUMNS, update_marks, strict=False)
        )
        self.update_runs = f"UPDATE {runs.name} SET {sets} WHERE id = {update_marks[-1]}"
        event_cols = ", ".join(mapping.EVENT_COLUMNS)
        self.insert_events = (
            f"INSERT INTO {events.name} ({event_cols}) "
            f"VALUES ({', '.join(marks(len(mapping.EVENT_COLUMNS)))})"
        )
        self._marks = marks
        #: Whether an executemany's row count is the rows it changed (asyncpg's is not).
        self.counts_rows = dialect.supports_sane_multi_rowcount

    def count_runs(self, count: int) -> str:
        """How many of `count` run ids name a run."""
        return f"SELECT count(*) FROM {runs.name} WHERE id IN ({', '.join(self._marks(count))})"


def _placeholders(paramstyle: str) -> Callable[[int], list[str]]:
    if paramstyle == "qmark":
        return lambda n: ["?"] * n
    if paramstyle == "numeric_dollar":
        return lambda n: [f"${i}" for i in range(1, n + 1)]
    raise StoreError(f"unsupported driver paramstyle {paramstyle!r}")  # pragma: no cover


class SqlStore(SqlLocks, SqlJobs):
    def __init__(self, engine: AsyncEngine, location: str) -> None:
        self._tx = Transactions(engine, location)
        #: One-statement writes (PostgreSQL only): the recorder's batches and the jobs'.
        self._pg = PgStatements(engine.dialect) if engine.dialect.name == "postgresql" else None
        super().__init__(engine, location)
        SqlJobs.__init__(self, engine)
        self._engine = engine
        self._location = location
        self._hot = _HotStatements(engine.dialect)

    @property
    def location(self) -> str:
        return self._location

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def write(self, changes: Changes) -> None:
        if not changes:
            return
        # The rows are built here, on the event loop's thread; the transaction's thread only
        # sends them. Python run there holds the GIL against the event loop (a 10,000-step
        # run's flush would stall its dispatcher).
        if self._pg is not None and not (changes.runs or changes.subplans):
            # Inserts and releases only: one statement, one round trip.
            left = await self._one_statement(self._pg, changes)
        elif self._pg is None:  # SQLite
            apply = self._statements(changes)
            left = await self._tx.run_sqlite(
                "recording", lambda sql: apply(sql, lambda gone: release_locks_lite(sql, gone))
            )
        else:
            apply = self._statements(changes)
            left = await self._tx.run(
                "recording",
                lambda conn: apply(AlchemySql(conn), lambda gone: release_locks(conn, gone)),
                serialize=True,
            )
        for release, depth in zip(changes.releases, left, strict=True):
            release.left, release.written = depth, True

    def _new_rows(
        self, changes: Changes
    ) -> tuple[list[Row], list[Row], list[Row], list[tuple[Resource, str]]]:
        """The rows `changes` inserts (runs, subplans, events) and the locks it releases."""
        time = self._hot.time
        if time is mapping.sqlite_time:  # text to make: once per datetime object
            time = mapping.remembered(time)
        new_runs = [mapping.run_row(n.run, n.plan_json, time) for n in changes.created]
        added = [mapping.subplan_row(s, time) for n in changes.created for s in n.subplans]
        added.extend(mapping.subplan_row(s, time) for s in changes.added)
        events = mapping.event_rows(changes.events, time) if changes.events else []
        return new_runs, added, events, [(r.resource, r.owner_id) for r in changes.releases]

    async def _one_statement(self, pg: PgStatements, changes: Changes) -> list[int | None]:
        """`_statements` for a batch without updates, as one PostgreSQL statement: the depth
        left of each release."""
        new_runs, added, events, releases = self._new_rows(changes)
        sql, params = pg.batch((new_runs, added, events), releases)
        rows = await self._tx.fetch("recording", sql, params, serialize=True)
        left = {(t, i, o): depth for t, i, o, depth in rows}
        return [left.get((r.kind.value, r.name, owner)) for r, owner in releases]

    def _statements(
        self, changes: Changes
    ) -> Callable[
        [DriverSql, Callable[[list[tuple[Resource, str]]], list[int | None]]], list[int | None]
    ]:
        """The writes of `changes`, as the work of one transaction: `apply(sql, release)`
        sends them as driver SQL (`release` releases the locks the batch frees)."""
        hot, time = self._hot, self._hot.time
        new_runs, added, events, releases = self._new_rows(changes)
        run_updates = [mapping.run_update(run, time) for run in changes.runs]
        sub_updates = [mapping.subplan_update(s, time) for s in changes.subplans]
        location = self._location

        def apply(
            sql: DriverSql, release: Callable[[list[tuple[Resource, str]]], list[int | None]]
        ) -> list[int | None]:
            if new_runs:
                sql.executemany(hot.insert_runs, new_runs)
            if added:
                sql.executemany(hot.insert_subplans, added)
            if run_updates:
                updated = sql.executemany(hot.update_runs, run_updates).rowcount
                if not hot.counts_rows:  # count the runs instead
                    ids = [row[-1] for row in run_updates]
                    updated = sql.execute(hot.count_runs(len(ids)), ids).fetchall()[0][0]
                if updated != len(run_updates):
                    raise StoreError(f"{location}: an update names an unknown run")
            if sub_updates:
                result = sql.executemany(hot.update_subplans, sub_updates)
                if hot.counts_rows and result.rowcount != len(sub_updates):
                    raise StoreError(f"{location}: an update names an unknown subplan")
            if events:
                sql.executemany(hot.insert_events, events)
            return release(releases) if releases else []

        return apply

    async def abandon_lost_runs(self, now: datetime, created_before: datetime) -> list[str]:
        finished = [state.value for state in TERMINAL_RUN_STATES]
        alive = sa.exists().where(
            locks.c.run_id == runs.c.id,
            locks.c.resource_type == LockKind.PLAN.value,
            locks.c.expires_at > now,
        )
        fail = (
            sa.update(runs)
            .where(runs.c.state.not_in(finished), runs.c.created_at < created_before, ~alive)
            .values(
                state=RunState.FAILED.value, finished_at=now, duration=None, error=LOST_RUN_ERROR
            )
            .returning(runs.c.id)
        )

        def abandon(conn: Connection) -> list[str]:
            lost = list(conn.execute(fail).scalars().all())
            if lost:
                conn.execute(
                    sa.update(subplan_runs)
                    .where(
                        subplan_runs.c.run_id.in_(lost),
                        subplan_runs.c.state.not_in(
                            [state.value for state in TERMINAL_SUBPLAN_STATES]
                        ),
                    )
                    .values(
                        state=SubplanState.CANCELLED.value, finished_at=now, error=LOST_RUN_ERROR
                    )
                )
            return lost

        return sorted(await self._tx.run("failing lost runs", abandon, serialize=True))

    async def get_run(self, run_id: str) -> RunRecord | None:
        query = sa.select(*_RUN_COLUMNS).where(runs.c.id == run_id)
        with translated(self._location, "reading a run"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).mappings().first()
        return mapping.run_record(row) if row is not None else None

    async def get_plan(self, run_id: str) -> str | None:
        query = sa.select(runs.c.plan).where(runs.c.id == run_id)
        with translated(self._location, "reading a run's plan"):
            async with self._engine.connect() as conn:
                plan: str | None = (await conn.execute(query)).scalar()
        return plan

    async def list_runs(self, *, limit: int | None = None) -> list[RunRecord]:
        query = sa.select(*_RUN_COLUMNS).order_by(runs.c.created_at.desc(), runs.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with translated(self._location, "listing runs"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        return [mapping.run_record(row) for row in rows]

    async def list_subplans(self, run_id: str) -> list[SubplanRecord]:
        query = (
            sa.select(subplan_runs)
            .where(subplan_runs.c.run_id == run_id)
            .order_by(subplan_runs.c.position)
        )
        with translated(self._location, "reading subplans"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        return [mapping.subplan_record(row) for row in rows]

    async def list_events(self, run_id: str) -> list[Event]:
        query = (
            sa.select(events.c.type, events.c.payload)
            .where(events.c.run_id == run_id)
            .order_by(events.c.seq)
        )
        with translated(self._location, "reading events"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [mapping.event_from(type_, payload) for type_, payload in rows]

    async def close(self) -> None:
        with anyio.CancelScope(shield=True), translated(self._location, "closing"):
            await self._tx.close()
            await self._engine.dispose()
