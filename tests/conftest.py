"""Fixtures shared across test modules. Each section is self-contained; add yours as a new one."""

from __future__ import annotations

# --- PostgreSQL ------------------------------------------------------------------------------
# Tests that need PostgreSQL run only when ENGINE_TEST_POSTGRES_URL names a server (`.ci/run`
# sets it when one answers on 127.0.0.1:5432). The server is shared, so nothing is created in
# the database of that URL: each test session gets a database of its own, and tests that need
# an empty one (migrations) get theirs; all are dropped afterwards.
import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dbkit import empty_store
from engine.ports.store import Store
from engine.store import MemoryStore, open_store

POSTGRES_URL_VARIABLE = "ENGINE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The server's URL (`postgresql+asyncpg://user@host:port/db`); skips the test without it."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set")
    return url


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A database of this test session, at the engine's schema head, dropped at the end.

    Tests share it: use fresh ids, or `postgres_database` for a database of your own.
    """
    with _database(postgres_server_url) as url:
        from engine.store import upgrade

        _run_async(upgrade(url))
        yield url


@pytest.fixture
def postgres_database(postgres_server_url: str) -> Iterator[Callable[[], str]]:
    """A factory of empty databases (no schema), each dropped after the test."""
    with _DatabaseFactory(postgres_server_url) as make:
        yield make


@contextmanager
def _database(server_url: str) -> Iterator[str]:
    with _DatabaseFactory(server_url) as make:
        yield make()


class _DatabaseFactory:
    def __init__(self, server_url: str) -> None:
        from sqlalchemy.engine import make_url

        self._url = make_url(server_url)
        self._names: list[str] = []

    def __call__(self) -> str:
        name = f"engine_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        _run_async(self._admin(f'CREATE DATABASE "{name}"'))
        self._names.append(name)
        return self._url.set(database=name).render_as_string(hide_password=False)

    def __enter__(self) -> _DatabaseFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name in self._names:
            _run_async(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _admin(self, statement: str) -> None:
        import asyncpg

        dsn = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to its end from sync code, even when an event loop is running here
    (a sync fixture requested by an async one): on a loop of its own, in a thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database (no tables): a new SQLite file, or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}"
    make: Callable[[], str] = request.getfixturevalue("postgres_database")
    return make()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The store contract fixture: every test using it runs on memory, SQLite and PostgreSQL,
    starting from an empty store."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = await open_store(url)
    try:
        await empty_store(opened)
        yield opened
    finally:
        await opened.close()
