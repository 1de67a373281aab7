"""SQLite: the worker's hot writes (claim, outcomes, lock acquires and releases) as driver SQL.

A worker's batch of jobs makes these writes over and over, each in the writer thread
(`Transactions`), which the event loop waits for. Through SQLAlchemy Core each statement was
compiled from its cache key, its parameters processed one by one (UTC datetimes into text) and
its rows through result processors: measured on outcomes plus a claim of 16 jobs, 2.4 ms per
transaction, against 0.5 ms for the same statements as driver SQL with rows as tuples. So here
the statements are written once as text in SQLite's syntax, with the conditions and fencing of
the Core statements in `engine.store.sql.jobs` (`_FINISH`, `_claim`: PostgreSQL's
transactional path) and `engine.store.sql.locks` (the release steps); the acquire's conflict
clause (`ON_CONFLICT`) is PostgreSQL's too (`pgbatch`). The store contract tests run both.

Times are the text SQLAlchemy's SQLite DATETIME reads and writes (`mapping.sqlite_time`), so
rows written here and there compare and read back alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import chain
from typing import Any

from engine.domain.job import JobOutcome
from engine.domain.lock import LockRecord
from engine.domain.states import AsyncJobStatus
from engine.store.sql.mapping import sqlite_time
from engine.store.sql.tables import jobs, locks
from engine.store.sql.transact import DriverSql

_RUNNING, _QUEUED = AsyncJobStatus.RUNNING.value, AsyncJobStatus.QUEUED.value
_JOB_COLUMNS = tuple(c.name for c in jobs.c)
_JOB_TIMES = frozenset(
    c.name for c in jobs.c if c.name.endswith("_at") or c.name == "last_heartbeat"
)
LOCK_COLUMNS = tuple(c.name for c in locks.c)
_LOCK_TIMES = frozenset({"acquired_at", "expires_at"})
#: Most ids in one `IN (...)` (SQLite allows 32,766 parameters).
_CHUNK = 500

CLAIM = (
    f"UPDATE {jobs.name} SET status = '{_RUNNING}', worker_id = ?, attempts = attempts + 1,"
    " started_at = ?, last_heartbeat = ?, finished_at = NULL"
    f" WHERE id IN (SELECT id FROM {jobs.name} WHERE status = '{_QUEUED}' ORDER BY id LIMIT ?)"
    f" AND status = '{_QUEUED}' RETURNING {', '.join(_JOB_COLUMNS)}"
)

#: `_FINISH` of engine.store.sql.jobs: fenced by status, worker and token; a hand-back (the
#: 3rd and 4th parameters) clears the worker and heartbeat.
FINISH = (
    f"UPDATE {jobs.name} SET status = ?, finished_at = ?,"
    " worker_id = CASE WHEN ? THEN NULL ELSE worker_id END,"
    " last_heartbeat = CASE WHEN ? THEN NULL ELSE last_heartbeat END,"
    " error_message = ?, result = ?, run_id = coalesce(?, run_id)"
    f" WHERE id = ? AND status = '{_RUNNING}' AND worker_id = ? AND attempts = ?"
)


#: The columns an acquire inserts, in its parameters' order (`depth` is 1).
LOCK_INSERT_COLUMNS = (
    "resource_type",
    "resource_id",
    "owner_id",
    "acquired_at",
    "expires_at",
    "depth",
    "host",
    "pid",
    "run_id",
)


def _on_conflict() -> str:
    """The conflict clause of an acquire (`engine.store.sql.locks`): the same owner
    holding it unexpired re-enters; another owner's expired lock is taken over."""
    table = locks.name
    mine = f"{table}.owner_id = excluded.owner_id AND {table}.expires_at > excluded.acquired_at"
    return (
        "ON CONFLICT (resource_type, resource_id) DO UPDATE SET"
        f" depth = CASE WHEN {mine} THEN {table}.depth + 1 ELSE 1 END,"
        f" acquired_at = CASE WHEN {mine} THEN {table}.acquired_at ELSE excluded.acquired_at END,"
        f" expires_at = CASE WHEN {mine} AND {table}.expires_at > excluded.expires_at"
        f" THEN {table}.expires_at ELSE excluded.expires_at END,"
        " owner_id = excluded.owner_id, host = excluded.host, pid = excluded.pid,"
        " run_id = excluded.run_id"
        f" WHERE {table}.owner_id = excluded.owner_id"
        f" OR {table}.expires_at <= excluded.acquired_at"
        f" RETURNING {', '.join(LOCK_COLUMNS)}"
    )


#: Shared with PostgreSQL's acquire (`engine.store.sql.pgbatch`).
ON_CONFLICT = _on_conflict()


def claim(sql: DriverSql, worker_id: str, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Claim the oldest queued jobs (at most `limit`): their rows, as the columns of `jobs`."""
    at = sqlite_time(now)
    rows = sql.execute(CLAIM, (worker_id, at, at, limit)).fetchall()
    return [_row(_JOB_COLUMNS, _JOB_TIMES, row) for row in rows]


def finish(sql: DriverSql, outcomes: Sequence[JobOutcome]) -> list[str]:
    """Write the outcomes whose claim still holds (same worker, same token): their job ids."""
    applied: list[str] = []
    for start in range(0, len(outcomes), _CHUNK):
        chunk = outcomes[start : start + _CHUNK]
        held_sql = (
            f"SELECT id, worker_id, attempts FROM {jobs.name}"
            f" WHERE status = '{_RUNNING}' AND id IN ({', '.join('?' * len(chunk))})"
        )
        held = {
            i: (w, a)
            for i, w, a in sql.execute(held_sql, tuple(o.job_id for o in chunk)).fetchall()
        }
        mine = [o for o in chunk if held.get(o.job_id) == (o.worker_id, o.token)]
        if mine:
            sql.executemany(FINISH, [_finish_row(o) for o in mine])
        applied.extend(o.job_id for o in mine)
    return applied


def _finish_row(out: JobOutcome) -> tuple[Any, ...]:
    back = out.status is AsyncJobStatus.QUEUED
    return (
        out.status.value,
        None if back else sqlite_time(out.at),
        back,
        back,
        out.error_message,
        out.result,
        out.run_id,
        out.job_id,
        out.worker_id,
        out.token,
    )


def acquire(sql: DriverSql, claims: Sequence[LockRecord]) -> list[dict[str, Any]]:
    """The acquire upsert (`engine.store.sql.locks`) for these claims (one per key):
    the rows of the locks taken or re-entered."""
    params: list[Any] = []
    for c in claims:
        params += (
            c.resource.kind.value,
            c.resource.name,
            c.owner_id,
            sqlite_time(c.acquired_at),
            sqlite_time(c.expires_at),
            c.host,
            c.pid,
            c.run_id,
        )
    rows = sql.execute(_acquire_sql(len(claims)), params).fetchall()
    return [_row(LOCK_COLUMNS, _LOCK_TIMES, row) for row in rows]


@cache
def _acquire_sql(count: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, 1, ?, ?, ?)"] * count)
    return (
        f"INSERT INTO {locks.name} ({', '.join(LOCK_INSERT_COLUMNS)}) VALUES {values} {ON_CONFLICT}"
    )


def release_step(
    sql: DriverSql, last: bool, todo: Sequence[tuple[str, str, str]]
) -> Sequence[Sequence[Any]]:
    """One step of `engine.store.sql.locks.release_locks` over the locks `todo` (type, id,
    owner): delete those held once (`last`), or count down the re-entered ones. The rows of
    the locks it changed: type, id, owner and the depth left."""
    return sql.execute(_release_sql(last, len(todo)), tuple(chain(*todo))).fetchall()


@cache
def _release_sql(last: bool, count: int) -> str:
    mine = f"(resource_type, resource_id, owner_id) IN (VALUES {', '.join(['(?, ?, ?)'] * count)})"
    if last:
        return (
            f"DELETE FROM {locks.name} WHERE {mine} AND depth = 1"
            " RETURNING resource_type, resource_id, owner_id, 0"
        )
    return (
        f"UPDATE {locks.name} SET depth = depth - 1 WHERE {mine} AND depth > 1"
        " RETURNING resource_type, resource_id, owner_id, depth"
    )


def _row(columns: Sequence[str], times: frozenset[str], row: Sequence[Any]) -> dict[str, Any]:
    return {
        name: _aware(value) if name in times and value is not None else value
        for name, value in zip(columns, row, strict=True)
    }


def _aware(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
