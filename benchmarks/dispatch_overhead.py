"""Per-subplan overhead of `engine.dispatch` and of a plan run, against raw asyncio.

Everything is measured in this one process run, so ratios are meaningful even on a noisy
machine. Baseline: `asyncio.TaskGroup` + `asyncio.Semaphore`, N no-op coroutines, cap 32.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import engine
from engine.domain.plan import Plan

N = 10_000
CAP = 32
ROUNDS = 5


async def noop() -> None:
    return None


async def raw_baseline() -> None:
    sem = asyncio.Semaphore(CAP)

    async def guarded() -> None:
        async with sem:
            await noop()

    async with asyncio.TaskGroup() as tg:
        for _ in range(N):
            tg.create_task(guarded())


async def engine_dispatch() -> None:
    await engine.dispatch([noop] * N, max_parallel=CAP)


async def engine_dispatch_observed() -> None:
    seen = 0

    def on_event(_: engine.Event) -> None:
        nonlocal seen
        seen += 1

    await engine.dispatch([noop] * N, max_parallel=CAP, on_event=on_event)


def make_plan() -> Plan:
    subplans = [{"name": f"s{i}", "call": "dispatch_overhead:noop"} for i in range(N)]
    return Plan.model_validate({"name": "bench", "max_parallel": CAP, "subplans": subplans})


async def plan_run(plan: Plan) -> None:
    result = await engine.run_plan(plan)
    assert result.ok, result.error


def measure(fn: Callable[[], Awaitable[None]]) -> float:
    """Median µs per task over ROUNDS runs (after one warm-up)."""
    asyncio.run(fn())  # type: ignore[arg-type]
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        asyncio.run(fn())  # type: ignore[arg-type]
        samples.append((time.perf_counter() - t0) / N * 1e6)
    return statistics.median(samples)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    plan = make_plan()
    base = measure(raw_baseline)
    fast = measure(engine_dispatch)
    observed = measure(engine_dispatch_observed)
    planned = measure(lambda: plan_run(plan))
    print(f"N={N} no-op coroutines, cap {CAP}, median of {ROUNDS} runs (µs per task)")
    print(f"  raw TaskGroup + Semaphore      {base:8.1f}  1.00x")
    print(f"  engine.dispatch                {fast:8.1f}  {fast / base:.2f}x  (target <= 1.5x)")
    print(f"  engine.dispatch + on_event     {observed:8.1f}  {observed / base:.2f}x")
    print(f"  engine.run_plan, {N} call steps {planned:8.1f}  {planned / base:.2f}x")


if __name__ == "__main__":
    main()
