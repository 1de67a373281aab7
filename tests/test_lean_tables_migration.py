"""Revision 0004 (events keyed by run and number, fewer indexes, SQLite tables without rowid):
the runs, subplans, events and locks a 0003 database holds come through it whole, and back
down to 0003 again."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbkit import inspect
from engine.store import parse_url, upgrade
from engine.store.sql.engine import create_engine
from engine.store.sql.schema import downgrade_to, upgrade_to

RUN = "01HRUN0000000000000000000A"
T = "2030-01-01 00:00:00"


def fill_0003(conn: Connection) -> None:
    """What 0003's engine wrote: a run, two subplans, its events (with their own ids) and a
    lock; and an event outside any run, which 0004 has no key for."""
    conn.execute(
        sa.text(
            "INSERT INTO engine_runs (id, plan_name, state, created_at, max_parallel,"
            " failure_mode, plan_digest, plan) VALUES"
            f" ('{RUN}', 'p', 'completed', '{T}', 4, 'fail_fast', 'd', '{{}}')"
        )
    )
    for position, path in enumerate(("a", "a/b")):
        conn.execute(
            sa.text(
                "INSERT INTO engine_subplan_runs (id, run_id, path, position, kind, state,"
                f" attempts) VALUES ('01HSUB000000000000000000{position}Z', '{RUN}', :path,"
                f" {position}, 'call', 'completed', 1)"
            ),
            {"path": path},
        )
    for seq, run_id in ((1, RUN), (2, RUN), (1, None)):
        conn.execute(
            sa.text(
                "INSERT INTO engine_events (id, run_id, seq, type, at, payload) VALUES"
                f" ('01HEVT00000000000000000{seq}{'R' if run_id else 'N'}Z', :run, {seq},"
                f" 'run.state', '{T}', '{{\"seq\": {seq}}}')"
            ),
            {"run": run_id},
        )
    conn.execute(
        sa.text(
            "INSERT INTO engine_locks (resource_type, resource_id, owner_id, acquired_at,"
            f" expires_at, depth, host, pid, run_id) VALUES ('plan', 'p', 'h:1:{RUN}', '{T}',"
            f" '2030-01-02 00:00:00', 1, 'h', 1, '{RUN}')"
        )
    )


def contents(conn: Connection) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in conn.execute(sa.text(sql)).all()]

    return {
        "subplans": rows(
            "SELECT id, run_id, path, position FROM engine_subplan_runs ORDER BY path"
        ),
        "events": rows(
            f"SELECT seq, payload FROM engine_events WHERE run_id = '{RUN}' ORDER BY seq"
        ),
        "locks": rows("SELECT resource_type, resource_id, owner_id, depth FROM engine_locks"),
    }


async def test_0004_keeps_the_records_of_0003_and_goes_down_and_up(empty_database: str) -> None:
    url = empty_database
    engine = create_engine(parse_url(url))
    try:
        await upgrade_to(engine, "test", "0003")
        async with engine.begin() as conn:
            await conn.run_sync(fill_0003)
        before = await inspect(url, contents)
        assert len(before["events"]) == 2

        await upgrade(url)
        assert await inspect(url, contents) == before
        keys = await inspect(url, lambda conn: sa.inspect(conn).get_pk_constraint("engine_events"))
        assert keys["constrained_columns"] == ["run_id", "seq"]
        # The event outside a run had no key: it is gone (the engine never wrote one).
        count = await inspect(
            url, lambda conn: conn.execute(sa.text("SELECT count(*) FROM engine_events")).scalar()
        )
        assert count == 2

        await downgrade_to(engine, "test", "0003")
        assert await inspect(url, contents) == before
        await upgrade(url)
        assert await inspect(url, contents) == before
    finally:
        await engine.dispose()
