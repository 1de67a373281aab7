"""`SqlJobs`: the job part of the store port in SQL (a base of `SqlStore`).

The claim is ONE statement on SQLite and PostgreSQL alike:

    [WITH picked AS MATERIALIZED (                    -- PostgreSQL
        SELECT id FROM engine_jobs WHERE status = 'queued' ORDER BY id LIMIT :n
        FOR UPDATE SKIP LOCKED)]
    UPDATE engine_jobs SET status = 'running', worker_id = :w, attempts = attempts + 1, ...
    WHERE id IN (SELECT id FROM picked)               -- SQLite: the subselect itself
      AND status = 'queued'
    RETURNING *

SQLite has one writer at a time, so the subselect and the update see the same rows. On
PostgreSQL the CTE is materialized (evaluated once; inlined, the planner may re-run it per row
and claim more than `:n` jobs), SKIP LOCKED lets concurrent claimers take different rows
instead of queueing behind each other, and the outer `status = 'queued'` is re-checked against
the latest row version (READ COMMITTED re-evaluates the WHERE of an UPDATE after waiting for a
concurrent writer), so a job can never be claimed twice. `attempts + 1` is the claim's fencing
token: every later write of the worker is
`... WHERE id = :id AND status = 'running' AND worker_id = :w AND attempts = :t`.

On PostgreSQL every statement that queues jobs (enqueue, a hand-back, a rescue) also sends
`NOTIFY engine_jobs` in its transaction, and idle workers LISTEN on that channel through a
connection of their own (`job_notifications`): they wake as the transaction commits instead of
at their next poll. Polling stays as the fallback (a lost listener connection, SQLite).

Single statements run in autocommit; batches (completions, heartbeat + worker row, rescues) in
one short transaction (each one call of `Transactions.run`); completions are one executemany
per batch. On SQLite every write takes
the process's write lock, shared with the recorder and the locks. Driver errors become
`StoreError`s here (`translated`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.domain.job import (
    AsyncJob,
    Claimed,
    JobBeat,
    JobOutcome,
    WorkerRecord,
    lost_worker_message,
)
from engine.domain.lock import LockRecord, RunLocking
from engine.domain.states import TERMINAL_JOB_STATUSES, AsyncJobStatus
from engine.store.sql import litebatch
from engine.store.sql.errors import translated
from engine.store.sql.pgbatch import PgStatements
from engine.store.sql.tables import jobs, workers
from engine.store.sql.transact import DriverSql, Transactions

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as LiteInsert

logger = logging.getLogger("engine.worker")

#: The PostgreSQL channel of "jobs were queued" notifications.
CHANNEL = "engine_jobs"
_NOTIFY = sa.select(sa.func.pg_notify(CHANNEL, ""))
#: How long closing the listener connection may take.
_UNLISTEN_TIMEOUT = 5.0

_QUEUED, _RUNNING = AsyncJobStatus.QUEUED.value, AsyncJobStatus.RUNNING.value
_TERMINAL = [s.value for s in TERMINAL_JOB_STATUSES]
_B = sa.bindparam

#: A worker's write for a job it claimed, fenced by its token (see the module docstring).
_FINISH = (
    sa.update(jobs)
    .where(
        jobs.c.id == _B("b_id"),
        jobs.c.status == _RUNNING,
        jobs.c.worker_id == _B("b_worker"),
        jobs.c.attempts == _B("b_token"),
    )
    .values(
        status=_B("b_status"),
        finished_at=_B("b_finished", type_=jobs.c.finished_at.type),
        worker_id=sa.case((_B("b_back", type_=sa.Boolean()), None), else_=jobs.c.worker_id),
        last_heartbeat=sa.case(
            (_B("b_back", type_=sa.Boolean()), None), else_=jobs.c.last_heartbeat
        ),
        error_message=_B("b_error"),
        result=_B("b_result"),
        run_id=sa.func.coalesce(_B("b_run", type_=jobs.c.run_id.type), jobs.c.run_id),
    )
)
#: Outcomes written per executemany.
_CHUNK = 500


def _finish_params(out: JobOutcome) -> dict[str, Any]:
    back = out.status is AsyncJobStatus.QUEUED
    return {
        "b_id": out.job_id,
        "b_worker": out.worker_id,
        "b_token": out.token,
        "b_status": out.status.value,
        "b_finished": None if back else out.at,
        "b_back": back,
        "b_error": out.error_message,
        "b_result": out.result,
        "b_run": out.run_id,
    }


def _job(row: Mapping[Any, Any]) -> AsyncJob:
    return AsyncJob.model_validate(dict(row))


def _claimed(rows: Sequence[Mapping[Any, Any]]) -> list[AsyncJob]:
    """Claimed rows as jobs, oldest first."""
    return [_job(r) for r in sorted(rows, key=_by_id)]


def _by_id(row: Mapping[Any, Any]) -> str:
    id_: str = row["id"]
    return id_


def _take_run_locks(
    rows: Sequence[Mapping[Any, Any]],
    locking: RunLocking | None,
    now: datetime,
    acquire: Callable[[list[LockRecord]], Sequence[Mapping[Any, Any]]],
) -> frozenset[str]:
    """Take the plan locks of a claim's runs (`rows`: the claimed jobs, oldest first) with
    `acquire` (the acquire upsert in the claim's transaction: the rows of the locks taken);
    the ids of the jobs whose lock was taken. Each plan's lock is proposed by its oldest job."""
    if locking is None:
        return frozenset()
    firsts: dict[str, tuple[str, LockRecord]] = {}
    for i, row in enumerate(rows):
        if row["plan_name"] not in firsts:
            firsts[row["plan_name"]] = (row["id"], locking.claim(i, row["plan_name"], now))
    if not firsts:
        return frozenset()
    taken = acquire([claim for _, claim in firsts.values()])
    owners = {(row["resource_id"], row["owner_id"]) for row in taken}
    return frozenset(
        job_id
        for job_id, claim in firsts.values()
        if (claim.resource.name, claim.owner_id) in owners
    )


def _worker(row: RowMapping) -> WorkerRecord:
    return WorkerRecord(**dict(row))


class SqlJobs:
    """Needs `_tx` (its write path), `_pg` (one-statement writes, PostgreSQL only) and
    `_location` from the store it is a base of."""

    _location: str
    _tx: Transactions
    _pg: PgStatements | None

    def __init__(self, engine: AsyncEngine) -> None:
        self._jobs_engine = engine
        self._jobs_sqlite = engine.dialect.name == "sqlite"
        # The dialect's own INSERT (for ON CONFLICT), imported for the backend in use only:
        # importing PostgreSQL's dialect costs an SQLite process ~20 ms of start-up.
        if self._jobs_sqlite:
            from sqlalchemy.dialects.sqlite import insert as lite_insert

            new: LiteInsert | PgInsert = lite_insert(workers)
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            new = pg_insert(workers)
        self._upsert_worker: sa.Executable = new.on_conflict_do_update(
            index_elements=[workers.c.id],
            set_={c.name: new.excluded[c.name] for c in workers.c if c.name != "id"},
        )

    @property
    def database_in_process(self) -> bool:
        """SQLite runs in this process; PostgreSQL in its server's."""
        return self._jobs_sqlite

    async def _jobs_read(self, doing: str, query: sa.Executable) -> list[RowMapping]:
        with translated(self._location, doing):
            async with self._jobs_engine.connect() as conn:
                return list((await conn.execute(query)).mappings().all())

    # -- the queue -----------------------------------------------------------------------------

    async def enqueue_jobs(self, new: Sequence[AsyncJob]) -> None:
        if not new:
            return
        rows = [job.model_dump() for job in new]

        def enqueue(conn: Connection) -> None:
            conn.execute(sa.insert(jobs), rows)
            self._notify(conn)

        await self._tx.run("enqueueing jobs", enqueue)

    async def claim_jobs(self, worker_id: str, now: datetime, limit: int) -> list[AsyncJob]:
        if self._pg is not None:  # PostgreSQL's one-statement claim, with no outcomes
            return (await self._finish_and_claim_at_once(self._pg, [], worker_id, now, limit)).jobs
        rows = await self._tx.run_sqlite(
            "claiming jobs",
            lambda sql: litebatch.claim(sql, worker_id, now, limit),
            transaction=False,
        )
        return _claimed(rows)

    async def finish_and_claim(
        self,
        outcomes: Sequence[JobOutcome],
        worker_id: str,
        now: datetime,
        limit: int,
        *,
        locking: RunLocking | None = None,
    ) -> Claimed:
        if not outcomes and locking is None:  # the claim alone: one statement, no transaction
            return Claimed([], await self.claim_jobs(worker_id, now, limit))
        if (
            self._pg is not None
            and len(outcomes) <= _CHUNK
            and not any(o.status is AsyncJobStatus.QUEUED for o in outcomes)
        ):
            return await self._finish_and_claim_at_once(
                self._pg, outcomes, worker_id, now, limit, locking
            )

        doing = "recording job outcomes and claiming jobs" if outcomes else "claiming jobs"
        if self._jobs_sqlite:

            def lite(
                sql: DriverSql,
            ) -> tuple[list[str], Sequence[Mapping[Any, Any]], frozenset[str]]:
                applied = litebatch.finish(sql, outcomes) if outcomes else []
                rows = sorted(litebatch.claim(sql, worker_id, now, limit), key=_by_id)
                acquire = partial(litebatch.acquire, sql)
                return applied, rows, _take_run_locks(rows, locking, now, acquire)

            applied, rows, locked = await self._tx.run_sqlite(doing, lite)
        else:

            def both(
                conn: Connection,
            ) -> tuple[list[str], Sequence[Mapping[Any, Any]], frozenset[str]]:
                applied = self._finish_all(conn, outcomes) if outcomes else []
                rows = sorted(
                    conn.execute(self._claim(worker_id, now, limit)).mappings(), key=_by_id
                )
                acquire = partial(self._acquire_in, conn)
                return applied, rows, _take_run_locks(rows, locking, now, acquire)

            applied, rows, locked = await self._tx.run(doing, both)
        return Claimed(applied, [_job(r) for r in rows], locked)

    async def _finish_and_claim_at_once(
        self,
        pg: PgStatements,
        outcomes: Sequence[JobOutcome],
        worker_id: str,
        now: datetime,
        limit: int,
        locking: RunLocking | None = None,
    ) -> Claimed:
        """PostgreSQL, no hand-backs: one statement (`pgbatch`), one round trip."""
        sql, params = pg.finish_and_claim(outcomes, worker_id, now, limit, locking)
        rows = await self._tx.fetch("recording job outcomes and claiming jobs", sql, params)
        applied = list(rows[0]["applied"] or [])  # one row at least: see the statement
        extra = ("applied", "locked")
        claimed = [{k: v for k, v in row.items() if k not in extra} for row in rows if row["id"]]
        locked = frozenset(row["id"] for row in rows if row["id"] and row["locked"])
        return Claimed(applied, _claimed(claimed), locked)

    def _acquire_in(
        self, conn: Connection, claims: list[LockRecord]
    ) -> Sequence[Mapping[Any, Any]]:
        """PostgreSQL's acquire upsert (`pgbatch`) in the transaction of `conn`."""
        assert self._pg is not None  # PostgreSQL
        sql, params = self._pg.acquire(claims)
        return conn.exec_driver_sql(sql, params).mappings().all()

    def _claim(self, worker_id: str, now: datetime, limit: int) -> sa.Update:
        """PostgreSQL's claim as a Core statement, for a claim in a transaction of other
        writes (SQLite's is `litebatch.CLAIM`): `UPDATE … RETURNING` of the oldest queued
        jobs. A MATERIALIZED CTE runs the locking subselect once: as a plain `IN (subquery)`
        PostgreSQL may re-run it per row and claim more than `limit` jobs."""
        oldest = (
            sa.select(jobs.c.id).where(jobs.c.status == _QUEUED).order_by(jobs.c.id).limit(limit)
        )
        cte = oldest.with_for_update(skip_locked=True).cte("picked")
        picked = sa.select(cte.prefix_with("MATERIALIZED").c.id)
        return (
            sa.update(jobs)
            .where(jobs.c.id.in_(picked), jobs.c.status == _QUEUED)
            .values(
                status=_RUNNING,
                worker_id=worker_id,
                attempts=jobs.c.attempts + 1,
                started_at=now,
                last_heartbeat=now,
                finished_at=None,
            )
            .returning(*jobs.c)
        )

    async def heartbeat(self, worker: WorkerRecord) -> list[JobBeat]:
        beat = (
            sa.update(jobs)
            .where(jobs.c.worker_id == worker.id, jobs.c.status == _RUNNING)
            .values(last_heartbeat=worker.last_heartbeat)
            .returning(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested)
        )
        row = {f: getattr(worker, f) for f in WorkerRecord.__dataclass_fields__}

        def write(conn: Connection) -> list[JobBeat]:
            beats = [JobBeat(i, a, bool(c)) for i, a, c in conn.execute(beat).all()]
            conn.execute(self._upsert_worker, row)
            return beats

        beats = await self._tx.run("writing a heartbeat", write)
        return sorted(beats, key=lambda b: b.job_id)

    async def finish_jobs(self, outcomes: Sequence[JobOutcome]) -> list[str]:
        doing = "recording job outcomes"
        if self._jobs_sqlite:  # no notifications on SQLite
            return await self._tx.run_sqlite(doing, lambda sql: litebatch.finish(sql, outcomes))
        return await self._tx.run(doing, lambda conn: self._finish_all(conn, outcomes))

    def _finish_all(self, conn: Connection, outcomes: Sequence[JobOutcome]) -> list[str]:
        """PostgreSQL's outcomes in a transaction (SQLite's are `litebatch.finish`)."""
        applied: list[str] = []
        for start in range(0, len(outcomes), _CHUNK):
            applied.extend(self._finish(conn, outcomes[start : start + _CHUNK]))
        return applied

    def _finish(self, conn: Connection, outcomes: Sequence[JobOutcome]) -> list[str]:
        """Two statements per batch: read the claims (locking them on PostgreSQL; SQLite's
        write lock is held already), then one executemany of the fenced update for those still
        held with the outcome's token."""
        held = sa.select(jobs.c.id, jobs.c.worker_id, jobs.c.attempts).where(
            jobs.c.id.in_([o.job_id for o in outcomes]), jobs.c.status == _RUNNING
        )
        if not self._jobs_sqlite:
            held = held.with_for_update()
        claims = {i: (w, a) for i, w, a in conn.execute(held).all()}
        mine = [o for o in outcomes if claims.get(o.job_id) == (o.worker_id, o.token)]
        if mine:
            conn.execute(_FINISH, [_finish_params(o) for o in mine])
            if any(o.status is AsyncJobStatus.QUEUED for o in mine):
                self._notify(conn)  # handed back: another worker may take them now
        return [o.job_id for o in mine]

    async def request_cancel(self, job_id: str, now: datetime) -> AsyncJob | None:
        at_once = (
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == _QUEUED)
            .values(
                status=AsyncJobStatus.CANCELLED.value,
                finished_at=now,
                error_message="cancelled while queued",
            )
            .returning(*jobs.c)
        )
        ask = (
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == _RUNNING)
            .values(cancel_requested=True)
            .returning(*jobs.c)
        )
        # In this order: a job claimed between the two statements is caught by the second.
        for statement in (at_once, ask):
            rows = await self._tx.one(f"cancelling job {job_id}", statement)
            if rows:
                return _job(rows[0])
        return await self.get_job(job_id)

    async def rescue_stuck_jobs(self, now: datetime, stuck_before: datetime) -> list[AsyncJob]:
        stuck = await self.list_stuck_jobs(stuck_before)
        if not stuck:
            return []

        def rescue(conn: Connection) -> list[AsyncJob]:
            rescued: list[AsyncJob] = []
            for job in stuck:
                row = self._rescue(conn, job, now, stuck_before)
                if row is not None:
                    rescued.append(_job(row))
            if any(job.status is AsyncJobStatus.QUEUED for job in rescued):
                self._notify(conn)
            return rescued

        return await self._tx.run("rescuing stuck jobs", rescue)

    @staticmethod
    def _rescue(
        conn: Connection, job: AsyncJob, now: datetime, stuck_before: datetime
    ) -> RowMapping | None:
        assert job.last_heartbeat is not None
        values: dict[str, Any] = {
            "error_message": lost_worker_message(job.worker_id, job.last_heartbeat, now)
        }
        if job.cancel_requested:
            values.update(status=AsyncJobStatus.CANCELLED.value, finished_at=now)
        elif job.attempts < job.max_attempts:
            values.update(status=_QUEUED, worker_id=None, last_heartbeat=None)
        else:
            values.update(status=AsyncJobStatus.FAILED.value, finished_at=now)
        statement = (
            sa.update(jobs)
            .where(
                jobs.c.id == job.id,
                jobs.c.status == _RUNNING,
                jobs.c.attempts == job.attempts,
                jobs.c.last_heartbeat < stuck_before,
            )
            .values(values)
            .returning(*jobs.c)
        )
        return conn.execute(statement).mappings().first()

    async def delete_finished_jobs(self, before: datetime) -> int:
        statement = sa.delete(jobs).where(jobs.c.status.in_(_TERMINAL), jobs.c.finished_at < before)
        count: int = await self._tx.one("deleting finished jobs", statement)
        return count

    async def forget_workers(self, seen_before: datetime, *, worker_id: str | None = None) -> int:
        which = workers.c.id == worker_id if worker_id else workers.c.last_heartbeat < seen_before
        count: int = await self._tx.one("forgetting workers", sa.delete(workers).where(which))
        return count

    # -- notifications (PostgreSQL) --------------------------------------------------------

    def _notify(self, conn: Connection) -> None:
        """Tell listening workers that jobs are queued (delivered when `conn` commits)."""
        if not self._jobs_sqlite:
            conn.execute(_NOTIFY)

    @asynccontextmanager
    async def job_notifications(self, wake: Callable[[], None]) -> AsyncIterator[bool]:
        if self._jobs_sqlite:
            yield False
            return
        listening = await self._listen(wake)
        if listening is None:
            yield False
            return
        conn, driver, heard, lost = listening
        try:
            yield True
        finally:
            # Closed by us, not lost: no warning (the connection goes back to the pool, whose
            # disposal would otherwise call `lost` at every clean shutdown).
            driver.remove_termination_listener(lost)
            with anyio.CancelScope(shield=True), anyio.move_on_after(_UNLISTEN_TIMEOUT):
                try:
                    await driver.remove_listener(CHANNEL, heard)
                except Exception as exc:  # a dead connection: it is closed below anyway
                    logger.debug("UNLISTEN failed: %s", exc)
                await conn.close()

    async def _listen(
        self, wake: Callable[[], None]
    ) -> tuple[AsyncConnection, Any, Callable[..., None], Callable[..., None]] | None:
        """LISTEN on a connection of our own (held until `job_notifications` ends); None,
        with a warning, if that fails (the worker then polls)."""

        def heard(*_: object) -> None:
            wake()

        def lost(*_: object) -> None:
            logger.warning("%s: the LISTEN connection closed; polling only", self._location)

        conn: AsyncConnection | None = None
        try:
            conn = await self._jobs_engine.connect()
            driver: Any = (await conn.get_raw_connection()).driver_connection
            await driver.add_listener(CHANNEL, heard)
            driver.add_termination_listener(lost)
        except Exception as exc:
            logger.warning("%s: cannot LISTEN (%s); polling only", self._location, exc)
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await conn.close()
            return None
        return conn, driver, heard, lost

    # -- reading -------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> AsyncJob | None:
        query = sa.select(jobs).where(jobs.c.id == job_id)
        rows = await self._jobs_read(f"reading job {job_id}", query)
        return _job(rows[0]) if rows else None

    async def list_jobs(
        self, *, status: AsyncJobStatus | None = None, limit: int | None = None
    ) -> list[AsyncJob]:
        query = sa.select(jobs).order_by(jobs.c.id.desc())
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if limit is not None:
            query = query.limit(limit)
        return [_job(r) for r in await self._jobs_read("listing jobs", query)]

    async def count_jobs(self) -> dict[AsyncJobStatus, int]:
        query = sa.select(jobs.c.status, sa.func.count().label("n")).group_by(jobs.c.status)
        counts = dict.fromkeys(AsyncJobStatus, 0)
        for row in await self._jobs_read("counting jobs", query):
            counts[AsyncJobStatus(row["status"])] = row["n"]
        return counts

    async def list_stuck_jobs(self, stuck_before: datetime) -> list[AsyncJob]:
        query = (
            sa.select(jobs)
            .where(jobs.c.status == _RUNNING, jobs.c.last_heartbeat < stuck_before)
            .order_by(jobs.c.id)
        )
        return [_job(r) for r in await self._jobs_read("finding stuck jobs", query)]

    async def list_workers(self) -> list[WorkerRecord]:
        rows = await self._jobs_read("listing workers", sa.select(workers).order_by(workers.c.id))
        return [_worker(r) for r in rows]
