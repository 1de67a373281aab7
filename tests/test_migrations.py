"""Migrations equal the declared tables, go down and up again, and ship with the package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from dbkit import inspect
from engine.domain.states import FailureMode, RunState, SubplanState
from engine.store import parse_url, schema_status, upgrade
from engine.store.sql import head_revision
from engine.store.sql.engine import create_engine
from engine.store.sql.schema import downgrade_to, known_revisions
from engine.store.sql.tables import VERSION_TABLE, metadata

ROOT = Path(__file__).parent.parent
ENGINE_TABLES = {"engine_runs", "engine_subplan_runs", "engine_events"}


def differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
    )
    return list(compare_metadata(context, metadata))


def tables(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def allowed_values(conn: Connection) -> dict[str, set[str]]:
    """CHECK constraint name -> the quoted values it allows, as the database reports them."""
    inspector = sa.inspect(conn)
    found: dict[str, set[str]] = {}
    for table in ENGINE_TABLES:
        for check in inspector.get_check_constraints(table):
            found[check["name"]] = set(re.findall(r"'([^']*)'", check["sqltext"]))
    return found


async def test_upgrade_head_equals_the_declared_tables_and_downgrade_undoes_it(
    empty_database: str,
) -> None:
    url = empty_database
    assert await upgrade(url) == (None, head_revision())
    assert await inspect(url, differences) == []
    assert await inspect(url, tables) >= ENGINE_TABLES

    engine = create_engine(parse_url(url))
    await downgrade_to(engine, "test", "base")
    await engine.dispose()
    assert await inspect(url, tables) & ENGINE_TABLES == set()
    assert (await schema_status(url)).current is None

    assert await upgrade(url) == (None, head_revision())
    assert await inspect(url, differences) == []


async def test_check_constraints_allow_exactly_the_enum_values(empty_database: str) -> None:
    await upgrade(empty_database)
    assert await inspect(empty_database, allowed_values) == {
        "ck_engine_runs_state_allowed": {s.value for s in RunState},
        "ck_engine_runs_failure_mode_allowed": {m.value for m in FailureMode},
        "ck_engine_subplan_runs_state_allowed": {s.value for s in SubplanState},
    }


async def test_check_constraints_refuse_other_values(empty_database: str) -> None:
    await upgrade(empty_database)

    def insert(conn: Connection) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO engine_runs (id, plan_name, state, created_at, max_parallel,"
                " failure_mode, plan_digest, plan) VALUES ('01HZZZZZZZZZZZZZZZZZZZZZZZ', 'p',"
                " 'exploded', CURRENT_TIMESTAMP, 4, 'fail_fast', 'x', '{}')"
            )
        )

    with pytest.raises(sa.exc.IntegrityError):
        await inspect(empty_database, insert)


def test_scripts_are_named_after_their_revisions_so_the_head_is_read_from_names() -> None:
    versions = Path(str(resources.files("engine.migrations"))) / "versions"
    scripts = sorted(versions.glob("[0-9]*.py"))
    assert [p.name[:4] for p in scripts] == list(known_revisions())
    for script in scripts:
        assert f'revision: str = "{script.name[:4]}"' in script.read_text(), script.name
    assert head_revision() == known_revisions()[-1]


def test_the_alembic_command_line_works_in_a_checkout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "alembic",
                "-c",
                str(ROOT / "alembic.ini"),
                "-x",
                f"url={url}",
                *args,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )

    upgraded = alembic("upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    current = alembic("current")
    assert f"{head_revision()} (head)" in current.stdout, current.stderr
    assert alembic("check").returncode == 0  # autogenerate finds nothing to add
    offline = alembic("upgrade", "head", "--sql")
    assert "CREATE TABLE engine_runs" in offline.stdout, offline.stderr


def test_a_wheel_carries_the_migrations_and_finds_them(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    shutil.copytree(ROOT / "migrations", source / "migrations", ignore=ignore)
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("engine-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "engine/migrations/env.py",
        "engine/migrations/script.py.mako",
        "engine/migrations/versions/0001_runs.py",
    } <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import engine, importlib.resources as r; "
        "from engine.store.sql.schema import known_revisions; "
        "from engine.store.sql.schema import head_revision; "
        "print(engine.__file__); print(r.files('engine.migrations')); "
        "print((known_revisions(), head_revision()))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    module, scripts, revisions = found.stdout.splitlines()
    assert module.startswith(str(site))
    assert scripts == str(site / "engine" / "migrations")
    assert revisions == repr((known_revisions(), known_revisions()[-1]))
