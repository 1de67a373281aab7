"""What recording a run costs: a 10,000-subplan plan of no-op `call` steps, in memory vs
persisted on SQLite vs persisted on PostgreSQL, all in this one process run.

Each variant runs inside an open `Engine` (opening the store is a one-time cost, left out) and
includes the run's last flush: `run_plan` returns only once the terminal state is stored.
PostgreSQL is measured in a temporary database (created here, dropped at the end) on the server
of `ENGINE_BENCH_POSTGRES_URL`, else `ENGINE_TEST_POSTGRES_URL`, else 127.0.0.1:5432; it is
skipped with a message when no server answers. Goal: SQLite within 2x of memory.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import engine
from engine.app import Engine
from engine.domain.plan import Plan

N = 10_000
CAP = 32
ROUNDS = 3
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def noop() -> None:
    return None


def make_plan() -> Plan:
    subplans = [{"name": f"s{i}", "call": "store_overhead:noop"} for i in range(N)]
    return Plan.model_validate({"name": "bench", "max_parallel": CAP, "subplans": subplans})


async def measure(plan: Plan, settings: engine.Settings, url: str | None) -> list[float]:
    """Seconds per run over ROUNDS runs (after one warm-up), in one open Engine."""
    samples = []
    async with Engine(settings, database_url=url) as eng:
        result = await eng.run_plan(plan)  # warm-up: imports, statement caches
        assert result.ok, result.error
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            result = await eng.run_plan(plan)
            samples.append(time.perf_counter() - t0)
            assert result.ok, result.error
        stored = await eng.store.list_subplans(result.run_id)
        assert len(stored) == N
        assert all(s.state.value == "completed" for s in stored)
    return samples


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str | None]:
    """A temporary database on the PostgreSQL server, upgraded to head; None if unreachable."""
    server = os.environ.get("ENGINE_BENCH_POSTGRES_URL") or os.environ.get(
        "ENGINE_TEST_POSTGRES_URL", DEFAULT_PG
    )
    try:
        import asyncpg
    except ImportError:
        print("PostgreSQL: skipped (asyncpg is not installed: pip install 'engine[postgres]')")
        yield None
        return
    from engine.store import parse_url
    from engine.store.sql import schema
    from engine.store.sql.engine import create_engine

    url = parse_url(server)
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"engine_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL: skipped (no server at {url.render_as_string()}: {exc})")
        yield None
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        bench_url = url.set(database=name)
        sa_engine = create_engine(bench_url)
        await schema.upgrade_to(sa_engine, name)
        await sa_engine.dispose()
        yield bench_url.render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    plan = make_plan()
    with tempfile.TemporaryDirectory() as tmp:
        settings = engine.load_settings(
            environ={}, cwd=Path(tmp), overrides={"data_dir": str(Path(tmp) / "data")}
        )
        results: dict[str, list[float]] = {}
        results["memory"] = await measure(plan, settings, None)
        sqlite_url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        results["sqlite"] = await measure(plan, settings, sqlite_url)
        async with postgres_database() as pg_url:
            if pg_url is not None:
                results["postgresql"] = await measure(plan, settings, pg_url)

    base = statistics.median(results["memory"])
    print(f"{N} no-op call steps, cap {CAP}, median of {ROUNDS} runs in one open Engine")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(
            f"  {name:<11} {median * 1000:8.0f} ms  {median / N * 1e6:6.1f} µs/subplan"
            f"  {median / base:5.2f}x memory"
        )
    print("  goal: sqlite <= 2.00x memory")


if __name__ == "__main__":
    asyncio.run(main())
