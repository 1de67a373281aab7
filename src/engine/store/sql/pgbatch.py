"""PostgreSQL: a worker's hot writes, each as ONE statement of driver SQL.

On PostgreSQL every statement is a round trip, and so are `BEGIN` and `COMMIT`, each waiting
its turn on a busy event loop. Two writes a worker makes per batch of jobs are sent instead as
one statement of data-modifying CTEs, whose rows travel as one array per column (`unnest`):
one round trip, atomic on its own (autocommit).

- `PgStatements.batch`: a recorder batch that only inserts and releases (16 new runs with their
  subplans and events, and their locks): seven round trips before. Foreign keys are checked at
  the end of the statement, so subplans and events may name runs it inserts. The answer is one
  row per released lock that was held: its key, its owner and the depth left.
- `PgStatements.finish_and_claim`: job outcomes, fenced by worker and token as `_FINISH` in
  `engine.store.sql.jobs`, and the next claim: five round trips before. The answer is the
  claimed rows, each with the ids of the outcomes applied (one row of NULLs and those ids if
  nothing was claimed). Hand-backs are not written this way (they also notify).
- `PgStatements.acquire`: the lock upsert (`engine.store.sql.locks`) over
  one array per column: the same text for any number of locks (one prepared statement), and
  none of Core's compiling and per-row parameter processing on the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from engine.domain.job import JobOutcome
from engine.domain.lock import LockKind, LockRecord, Resource, RunLocking
from engine.domain.states import AsyncJobStatus
from engine.store.sql import mapping
from engine.store.sql.litebatch import LOCK_INSERT_COLUMNS, ON_CONFLICT
from engine.store.sql.tables import events, jobs, locks, runs, subplan_runs

Rows = Sequence[tuple[Any, ...]]

#: An outcome's columns, in `finish_and_claim`'s parameter order.
_OUTCOME_COLUMNS = (
    "id",
    "worker_id",
    "attempts",
    "status",
    "finished_at",
    "error_message",
    "result",
    "run_id",
)
_RUNNING, _QUEUED = AsyncJobStatus.RUNNING.value, AsyncJobStatus.QUEUED.value


class PgStatements:
    """The two statements, with each column's array type as the store's dialect names it."""

    def __init__(self, dialect: Dialect) -> None:
        def array_types(table: sa.Table, columns: Sequence[str]) -> list[str]:
            return [f"{table.c[name].type.compile(dialect=dialect)}[]" for name in columns]

        self._inserts = [
            (table.name, columns, array_types(table, columns))
            for table, columns in (
                (runs, mapping.RUN_COLUMNS),
                (subplan_runs, mapping.SUBPLAN_COLUMNS),
                (events, mapping.EVENT_COLUMNS),
            )
        ]
        self._key_types = array_types(locks, ("resource_type", "resource_id", "owner_id"))
        #: `batch` statements by shape (which tables get rows, whether locks are released), and
        #: `finish_and_claim` statements by whether they take locks.
        self._batches: dict[tuple[bool, ...], str] = {}
        self._claims: dict[bool, str] = {}
        self._outcome_types = array_types(jobs, _OUTCOME_COLUMNS)
        self._lock_types = [
            locks.c[name].type.compile(dialect=dialect) for name in ("host", "pid", "expires_at")
        ]
        inserted = [c for c in LOCK_INSERT_COLUMNS if c != "depth"]
        lock_marks = ", ".join(
            f"${n}::{t}" for n, t in enumerate(array_types(locks, inserted), start=1)
        )
        values = ", ".join("1" if c == "depth" else f"v.{c}" for c in LOCK_INSERT_COLUMNS)
        self._acquire = (
            f"INSERT INTO {locks.name} ({', '.join(LOCK_INSERT_COLUMNS)}) SELECT {values}"
            f" FROM unnest({lock_marks}) AS v({', '.join(inserted)}) {ON_CONFLICT}"
        )

    def acquire(self, claims: Sequence[LockRecord]) -> tuple[str, tuple[Any, ...]]:
        """The statement and its parameters of the acquire upsert for `claims` (one per key):
        one array per column, so the statement text is the same for any number of claims."""
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
        for c in claims:
            row = (
                c.resource.kind.value,
                c.resource.name,
                c.owner_id,
                c.acquired_at,
                c.expires_at,
                c.host,
                c.pid,
                c.run_id,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        return self._acquire, columns

    def batch(
        self, rows: tuple[Rows, Rows, Rows], releases: Sequence[tuple[Resource, str]]
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement and its parameters for new runs, subplans and events (tuples in
        mapping's column orders) and lock releases (resource, owner id)."""
        params: list[Any] = []
        for new in rows:
            if new:
                params.extend(list(column) for column in zip(*new, strict=True))
        if releases:
            params.append([r.kind.value for r, _ in releases])
            params.append([r.name for r, _ in releases])
            params.append([owner for _, owner in releases])
        shape = (*(bool(new) for new in rows), bool(releases))
        sql = self._batches.get(shape)
        if sql is None:  # one text per shape: asyncpg prepares it once
            sql = self._batches[shape] = self._batch_sql(shape)
        return sql, tuple(params)

    def _batch_sql(self, shape: tuple[bool, ...]) -> str:
        """`batch`'s statement for rows of the tables and releases `shape` says there are."""
        parts: list[str] = []
        count = 0

        def unnest(types: Sequence[str]) -> str:
            """`unnest($n::type[], ...)` of one array parameter per column."""
            nonlocal count
            marks = [f"${count + i}::{type_}" for i, type_ in enumerate(types, start=1)]
            count += len(types)
            return f"unnest({', '.join(marks)})"

        for n, ((table, names, types), present) in enumerate(
            zip(self._inserts, shape[:3], strict=True)
        ):
            if present:
                parts.append(
                    f"i{n} AS (INSERT INTO {table} ({', '.join(names)}) "
                    f"SELECT * FROM {unnest(types)})"
                )
        answer = "SELECT NULL::text, NULL::text, NULL::text, NULL::integer WHERE false"
        if shape[3]:
            mine = f"SELECT * FROM {unnest(self._key_types)} AS m(t, i, o)"
            match = "l.resource_type = m.t AND l.resource_id = m.i AND l.owner_id = m.o"
            parts.append(f"mine AS ({mine})")
            # Disjoint (depth 1 or more than 1): both see the rows as they were before.
            parts.append(
                f"gone AS (DELETE FROM {locks.name} AS l USING mine AS m WHERE {match} "
                "AND l.depth = 1 RETURNING l.resource_type, l.resource_id, l.owner_id, 0)"
            )
            parts.append(
                f"down AS (UPDATE {locks.name} AS l SET depth = l.depth - 1 FROM mine AS m "
                f"WHERE {match} AND l.depth > 1 "
                "RETURNING l.resource_type, l.resource_id, l.owner_id, l.depth)"
            )
            answer = "SELECT * FROM gone UNION ALL SELECT * FROM down"
        return f"WITH {', '.join(parts)} {answer}"

    def finish_and_claim(
        self,
        outcomes: Sequence[JobOutcome],
        worker_id: str,
        now: datetime,
        limit: int,
        locking: RunLocking | None = None,
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement and its parameters that apply `outcomes` (none of them a hand-back),
        then claim up to `limit` queued jobs for `worker_id` and, with `locking`, take the plan
        locks of their runs (the acquire upsert, oldest job first per plan). Each claimed row
        comes with `locked`: whether its run's lock was taken."""
        params: tuple[Any, ...] = (
            [o.job_id for o in outcomes],
            [o.worker_id for o in outcomes],
            [o.token for o in outcomes],
            [o.status.value for o in outcomes],
            [o.at for o in outcomes],
            [o.error_message for o in outcomes],
            [o.result for o in outcomes],
            [o.run_id for o in outcomes],
            limit,
            worker_id,
            now,
        )
        if locking is not None:
            params += (
                list(locking.run_ids),
                locking.owner_prefix,
                locking.host,
                locking.pid,
                now + timedelta(seconds=locking.ttl),  # every proposed lock's expiry
            )
        sql = self._claims.get(locking is not None)
        if sql is None:  # one text each, with or without locks: asyncpg prepares it once
            sql = self._claims[locking is not None] = self._claim_sql(locking is not None)
        return sql, params

    def _claim_sql(self, locking: bool) -> str:
        """`finish_and_claim`'s statement, with or without taking the runs' plan locks."""
        marks = ", ".join(f"${n}::{t}" for n, t in enumerate(self._outcome_types, start=1))
        n = len(self._outcome_types)
        table = jobs.name
        sql = (
            f"WITH v AS (SELECT * FROM unnest({marks}) "
            "AS v(id, worker, token, status, finished, error, result, run)), "
            f"done AS (UPDATE {table} AS j SET status = v.status, finished_at = v.finished, "
            "error_message = v.error, result = v.result, run_id = coalesce(v.run, j.run_id) "
            f"FROM v WHERE j.id = v.id AND j.status = '{_RUNNING}' AND j.worker_id = v.worker "
            "AND j.attempts = v.token RETURNING j.id), "
            f"picked AS MATERIALIZED (SELECT id FROM {table} WHERE status = '{_QUEUED}' "
            f"ORDER BY id LIMIT ${n + 1} FOR UPDATE SKIP LOCKED), "
            f"claimed AS (UPDATE {table} SET status = '{_RUNNING}', worker_id = ${n + 2}, "
            f"attempts = attempts + 1, started_at = ${n + 3}, last_heartbeat = ${n + 3}, "
            f"finished_at = NULL WHERE id IN (SELECT id FROM picked) AND status = '{_QUEUED}' "
            "RETURNING *)"
        )
        if not locking:
            return sql + (
                " SELECT d.applied, c.*, false AS locked FROM "
                "(SELECT array_agg(id) AS applied FROM done) AS d LEFT JOIN claimed AS c ON true"
            )
        # The i-th job claimed (oldest first) runs as run_ids[i]; the oldest of each plan
        # proposes its run's lock (one statement must not propose a key twice).
        runs, owner = f"${n + 4}::text[]", f"${n + 5}::text"
        host, pid, expires = (
            f"${n + i}::{t}" for i, t in zip((6, 7, 8), self._lock_types, strict=True)
        )
        values = {
            "resource_type": f"'{LockKind.PLAN.value}'",
            "resource_id": "f.plan_name",
            "owner_id": f"{owner} || ({runs})[f.n]",
            "acquired_at": f"${n + 3}",
            "expires_at": expires,
            "depth": "1",
            "host": host,
            "pid": pid,
            "run_id": f"({runs})[f.n]",
        }
        return sql + (
            ", numbered AS (SELECT id, plan_name, row_number() OVER (ORDER BY id) AS n "
            "FROM claimed), "
            "firsts AS (SELECT DISTINCT ON (plan_name) id, plan_name, n FROM numbered "
            "ORDER BY plan_name, n), "
            f"taken AS (INSERT INTO {locks.name} ({', '.join(LOCK_INSERT_COLUMNS)}) "
            f"SELECT {', '.join(values[c] for c in LOCK_INSERT_COLUMNS)} FROM firsts AS f "
            f"{ON_CONFLICT}) "
            "SELECT d.applied, c.*, t.owner_id IS NOT NULL AS locked FROM "
            "(SELECT array_agg(id) AS applied FROM done) AS d LEFT JOIN claimed AS c ON true "
            "LEFT JOIN firsts AS f ON f.id = c.id LEFT JOIN taken AS t "
            f"ON t.resource_id = f.plan_name AND t.owner_id = {owner} || ({runs})[f.n]"
        )
