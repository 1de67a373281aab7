"""SQLAlchemy async engines for the store: SQLite done right, PostgreSQL with short timeouts.

SQLite: `busy_timeout`, `foreign_keys=ON` and `synchronous=NORMAL` on every connection; WAL is
switched on by the schema check once it knows the file is ours (it is a persistent property of
the file, and a file that is not ours must stay untouched). Transactions are begun by us, not by
the driver: `BEGIN IMMEDIATE` for writes (through `writer(engine)`), so a writer waits for the
file's write lock up to `busy_timeout` instead of failing with "database is locked" when a read
transaction would have to be upgraded; plain `BEGIN` for reads; none at all for `autocommit`.

This module owns ONLY engine creation; it runs no query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from engine.errors import StoreURLError

#: How long a writer waits for another process to release an SQLite file's write lock.
SQLITE_BUSY_TIMEOUT = 30.0
#: How long connecting to PostgreSQL may take before the server counts as unreachable.
CONNECT_TIMEOUT = 10.0

_BEGIN = "engine_begin"

E = TypeVar("E", AsyncEngine, Engine)


def create_engine(url: URL) -> AsyncEngine:
    """StoreURLError for a URL SQLAlchemy refuses (`sqlite://user@/x.db`); it masks passwords."""
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        return create_async_engine(
            url,
            pool_size=4,
            max_overflow=4,
            connect_args={"timeout": CONNECT_TIMEOUT},
        )
    except sa_exc.ArgumentError as exc:
        raise StoreURLError(f"malformed database URL: {exc}") from None


def writer(engine: E) -> E:
    """The same engine, whose transactions take the write lock up front (SQLite)."""
    return engine.execution_options(**{_BEGIN: "IMMEDIATE"})


def autocommit(engine: E) -> E:
    """The same engine without any transaction (SQLite pragmas that refuse to run in one)."""
    return engine.execution_options(**{_BEGIN: None})


def sqlite_path(url: URL) -> Path | None:
    """The file of an SQLite URL; None for an in-memory database or another backend."""
    database = url.database
    if (
        url.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file::memory:")
    ):
        return None
    return Path(database)


def _sqlite_engine(url: URL) -> AsyncEngine:
    path = sqlite_path(url)
    options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    if path is None:
        # One connection, or every checkout would see a new empty database.
        options["poolclass"] = StaticPool
    engine = create_async_engine(url, **options)
    _configure_sqlite(engine.sync_engine)
    return engine


def sync_sqlite_engine(url: URL) -> Engine:
    """A synchronous engine (the standard library's sqlite3) on the same SQLite file, set up
    like the async one, with ONE connection that any thread may use in turn (callers
    serialize; see `Transactions`)."""
    engine = sa_create_engine(
        url.set(drivername="sqlite"),
        poolclass=StaticPool,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
    )
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    busy_ms = int(SQLITE_BUSY_TIMEOUT * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver: we emit BEGIN ourselves (see `_on_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN, "DEFERRED")
        if mode is not None:
            connection.exec_driver_sql(f"BEGIN {mode}")
