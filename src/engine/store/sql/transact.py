"""`Transactions`: one store write as ONE call of a plain function of a connection.

The hot writes (claims, completions, heartbeats, lock batches, the recorder's batches) are
written as synchronous functions of a SQLAlchemy `Connection` and run here:

- On an SQLite file, in the store's writer thread, on a synchronous connection (the standard
  library's sqlite3) of the same file: ONE thread hop per transaction. Through aiosqlite every
  statement costs several hops (cursor, execute, fetch, close, each a round trip to its thread
  and back to the event loop), which made SQLAlchemy async 4-5x slower per statement than the
  driver (PERFORMANCE.md); measured here, a transaction of an 8-row insert took 1.26 ms through
  the async engine and 0.37 ms this way. A write is handed to the thread at once, without
  yielding to the event loop first (`anyio.to_thread` and an `anyio.Lock` each yield, and on a
  busy loop every yield waited for all the ready tasks to run: the thread then idled while the
  loop ran the very work it could have overlapped). The thread takes writes in order, so it is
  also the write lock. A write is not abandoned when its caller is cancelled: a transaction
  that started finishes (bounded by the busy timeout), so nothing is ever half-sent and no
  connection is closed mid-statement. The worker's hot writes (`run_sqlite`: SQLite's own SQL,
  `DriverSql`) skip SQLAlchemy altogether: the thread begins and commits them on the driver's
  connection itself.
- On PostgreSQL (and an in-memory SQLite database, which only the async engine's single
  connection can see), through the async engine's `run_sync`: the same function, with the
  driver's own async I/O. The worker's hot statements (`fetch`: one statement of driver SQL,
  `pgbatch`) go instead over connections of the store's own (`DIRECT_CONNECTIONS`), straight
  to asyncpg: measured, a statement cost 300-370 us of the event loop's CPU through a pool
  checkout, a greenlet and SQLAlchemy's cursor adapter, and 60-70 us this way. When all of
  them are busy the statement takes the pool's path instead of waiting.

On SQLite every write of the process goes through the one thread (the file has one writer at a
time: waiting in the process is cheaper than waiting in `busy_timeout`); on PostgreSQL only the
recorder's batches take a lock (`serialize=True`: one writer path for runs), while claims,
completions and locks rely on row locks. Driver errors become `StoreError`s here (`translated`).
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext, suppress
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from engine.errors import StoreUnavailableError
from engine.store.sql.engine import (
    CONNECT_TIMEOUT,
    autocommit,
    sqlite_path,
    sync_sqlite_engine,
    writer,
)
from engine.store.sql.errors import classify_driver, translated

T = TypeVar("T")

#: PostgreSQL connections of the store's own for its hot statements: one per kind a worker
#: can have in flight at once (its claim, its lock batch, its recorder batch).
DIRECT_CONNECTIONS = 3
#: How long closing the direct PostgreSQL connection may take before it is cut.
CLOSE_TIMEOUT = 5.0


class Transactions:
    def __init__(self, engine: AsyncEngine, location: str) -> None:
        sqlite = engine.dialect.name == "sqlite"
        self._location = location
        self._serialize = sqlite
        #: Held around `serialize=True` writes through the async engine (the writer thread
        #: serializes its own).
        self._write_lock = anyio.Lock()
        self._async_tx = writer(engine)
        self._async_auto = (
            autocommit(engine) if sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._thread: WriterThread | None = None
        self._direct = (
            [DirectConnection(engine, location) for _ in range(DIRECT_CONNECTIONS)]
            if engine.dialect.name == "postgresql"
            else []
        )
        if sqlite and sqlite_path(engine.url) is not None:
            sync = sync_sqlite_engine(engine.url)
            self._thread = WriterThread(sync, name=f"writer {location}")

    async def run(
        self,
        doing: str,
        work: Callable[[Connection], T],
        *,
        transaction: bool = True,
        serialize: bool = False,
    ) -> T:
        """`work(conn)` in one transaction (`BEGIN IMMEDIATE` on SQLite), committed when it
        returns and rolled back if it raises; `transaction=False`: in autocommit (each
        statement commits on its own: single statements). `doing` names it in errors."""
        with translated(self._location, doing):
            if self._thread is not None:
                return await self._thread.run(work, transaction)
            lock = self._write_lock if serialize or self._serialize else nullcontext()
            async with lock:
                engine = self._async_tx if transaction else self._async_auto
                async with engine.begin() as conn:
                    return await conn.run_sync(work)

    async def run_sqlite(
        self, doing: str, work: Callable[[DriverSql], T], *, transaction: bool = True
    ) -> T:
        """SQLite: `work(sql)` of statements in SQLite's own SQL, as `run` would run it. On a
        file they go straight to the driver's connection in the writer thread (no SQLAlchemy
        between: its begin, commit and per-statement execution cost about as much as SQLite's
        own work on a worker's batches); else (an in-memory database) through SQLAlchemy."""
        if self._thread is None:
            return await self.run(
                doing, lambda conn: work(AlchemySql(conn)), transaction=transaction
            )
        with translated(self._location, doing):
            return await self._thread.run(work, transaction, raw=True)

    async def one(self, doing: str, statement: Executable, params: Any = None) -> Any:
        """One statement in autocommit: its rows (fetched before the cursor closes) or its row
        count."""

        def work(conn: Connection) -> list[RowMapping] | int:
            result = conn.execute(statement, params)
            return list(result.mappings().all()) if result.returns_rows else result.rowcount

        return await self.run(doing, work, transaction=False)

    async def fetch(
        self, doing: str, sql: str, params: Sequence[Any], *, serialize: bool = False
    ) -> Sequence[Mapping[Any, Any]]:
        """One statement of driver SQL (PostgreSQL's `$n` parameters there) in autocommit: its
        rows, each a mapping of column name to value. `serialize` as for `run`."""
        direct = next((d for d in self._direct if not d.busy), None)
        if direct is None:

            def work(conn: Connection) -> list[RowMapping]:
                return list(conn.exec_driver_sql(sql, tuple(params)).mappings().all())

            return await self.run(doing, work, transaction=False, serialize=serialize)
        direct.busy = True  # before any await: one statement at a time on it
        try:
            async with self._write_lock if serialize else nullcontext():
                with translated(self._location, doing):
                    return await direct.fetch(sql, params, doing)
        finally:
            direct.busy = False

    async def close(self) -> None:
        if self._thread is not None:
            await self._thread.close()
        for direct in self._direct:
            await direct.close()


class WriterThread:
    """One thread that makes every write to an SQLite file, in the order they were handed to
    it, each in its own transaction (or in autocommit) on the one synchronous connection.

    Started on the first write, stopped by `close()` (a daemon thread: a store never closed
    cannot keep the process alive). Asyncio only: the answer comes back through the caller's
    event loop (`call_soon_threadsafe`)."""

    def __init__(self, engine: Engine, *, name: str) -> None:
        self._engine = engine
        self._engines = {True: writer(engine), False: autocommit(engine)}
        self._name = name
        self._queue: queue.SimpleQueue[_Write[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, work: Callable[[Any], T], transaction: bool, *, raw: bool = False) -> T:
        """Hand `work` to the thread now (no yield before) and wait for its answer. Not
        abandoned if the caller is cancelled meanwhile: the cancellation is delivered after.
        `raw`: `work` takes the driver's connection (`DriverSql`), not SQLAlchemy's."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        write = _Write(work, transaction, raw, asyncio.get_running_loop())
        self._queue.put(write)
        with anyio.CancelScope(shield=True):
            await write.done.wait()
        if write.error is not None:
            raise write.error
        return cast(T, write.answer)  # set when no error

    async def close(self) -> None:
        """Finish the writes handed over so far, close the connection and stop the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        await anyio.to_thread.run_sync(thread.join)

    def _serve(self) -> None:
        raw: sqlite3.Connection | None = None
        try:
            while (write := self._queue.get()) is not None:
                try:
                    if write.raw:
                        if raw is None:  # the pool's one connection, as the driver's
                            driver = self._engine.raw_connection().driver_connection
                            raw = cast(sqlite3.Connection, driver)
                        write.answer = _in_transaction(raw, write.work, write.transaction)
                    else:
                        with self._engines[write.transaction].begin() as conn:
                            write.answer = write.work(conn)
                except BaseException as exc:  # handed to the caller, raised there
                    write.error = exc
                with suppress(RuntimeError):  # its loop is closed: nobody waits for the answer
                    write.loop.call_soon_threadsafe(write.done.set)
        finally:
            self._engine.dispose()


def _in_transaction(raw: sqlite3.Connection, work: Callable[[Any], T], transaction: bool) -> T:
    """`work(raw)` in `BEGIN IMMEDIATE` ... `COMMIT` (rolled back if it raises), or in
    autocommit (the engine's connections leave transactions to us: `isolation_level=None`)."""
    if not transaction:
        return work(raw)
    raw.execute("BEGIN IMMEDIATE")
    try:
        answer = work(raw)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return answer


class DriverSql(Protocol):
    """What SQLite's own SQL is run through: the driver's connection (`sqlite3.Connection`),
    or `AlchemySql` (an in-memory database, only SQLAlchemy's connection sees it)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> DriverRows: ...

    def executemany(self, sql: str, parameters: Any, /) -> DriverRows: ...


class DriverRows(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> Sequence[Any]: ...


class AlchemySql:
    """`DriverSql` over a SQLAlchemy connection (driver SQL, SQLAlchemy's error wrapping)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> DriverRows:
        return self._conn.exec_driver_sql(sql, tuple(parameters))

    def executemany(self, sql: str, parameters: Any, /) -> DriverRows:
        return self._conn.exec_driver_sql(sql, list(parameters))


class _Write(Generic[T]):
    __slots__ = ("answer", "done", "error", "loop", "raw", "transaction", "work")

    def __init__(
        self,
        work: Callable[[Any], T],
        transaction: bool,
        raw: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.work = work
        self.transaction = transaction
        self.raw = raw
        self.loop = loop
        self.done = asyncio.Event()
        self.answer: T | None = None
        self.error: BaseException | None = None


class DirectConnection:
    """PostgreSQL: an asyncpg connection of the store's own, opened on first use with the
    engine's connection settings, for one statement at a time (its caller sets `busy` before
    it awaits anything, and clears it after). A statement that does not end normally
    (cancelled, connection lost) closes it; the next one opens a new one."""

    def __init__(self, engine: AsyncEngine, location: str) -> None:
        self._engine = engine
        self._location = location
        self._conn: Any = None
        self.busy = False

    async def fetch(
        self, sql: str, params: Sequence[Any], doing: str
    ) -> Sequence[Mapping[Any, Any]]:
        import asyncpg  # type: ignore[import-untyped]  # an optional extra, without types

        ok = False
        try:
            if self._conn is not None and self._conn.is_closed():  # lost while idle
                await self._drop()
            if self._conn is None:
                self._conn = await asyncpg.connect(**self._connect_args(asyncpg.connect))
            rows: Sequence[Mapping[Any, Any]] = await self._conn.fetch(sql, *params)
            ok = True
            return rows
        except asyncpg.PostgresError as exc:
            integrity = isinstance(exc, asyncpg.IntegrityConstraintViolationError)
            error = classify_driver(exc, integrity, self._location, doing)
            # The server answered: the connection is fine, unless the answer was that it is
            # closing it (an administrator's shutdown or termination, sqlstate 57P/08).
            ok = not isinstance(error, StoreUnavailableError)
            raise error from exc
        except (OSError, TimeoutError):
            raise  # `translated` says the server cannot be reached
        except Exception as exc:  # the client's state: a closed or broken connection
            raise StoreUnavailableError(
                f"{self._location}: cannot use the database: {exc}"
            ) from exc
        finally:
            if not ok:
                await self._drop()

    async def close(self) -> None:
        await self._drop()

    def _connect_args(self, connect: Callable[..., Any]) -> dict[str, Any]:
        """The engine's connection settings that asyncpg takes (the URL's query may hold
        options only SQLAlchemy's dialect reads), with the store's connect timeout."""
        _, options = self._engine.dialect.create_connect_args(self._engine.url)
        accepted = inspect.signature(connect).parameters
        kwargs = {k: v for k, v in options.items() if k in accepted}
        kwargs["timeout"] = CONNECT_TIMEOUT
        return kwargs

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT) as scope:
                await conn.close()
            if scope.cancelled_caught:
                conn.terminate()
