"""Looking inside a database from migration tests (engine's own SQL engine set-up)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from engine.ports.store import Store
from engine.store import parse_url
from engine.store.sql.engine import create_engine
from engine.store.sql.tables import metadata


async def inspect(url: str, fn: Callable[[Connection], Any]) -> Any:
    """Run `fn` on a synchronous connection to `url` (e.g. `sqlalchemy.inspect`)."""
    engine = create_engine(parse_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def empty_store(store: Store) -> None:
    """Delete every row of every engine table (children first): the session's PostgreSQL
    database is shared by its tests. A memory store is new for each test already."""
    from engine.store.sql import SqlStore

    if not isinstance(store, SqlStore):
        return
    async with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
