"""What locks cost: acquire+release pairs per second on memory, SQLite and PostgreSQL, and the
time a locked run adds over an unlocked one, all measured in this one process run.

1. `LockService.acquire` + `release` of one resource by one owner, back to back (each is one
   autocommit statement on the SQL stores). PERFORMANCE.md measured 457/s (SQLite) and 301/s
   (PostgreSQL) for a TTL lock acquire + release through SQLAlchemy async.
2. A small plan (20 no-op `call` steps, cap 4) run again and again in one open Engine:
   - unlocked: no lock at all (the run's `plan:` lock switched off for this measurement only,
     by replacing `engine.prepared.run_claims`);
   - run locks: what every run holds, `plan:<name>` and `project:<project>`;
   - + resource locks: and each of the 20 subplans declares `locks: [r<i>]`.
   Ratios are against the unlocked variant on the same store.

PostgreSQL is measured in a temporary database (see store_overhead.py); it is skipped with a
message when no server answers.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import engine
import engine.prepared
from engine.app import Engine
from engine.domain.lock import Owner
from engine.domain.plan import Plan

PAIRS = {"memory": 20_000, "sqlite": 1_000, "postgresql": 1_000}
RUNS = 30
STEPS = 20
ROUNDS = 3


async def noop() -> None:
    return None


def make_plan(*, resource_locks: bool) -> Plan:
    subplans: list[dict[str, Any]] = []
    for i in range(STEPS):
        step: dict[str, Any] = {"name": f"s{i}", "call": "lock_overhead:noop"}
        if resource_locks:
            step["locks"] = [f"r{i}"]
        subplans.append(step)
    data = {"name": "bench", "project": "bench", "max_parallel": 4, "subplans": subplans}
    return Plan.model_validate(data)


@contextmanager
def without_run_locks() -> Iterator[None]:
    original = engine.prepared.run_claims
    engine.prepared.run_claims = lambda plan, settings: []
    try:
        yield
    finally:
        engine.prepared.run_claims = original


async def pairs_per_second(settings: engine.Settings, url: str | None, pairs: int) -> float:
    async with Engine(settings, database_url=url) as eng:
        locks, owner = eng.locks, Owner.named("bench")
        for _ in range(10):  # warm-up: statement caches, connections
            await locks.acquire("resource:bench", owner, 60)
            await locks.release("resource:bench", owner)
        samples = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for _ in range(pairs):
                await locks.acquire("resource:bench", owner, 60)
                await locks.release("resource:bench", owner)
            samples.append(pairs / (time.perf_counter() - t0))
    return statistics.median(samples)


async def run_times(settings: engine.Settings, url: str | None) -> dict[str, float]:
    """Median seconds per run of each variant, interleaved round by round (noise hits all)."""
    plain, locked = make_plan(resource_locks=False), make_plan(resource_locks=True)
    variants = {"unlocked": plain, "run locks": plain, "+ resource locks": locked}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    async with Engine(settings, database_url=url) as eng:
        for name, plan in variants.items():  # warm-up
            with without_run_locks() if name == "unlocked" else _nothing():
                assert (await eng.run_plan(plan)).ok
        for _ in range(ROUNDS):
            for name, plan in variants.items():
                with without_run_locks() if name == "unlocked" else _nothing():
                    t0 = time.perf_counter()
                    for _ in range(RUNS):
                        result = await eng.run_plan(plan)
                        assert result.ok, result.error
                    samples[name].append((time.perf_counter() - t0) / RUNS)
        assert await eng.locks.list() == []
    return {name: statistics.median(values) for name, values in samples.items()}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


async def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from store_overhead import postgres_database

    with tempfile.TemporaryDirectory() as tmp:
        settings = engine.load_settings(
            environ={}, cwd=Path(tmp), overrides={"data_dir": str(Path(tmp) / "data")}
        )
        urls: dict[str, str | None] = {
            "memory": None,
            "sqlite": f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
        }
        pairs: dict[str, float] = {}
        runs: dict[str, dict[str, float]] = {}
        async with postgres_database() as pg_url:
            if pg_url is not None:
                urls["postgresql"] = pg_url
            for store, url in urls.items():
                pairs[store] = await pairs_per_second(settings, url, PAIRS[store])
                runs[store] = await run_times(settings, url)

    print("acquire + release of one lock, back to back (median of 3 rounds)")
    for store, rate in pairs.items():
        print(f"  {store:<11} {rate:9.0f} pairs/s  {1e6 / rate:8.1f} µs/pair")
    print(f"\na run of {STEPS} no-op call steps, cap 4 (median of {ROUNDS} rounds x {RUNS} runs)")
    for store, times in runs.items():
        base = times["unlocked"]
        cells = "  ".join(
            f"{name} {t * 1000:6.2f} ms ({t / base:4.2f}x, +{(t - base) * 1000:5.2f} ms)"
            for name, t in times.items()
        )
        print(f"  {store:<11} {cells}")


if __name__ == "__main__":
    asyncio.run(main())
