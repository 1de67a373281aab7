"""Looking inside a database from migration tests (engine's own SQL engine set-up)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from engine.store import parse_url
from engine.store.sql.engine import create_engine


async def inspect(url: str, fn: Callable[[Connection], Any]) -> Any:
    """Run `fn` on a synchronous connection to `url` (e.g. `sqlalchemy.inspect`)."""
    engine = create_engine(parse_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()
