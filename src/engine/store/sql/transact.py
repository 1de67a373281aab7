"""`Transactions`: one store write as ONE call of a plain function of a connection.

The hot writes (claims, completions, heartbeats, lock batches, the recorder's batches) are
written as synchronous functions of a SQLAlchemy `Connection` and run here:

- On an SQLite file, in a thread, on a synchronous connection (the standard library's sqlite3)
  of the same file: ONE thread hop per transaction. Through aiosqlite every statement costs
  several hops (cursor, execute, fetch, close, each a round trip to its thread and back to the
  event loop), which made SQLAlchemy async 4-5x slower per statement than the driver
  (PERFORMANCE.md); measured here, a transaction of an 8-row insert took 1.26 ms through the
  async engine and 0.37 ms this way. The thread call is not abandoned when its caller is
  cancelled: a transaction that started finishes (bounded by the busy timeout), so nothing is
  ever half-sent and no connection is closed mid-statement.
- On PostgreSQL (and an in-memory SQLite database, which only the async engine's single
  connection can see), through the async engine's `run_sync`: the same function, with the
  driver's own async I/O.

On SQLite every write of the process takes one lock first (the file has one writer at a time:
waiting in the process is cheaper than waiting in `busy_timeout`); on PostgreSQL only the
recorder's batches do (`serialize=True`: one writer path for runs), while claims, completions
and locks rely on row locks. Driver errors become `StoreError`s here (`translated`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import anyio
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from engine.store.sql.engine import autocommit, sqlite_path, sync_sqlite_engine, writer
from engine.store.sql.errors import translated

T = TypeVar("T")


class Transactions:
    def __init__(self, engine: AsyncEngine, location: str) -> None:
        sqlite = engine.dialect.name == "sqlite"
        self._location = location
        self._serialize = sqlite
        #: Held around every write on SQLite, and around `serialize=True` writes anywhere.
        self._write_lock = anyio.Lock()
        self._async_tx = writer(engine)
        self._async_auto = (
            autocommit(engine) if sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._sync: Engine | None = None
        if sqlite and sqlite_path(engine.url) is not None:
            self._sync = sync_sqlite_engine(engine.url)
            self._sync_tx = writer(self._sync)
            self._sync_auto = autocommit(self._sync)
        self._limiter = anyio.CapacityLimiter(1)

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
        lock = self._write_lock if serialize or self._serialize else nullcontext()
        async with lock:
            with translated(self._location, doing):
                return await self._run(work, transaction)

    async def one(self, doing: str, statement: Executable, params: Any = None) -> Any:
        """One statement in autocommit: its rows (fetched before the cursor closes) or its row
        count."""

        def work(conn: Connection) -> list[RowMapping] | int:
            result = conn.execute(statement, params)
            return list(result.mappings().all()) if result.returns_rows else result.rowcount

        return await self.run(doing, work, transaction=False)

    async def _run(self, work: Callable[[Connection], T], transaction: bool) -> T:
        if self._sync is None:
            engine = self._async_tx if transaction else self._async_auto
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        sync = self._sync_tx if transaction else self._sync_auto
        return await anyio.to_thread.run_sync(_in_transaction, sync, work, limiter=self._limiter)

    async def close(self) -> None:
        if self._sync is not None:
            await anyio.to_thread.run_sync(self._sync.dispose, limiter=self._limiter)


def _in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return work(conn)
