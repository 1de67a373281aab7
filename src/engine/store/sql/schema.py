"""The schema version of a database, and Alembic upgrades.

On open, `check` compares the database's revision with the newest revision of the shipped
scripts (read from their file names once per process; Alembic is imported only to change a
schema): equal is the fast path, one small query. An
embedded SQLite file that is new, empty or behind is upgraded there and then, under the file's
write lock so that two processes opening a new file at once create it once. PostgreSQL is
upgraded only by `python -m engine db upgrade`; behind or empty, it is a `SchemaVersionError`
saying so. A revision this engine does not know (a newer engine wrote it), or an SQLite file
that is some other program's database, is an error and the
database is left exactly as it was.

The migration scripts ship inside the package as `engine.migrations` (the repository's
`migrations/` folder, mapped by setup.py), so editable and wheel installs find them alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

import anyio
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.errors import NotADatabaseError, SchemaVersionError, StoreError, StoreURLError
from engine.store.sql.engine import SQLITE_BUSY_TIMEOUT, autocommit, sqlite_path, writer
from engine.store.sql.errors import translated
from engine.store.sql.tables import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config


@dataclass(frozen=True, slots=True)
class SchemaState:
    #: The database's revision; None when it has no engine schema at all.
    current: str | None
    #: Names of tables that are not the engine's (an SQLite file with these is not ours).
    foreign_tables: tuple[str, ...] = ()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged scripts, bound to `connection` if given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("engine.migrations")))
    config.attributes["connection"] = connection
    return config


@cache
def known_revisions() -> tuple[str, ...]:
    """Every revision this engine ships, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return tuple(rev.revision for rev in reversed(list(script.walk_revisions())))


@cache
def head_revision() -> str:
    """The newest revision this engine ships. Read from the scripts' file names (`0003_jobs.py`
    is revision "0003"; tests/test_migrations.py holds every script to that), not through
    Alembic: importing Alembic and walking its scripts costs ~0.3 s, and every command that
    opens a store up to date needs only this."""
    versions = resources.files("engine.migrations") / "versions"
    numbers = [
        entry.name[:4]
        for entry in versions.iterdir()
        if entry.name.endswith(".py") and entry.name[:4].isdigit() and entry.name[4] == "_"
    ]
    return max(numbers)


async def read_state(engine: AsyncEngine, location: str) -> SchemaState:
    with translated(location, "reading the schema version"), _not_a_database(engine):
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_read_state)
        except TypeError as exc:
            # The driver's connect() got a URL query option it does not take (`?foo=bar`).
            if "unexpected keyword argument" not in str(exc):
                raise
            option = str(exc).rpartition("argument")[2].strip()
            raise StoreURLError(
                f"{location}: the database URL has an option the driver does not accept "
                f"({option}); remove it from the URL's query string"
            ) from None


def _read_state(conn: Connection) -> SchemaState:
    inspector = sa.inspect(conn)
    tables = inspector.get_table_names()
    if VERSION_TABLE not in tables:
        return SchemaState(None, tuple(t for t in tables if not t.startswith("sqlite_")))
    version = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return SchemaState(version)


async def check(engine: AsyncEngine, location: str, *, upgrade: bool) -> None:
    """Make sure the database is at the newest revision, upgrading it if `upgrade` (SQLite)."""
    state = await read_state(engine, location)
    if state.current == head_revision():
        await _use_wal(engine, location)
        return
    _refuse_foreign(engine, location, state)
    if not upgrade:
        raise _behind(location, state.current)
    await _upgrade(engine, location, "head")
    await _use_wal(engine, location)


async def upgrade_to(engine: AsyncEngine, location: str, revision: str = "head") -> SchemaState:
    """`db upgrade`: bring the schema to `revision` (default: the newest)."""
    state = await read_state(engine, location)
    _refuse_foreign(engine, location, state)
    await _upgrade(engine, location, revision)
    await _use_wal(engine, location)
    return await read_state(engine, location)


async def downgrade_to(engine: AsyncEngine, location: str, revision: str) -> None:
    """For tests and recovery: step the schema back to `revision` (`base` drops everything)."""
    from alembic import command

    def run(conn: Connection) -> None:
        command.downgrade(alembic_config(conn), revision)

    with translated(location, "downgrading the schema"):
        async with writer(engine).begin() as conn:
            await conn.run_sync(run)


async def _upgrade(engine: AsyncEngine, location: str, revision: str) -> None:
    from alembic import command

    def run(conn: Connection) -> None:
        # Re-read under the write lock: another process may have upgraded meanwhile.
        state = _read_state(conn)
        _refuse_foreign(engine, location, state)
        if revision == "head" and state.current == head_revision():
            return
        command.upgrade(alembic_config(conn), revision)

    with translated(location, "upgrading the schema"), _not_a_database(engine):
        async with writer(engine).begin() as conn:
            await conn.run_sync(run)


def _refuse_foreign(engine: AsyncEngine, location: str, state: SchemaState) -> None:
    if state.current is None:
        path = sqlite_path(engine.url)
        if path is not None and state.foreign_tables:
            shown = ", ".join(state.foreign_tables[:5])
            raise NotADatabaseError(
                str(path), f"an SQLite database of another program (tables: {shown})"
            )
        return
    if state.current not in known_revisions():
        raise SchemaVersionError(
            f"{location}: the schema is at revision {state.current}, which this engine does "
            f"not know (its newest is {head_revision()}): it was written by a newer engine; "
            "upgrade the engine to use this database",
            current=state.current,
            expected=head_revision(),
        )


def _behind(location: str, current: str | None) -> SchemaVersionError:
    where = "has no engine schema yet" if current is None else f"is at revision {current}"
    head = head_revision()
    return SchemaVersionError(
        f"{location} {where}; this engine needs revision {head}: "
        f"run `python -m engine db upgrade --db URL` first",
        current=current,
        expected=head,
    )


async def _use_wal(engine: AsyncEngine, location: str) -> None:
    """WAL lets readers run beside the one writer. Persistent: set once per file.

    Switching needs the file to itself, and SQLite refuses at once ("database is locked")
    rather than waiting on busy_timeout when another process is using it: typically the other
    process that is creating the same new file, and switching it. So: look, try, and look again
    after a short pause, for as long as a writer would wait.
    """
    if sqlite_path(engine.url) is None:
        return
    pause = 0.005
    with anyio.move_on_after(SQLITE_BUSY_TIMEOUT), translated(location, "switching to WAL"):
        while True:
            try:
                async with autocommit(engine).connect() as conn:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                    if str(mode).lower() != "wal":
                        await conn.exec_driver_sql("PRAGMA journal_mode = WAL")
                    return
            except sa_exc.OperationalError as exc:
                if "locked" not in str(exc.orig) and "busy" not in str(exc.orig):
                    raise
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.25)
    raise StoreError(
        f"{location}: switching to WAL failed: another process kept the file busy for "
        f"{SQLITE_BUSY_TIMEOUT:g}s; try again when it is done"
    )


@contextmanager
def _not_a_database(engine: AsyncEngine) -> Iterator[None]:
    """SQLite's "file is not a database" becomes NotADatabaseError naming the file."""
    try:
        yield
    except sa_exc.DatabaseError as exc:
        path = sqlite_path(engine.url)
        message = str(exc.orig).lower()
        if path is not None and ("not a database" in message or "encrypted" in message):
            raise NotADatabaseError(str(path), "not an SQLite database") from exc
        raise
