"""The chaos suite (tests/reliability/chaos.py) at a small size: worker processes SIGKILLed while
they run jobs; every job ends succeeded, none is lost, none runs twice at once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from engine.store import open_store, upgrade
from reliability.chaos import ChaosConfig, run_chaos

SMALL = ChaosConfig(
    jobs=40,
    workers=2,
    max_kills=2,
    kill_every=(0.3, 0.8),
    heartbeat_interval=0.2,
    stuck_after=2.0,
    plan_ttl=2.0,
    deadline=45.0,
    seed=7,
)


def assert_clean(report_text: str, figures: dict[str, object]) -> None:
    assert figures["kills"] == SMALL.max_kills, report_text
    assert (figures["lost"], figures["duplicates"]) == (0, 0), report_text
    assert isinstance(figures["rescued"], int)
    assert figures["rescued"] >= 1, report_text  # the kills landed mid-job
    # Nothing else worth a warning happened (each rescue is logged as one).
    assert figures["worker warnings"] == figures["rescued"], report_text


def test_killed_workers_lose_no_job_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    report = run_chaos(url, "SQLite", tmp_path, SMALL)
    assert report.ok, str(report)
    assert_clean(str(report), report.figures)


@pytest.mark.postgres
def test_killed_workers_lose_no_job_on_postgresql(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    url = postgres_database()
    anyio.run(upgrade, url)
    report = run_chaos(url, "PostgreSQL", tmp_path, SMALL)
    assert report.ok, str(report)
    assert_clean(str(report), report.figures)


@pytest.mark.postgres
async def test_a_worker_that_stops_listening_logs_no_lost_connection(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the chaos suite: every clean shutdown of a worker on PostgreSQL warned "the
    LISTEN connection closed; polling only" (the pool's disposal called the loss listener)."""
    store = await open_store(postgres_url)
    try:
        async with store.job_notifications(lambda: None) as listening:
            assert listening
    finally:
        await store.close()
    for _ in range(5):  # asyncpg calls its termination listeners soon, not at once
        await anyio.lowlevel.checkpoint()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
