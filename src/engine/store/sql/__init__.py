"""The SQL store: SQLite (embedded default) and PostgreSQL through SQLAlchemy 2.x async.

Imported only when a database URL names one of them (`engine.store.open_store`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL

from engine.store.sql import schema
from engine.store.sql.engine import create_engine, sqlite_path
from engine.store.sql.schema import head_revision
from engine.store.sql.store import SqlStore

__all__ = [
    "SchemaStatus",
    "SqlStore",
    "head_revision",
    "open_sql_store",
    "schema_status",
    "upgrade",
]


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What `db current` reports."""

    location: str
    #: The database's revision; None if it has no engine schema (or, for SQLite, no file).
    current: str | None
    #: The newest revision this engine ships.
    head: str
    #: False for an SQLite URL whose file does not exist yet.
    exists: bool = True
    #: False when `current` is a revision this engine does not ship (a newer engine's).
    known: bool = True


async def open_sql_store(url: URL, location: str) -> SqlStore:
    """Connect, check the schema (upgrading an embedded SQLite file), and return the store."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        await schema.check(engine, location, upgrade=url.get_backend_name() == "sqlite")
    except BaseException:
        await engine.dispose()
        raise
    return SqlStore(engine, location)


async def schema_status(url: URL, location: str) -> SchemaStatus:
    """The schema revision of a database, without changing anything (no file is created)."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return SchemaStatus(location, None, head_revision(), exists=False)
    engine = create_engine(url)
    try:
        state = await schema.read_state(engine, location)
    finally:
        await engine.dispose()
    known = state.current is None or state.current in schema.known_revisions()
    return SchemaStatus(location, state.current, head_revision(), known=known)


async def upgrade(url: URL, location: str, revision: str = "head") -> tuple[str | None, str | None]:
    """`db upgrade`: the revision before and after."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        before = (await schema.read_state(engine, location)).current
        after = (await schema.upgrade_to(engine, location, revision)).current
    finally:
        await engine.dispose()
    return before, after
