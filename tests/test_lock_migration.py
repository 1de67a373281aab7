"""Revision 0002 (the locks table): its constraints equal the declared table's, it goes down to
0001 and up again, and its CHECK constraints refuse what the code never writes."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbkit import inspect
from engine.domain.lock import LockKind
from engine.store import parse_url, schema_status, upgrade
from engine.store.sql.engine import create_engine
from engine.store.sql.schema import downgrade_to


def lock_schema(conn: Connection) -> dict[str, Any]:
    inspector = sa.inspect(conn)
    if "engine_locks" not in inspector.get_table_names():
        return {}
    return {
        "checks": {
            c["name"]: set(re.findall(r"'([^']*)'", c["sqltext"]))
            for c in inspector.get_check_constraints("engine_locks")
        },
        "key": inspector.get_pk_constraint("engine_locks")["constrained_columns"],
        "indexes": {i["name"] for i in inspector.get_indexes("engine_locks")},
    }


async def test_0002_creates_the_locks_table_and_0001_drops_it(empty_database: str) -> None:
    url = empty_database
    await upgrade(url)
    schema = await inspect(url, lock_schema)
    assert schema["checks"] == {
        "ck_engine_locks_resource_type_allowed": {k.value for k in LockKind},
        "ck_engine_locks_depth_positive": set(),
        "ck_engine_locks_pid_not_negative": set(),
        "ck_engine_locks_expires_after_acquired": set(),
    }
    assert schema["key"] == ["resource_type", "resource_id"]
    assert schema["indexes"] == {"ix_engine_locks_owner_id", "ix_engine_locks_expires_at"}

    engine = create_engine(parse_url(url))
    try:
        await downgrade_to(engine, "test", "0001")
    finally:
        await engine.dispose()
    assert await inspect(url, lock_schema) == {}
    assert (await schema_status(url)).current == "0001"

    await upgrade(url)
    assert await inspect(url, lock_schema) == schema


@pytest.mark.parametrize(
    ("column", "value"),
    [("resource_type", "'table'"), ("depth", "0"), ("pid", "-1"), ("expires_at", "past"), ("", "")],
)
async def test_check_constraints_refuse_bad_rows(
    empty_database: str, column: str, value: str
) -> None:
    """Each bad value is refused; the same row with none of them ("") is stored."""
    await upgrade(empty_database)
    row = {
        "resource_type": "'plan'",
        "resource_id": "'x'",
        "owner_id": "'h:1:r'",
        "acquired_at": "CURRENT_TIMESTAMP",
        "expires_at": "CURRENT_TIMESTAMP",
        "depth": "1",
        "host": "'h'",
        "pid": "1",
    }

    def insert(conn: Connection) -> None:
        sqlite = conn.dialect.name == "sqlite"
        later = "'+1 minute'" if value != "past" else "'-1 minute'"
        row["expires_at"] = (
            f"datetime('now', {later})" if sqlite else f"CURRENT_TIMESTAMP + interval {later}"
        )
        if column and column != "expires_at":
            row[column] = value
        columns, values = ", ".join(row), ", ".join(row.values())
        conn.execute(sa.text(f"INSERT INTO engine_locks ({columns}) VALUES ({values})"))

    if not column:
        await inspect(empty_database, insert)
        return
    with pytest.raises(sa.exc.IntegrityError):
        await inspect(empty_database, insert)
