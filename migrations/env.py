"""Alembic environment for the engine's store (async; target metadata = the store's tables).

Two ways in:
- from the engine (`python -m engine db upgrade`, the automatic upgrade of SQLite files): the
  caller already holds a connection inside a transaction and passes it as
  `config.attributes["connection"]`; migrations run on it and the caller commits.
- from the `alembic` command line in a checkout (`alembic upgrade head`, `alembic revision
  --autogenerate -m ...`): the URL comes from `-x url=...`, else `ENGINE_DATABASE_URL`, else the
  default SQLite file, and an async engine is created here.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from engine.config import DEFAULT_DATABASE_URL
from engine.store import parse_url
from engine.store.sql.engine import create_engine, writer
from engine.store.sql.tables import VERSION_TABLE, metadata

config = context.config


def _configure(**options: object) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=True,
        compare_type=True,
        **options,
    )


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    given = context.get_x_argument(as_dictionary=True).get("url")
    return given or os.environ.get("ENGINE_DATABASE_URL") or DEFAULT_DATABASE_URL


async def _run_standalone() -> None:
    engine = create_engine(parse_url(_url()))
    try:
        async with writer(engine).begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=parse_url(_url()).render_as_string(hide_password=False), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone())
