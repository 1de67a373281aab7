"""Revision 0003 (jobs and workers): its CHECK constraints allow exactly the job statuses and
refuse what the code never writes, and it goes down to 0002 and up again."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbkit import inspect
from engine.domain.states import AsyncJobStatus
from engine.store import parse_url, upgrade
from engine.store.sql.engine import create_engine
from engine.store.sql.schema import downgrade_to

JOB_TABLES = {"engine_jobs", "engine_workers"}


def job_schema(conn: Connection) -> dict[str, Any]:
    inspector = sa.inspect(conn)
    return {
        "tables": JOB_TABLES & set(inspector.get_table_names()),
        "checks": {
            c["name"]: set(re.findall(r"'([^']*)'", c["sqltext"]))
            for c in inspector.get_check_constraints("engine_jobs")
        }
        if "engine_jobs" in inspector.get_table_names()
        else {},
    }


def insert_job(status: str, worker: str | None = "w") -> Callable[[Connection], None]:
    def insert(conn: Connection) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO engine_jobs (id, status, plan_name, payload, created_at, attempts,"
                " max_attempts, worker_id, last_heartbeat, cancel_requested) VALUES"
                " ('01HZZZZZZZZZZZZZZZZZZZZZZZ', :status, 'p', '{}', CURRENT_TIMESTAMP, 0, 1,"
                " :worker, CURRENT_TIMESTAMP, false)"
            ),
            {"status": status, "worker": worker},
        )

    return insert


async def test_0003_allows_exactly_the_job_statuses_and_goes_down_and_up(
    empty_database: str,
) -> None:
    url = empty_database
    await upgrade(url)
    schema = await inspect(url, job_schema)
    assert schema["tables"] == JOB_TABLES
    assert schema["checks"]["ck_engine_jobs_status_allowed"] == {s.value for s in AsyncJobStatus}

    engine = create_engine(parse_url(url))
    await downgrade_to(engine, "test", "0002")
    await engine.dispose()
    assert (await inspect(url, job_schema))["tables"] == set()
    await upgrade(url)
    assert (await inspect(url, job_schema))["tables"] == JOB_TABLES


@pytest.mark.parametrize(
    ("status", "worker"), [("exploded", "w"), ("running", None)], ids=["status", "no-worker"]
)
async def test_check_constraints_refuse_impossible_jobs(
    empty_database: str, status: str, worker: str | None
) -> None:
    await upgrade(empty_database)
    with pytest.raises(sa.exc.IntegrityError):
        await inspect(empty_database, insert_job(status, worker))
    await inspect(empty_database, insert_job("running", "w"))  # the same row, legal
