"""The SQL store's own promises: SQLite set up right, files that are not ours left alone, schema
versions checked on open, driver errors translated, URLs validated."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import pytest

from engine.domain.states import FailureMode, RunState
from engine.errors import (
    NotADatabaseError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
    StoreURLError,
)
from engine.ids import new_id
from engine.ports.store import Changes, NewRun, RunRecord, SubplanRecord
from engine.store import MemoryStore, open_store, parse_url, schema_status, upgrade
from engine.store.sql import SqlStore, head_revision
from engine.store.sql.errors import translated
from engine.store.sql.schema import known_revisions
from engine.store.sql.transact import DriverSql


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def a_run() -> RunRecord:
    return RunRecord(
        id=new_id(),
        plan_name="p",
        state=RunState.PENDING,
        created_at=datetime.now(UTC),
        max_parallel=4,
        failure_mode=FailureMode.FAIL_FAST,
        plan_digest="0" * 64,
    )


async def test_sqlite_file_and_folder_are_created_and_set_up(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "engine.db"
    store = await open_store(sqlite_url(path))
    try:
        assert isinstance(store, SqlStore)
        async with store.engine.connect() as conn:

            async def pragma(name: str) -> object:
                return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()

            assert await pragma("journal_mode") == "wal"
            assert await pragma("foreign_keys") == 1
            assert await pragma("synchronous") == 1  # NORMAL
            assert await pragma("busy_timeout") == 30000
    finally:
        await store.close()
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM engine_schema_version").fetchall() == [
            (head_revision(),)
        ]


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not a database\n" * 20, b"SQLite format 3\x00" + b"\xff" * 90],
)
async def test_a_file_that_is_not_a_database_is_refused_and_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)

    with pytest.raises(NotADatabaseError, match="not an SQLite database") as caught:
        await open_store(sqlite_url(path))

    assert caught.value.exit_code == 2
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


async def test_another_programs_sqlite_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    before = path.read_bytes()

    with pytest.raises(NotADatabaseError, match="another program"):
        await open_store(sqlite_url(path))

    assert path.read_bytes() == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)


async def test_a_database_from_a_newer_engine_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    await (await open_store(sqlite_url(path))).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE engine_schema_version SET version_num = '9999'")
    before = path.read_bytes()

    with pytest.raises(SchemaVersionError, match="newer engine") as caught:
        await open_store(sqlite_url(path))

    assert caught.value.current == "9999"
    assert caught.value.exit_code == 2
    assert path.read_bytes() == before
    status = await schema_status(sqlite_url(path))
    assert (status.current, status.known) == ("9999", False)


async def test_an_empty_file_is_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    path.touch()
    await (await open_store(sqlite_url(path))).close()
    assert (await schema_status(sqlite_url(path))).current == head_revision()


async def test_status_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    status = await schema_status(sqlite_url(tmp_path / "missing.db"))
    assert not status.exists
    assert list(tmp_path.iterdir()) == []


async def test_opening_a_new_file_from_many_tasks_at_once_creates_it_once(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "engine.db")
    stores: list[SqlStore] = []

    async def open_one() -> None:
        store = await open_store(url)
        assert isinstance(store, SqlStore)
        stores.append(store)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(open_one)
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.write, Changes(created=[NewRun(a_run(), "{}", [])]))
        assert len(await stores[0].list_runs()) == 5
    finally:
        for store in stores:
            await store.close()


async def test_concurrent_writers_in_one_process_never_see_a_locked_database(
    tmp_path: Path,
) -> None:
    store = await open_store(sqlite_url(tmp_path / "engine.db"))
    try:
        runs = [a_run() for _ in range(40)]

        async def write(run: RunRecord) -> None:
            sub = SubplanRecord(id=new_id(), run_id=run.id, path="a", position=0, kind="run")
            await store.write(Changes(created=[NewRun(run, "{}", [sub])]))
            await store.write(Changes(runs=[run]))

        async with anyio.create_task_group() as tg:
            for run in runs:
                tg.start_soon(write, run)
        assert len(await store.list_runs()) == 40
    finally:
        await store.close()


async def test_a_started_sqlite_write_finishes_even_when_its_caller_is_cancelled(
    tmp_path: Path,
) -> None:
    store = await open_store(sqlite_url(tmp_path / "engine.db"))
    assert isinstance(store, SqlStore)
    started, go = anyio.Event(), threading.Event()
    run = a_run()
    loop = asyncio.get_running_loop()

    def work(sql: DriverSql) -> None:  # in the store's writer thread
        loop.call_soon_threadsafe(started.set)
        assert go.wait(10)
        store._statements(Changes(created=[NewRun(run, "{}", [])]))(sql, lambda _: [])

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(store._tx.run_sqlite, "recording", work))
                await started.wait()
                tg.cancel_scope.cancel()
                go.set()
        assert await store.get_run(run.id) is not None
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_an_in_memory_sqlite_database_is_written_through_its_one_connection(
    url: str,
) -> None:
    store = await open_store(url)
    try:
        run = a_run()
        await store.write(Changes(created=[NewRun(run, "{}", [])]))
        assert [r.id for r in await store.list_runs()] == [run.id]
    finally:
        await store.close()


async def test_update_of_an_unknown_subplan_is_refused_on_sqlite(tmp_path: Path) -> None:
    store = await open_store(sqlite_url(tmp_path / "engine.db"))
    try:
        run = a_run()
        await store.write(Changes(created=[NewRun(run, "{}", [])]))
        ghost = SubplanRecord(id=new_id(), run_id=run.id, path="ghost", position=0, kind="run")
        with pytest.raises(StoreError, match="unknown subplan"):
            await store.write(Changes(subplans=[ghost]))
    finally:
        await store.close()


async def test_downgraded_sqlite_file_is_upgraded_on_open(tmp_path: Path) -> None:
    from engine.store.sql.engine import create_engine
    from engine.store.sql.schema import downgrade_to

    url = sqlite_url(tmp_path / "engine.db")
    await (await open_store(url)).close()
    engine = create_engine(parse_url(url))
    await downgrade_to(engine, "test", "base")
    await engine.dispose()
    assert (await schema_status(url)).current is None

    await (await open_store(url)).close()
    assert (await schema_status(url)).current == head_revision()


def test_revisions_form_one_line_from_the_first() -> None:
    revisions = known_revisions()
    assert revisions[0] == "0001"
    assert len(set(revisions)) == len(revisions)
    assert head_revision() == revisions[-1]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://root:hunter2@db/engine", r"unsupported database URL 'mysql://\*\*\*@db/engine'"),
        ("engine.db", "scheme 'missing'"),
        ("postgresql+psycopg2://h/db", "unsupported"),
        ("postgresql+asyncpg://user@host", "names no database"),
    ],
)
def test_bad_urls_are_input_errors(url: str, match: str) -> None:
    with pytest.raises(StoreURLError, match=match) as caught:
        parse_url(url)
    assert caught.value.exit_code == 2
    assert "hunter2" not in str(caught.value)


def test_url_aliases_name_the_async_drivers() -> None:
    assert parse_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert parse_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"


async def test_memory_url_opens_a_memory_store() -> None:
    assert isinstance(await open_store("memory://"), MemoryStore)
    with pytest.raises(StoreURLError):
        await upgrade("memory://")


async def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="cannot reach the database server") as caught:
        await open_store("postgresql+asyncpg://postgres:pw@127.0.0.1:1/engine")
    assert "pw" not in str(caught.value)


async def test_an_unknown_host_is_a_clear_error() -> None:
    with pytest.raises(StoreUnavailableError, match="unknown host"):
        await open_store("postgresql+asyncpg://postgres@no-such-host.invalid/engine")


async def test_a_folder_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        await open_store(sqlite_url(blocker / "sub" / "engine.db"))


@pytest.mark.postgres
async def test_postgres_without_schema_says_to_run_db_upgrade(
    postgres_database: Callable[[], str],
) -> None:
    url = postgres_database()
    with pytest.raises(SchemaVersionError, match="db upgrade") as caught:
        await open_store(url)
    assert caught.value.current is None
    assert (await schema_status(url)).current is None  # nothing was created

    assert await upgrade(url) == (None, head_revision())
    store = await open_store(url)
    await store.close()


@pytest.mark.postgres
async def test_postgres_unknown_database_is_unavailable(postgres_server_url: str) -> None:
    url = parse_url(postgres_server_url).set(database="engine_no_such_database")
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        await open_store(url.render_as_string(hide_password=False))


@pytest.mark.postgres
async def test_postgres_check_constraints_refuse_unknown_states(postgres_url: str) -> None:
    store = await open_store(postgres_url)
    try:
        run = a_run()
        await store.write(Changes(created=[NewRun(run, "{}", [])]))
        assert isinstance(store, SqlStore)

        async def corrupt() -> None:
            with translated("pg", "writing"):
                async with store.engine.begin() as conn:
                    await conn.exec_driver_sql(
                        f"UPDATE engine_runs SET state = 'bogus' WHERE id = '{run.id}'"
                    )

        with pytest.raises(StoreError, match="constraint"):
            await corrupt()
    finally:
        await store.close()


def test_the_hot_inserts_name_every_column_of_their_tables() -> None:
    from engine.store.sql import mapping
    from engine.store.sql.tables import events, runs, subplan_runs

    assert set(mapping.RUN_COLUMNS) == {c.name for c in runs.c}
    assert set(mapping.SUBPLAN_COLUMNS) == {c.name for c in subplan_runs.c}
    assert set(mapping.EVENT_COLUMNS) == {c.name for c in events.c}


@pytest.mark.postgres
async def test_postgres_hot_statements_survive_a_lost_connection(postgres_url: str) -> None:
    """The store's own connection for its hot statements: a connection the server ends is
    replaced. The statement that finds it ended fails with a StoreError, unless the client
    knew before sending it (then it goes over a new one); the next one uses a new one."""
    store = await open_store(postgres_url)
    assert isinstance(store, SqlStore)
    try:
        pid_sql = "SELECT pg_backend_pid() AS pid"
        (first,) = await store._tx.fetch("asking", pid_sql, [])
        async with store.engine.connect() as admin:
            await admin.exec_driver_sql(f"SELECT pg_terminate_backend({first['pid']})")
        with suppress(StoreError):
            await store._tx.fetch("asking", pid_sql, [])
        (second,) = await store._tx.fetch("asking", pid_sql, [])
        assert second["pid"] != first["pid"]
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_hot_statement_errors_are_store_errors(postgres_url: str) -> None:
    store = await open_store(postgres_url)
    assert isinstance(store, SqlStore)
    try:
        pid_sql = "SELECT pg_backend_pid() AS pid"
        (before,) = await store._tx.fetch("asking", pid_sql, [])
        with pytest.raises(StoreError, match="constraint"):
            await store._tx.fetch(
                "inserting",
                "INSERT INTO engine_runs (id) VALUES ($1)",
                ["01ARZ3NDEKTSV4RRFFQ69G5FAV"],
            )
        with pytest.raises(StoreError, match="doing nothing failed"):
            await store._tx.fetch("doing nothing", "SELEC 1", [])
        (after,) = await store._tx.fetch("asking", pid_sql, [])
        assert after["pid"] == before["pid"]  # the server answered: the connection was kept
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_hot_statement_cancelled_in_flight_leaves_a_usable_store(
    postgres_url: str,
) -> None:
    store = await open_store(postgres_url)
    assert isinstance(store, SqlStore)
    try:
        with anyio.move_on_after(0.2):
            await store._tx.fetch("sleeping", "SELECT pg_sleep(5)", [])
        with anyio.fail_after(5):
            (row,) = await store._tx.fetch("asking", "SELECT 1 AS one", [])
        assert row["one"] == 1
    finally:
        await store.close()


@pytest.mark.postgres
async def test_postgres_hot_statements_at_the_same_time_all_get_their_answers(
    postgres_url: str,
) -> None:
    """One statement at a time goes over the store's own connection; the others meanwhile
    take the pool's connections: none waits for another, none is mixed up with another."""
    store = await open_store(postgres_url)
    assert isinstance(store, SqlStore)
    answers: dict[int, int] = {}

    async def ask(n: int) -> None:
        sql = "SELECT $1::int AS n, pg_sleep(0.01)"
        (row,) = await store._tx.fetch("asking", sql, [n], serialize=n % 3 == 0)
        answers[n] = row["n"]

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(ask, n)
        assert answers == {n: n for n in range(40)}
    finally:
        await store.close()
