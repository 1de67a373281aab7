"""`engine.testing`: the pytest plugin's fixtures, ManualClock and `hosted`, and the example."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from engine import Engine, Plan, RunState
from engine.store.sql import SqlStore
from engine.testing import EPOCH, ManualClock, hosted

ROOT = Path(__file__).parent.parent
PLAN = Plan.model_validate({"name": "t", "subplans": [{"name": "a", "call": "storesteps:noop"}]})


async def test_memory_engine_is_open_in_memory_on_the_manual_clock(
    memory_engine: Engine, manual_clock: ManualClock, tmp_path: Path
) -> None:
    assert memory_engine.is_open
    assert memory_engine.clock is manual_clock
    assert memory_engine.store.location == "memory"
    assert Path(memory_engine.settings.data_dir) == tmp_path / ".engine"
    result = await memory_engine.run_plan(PLAN)
    assert (await memory_engine.get_run(result.run_id)).created_at == EPOCH


async def test_sqlite_engine_records_in_a_file_of_the_test(
    sqlite_engine: Engine, sqlite_url: str, tmp_path: Path
) -> None:
    assert sqlite_url == f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    assert isinstance(sqlite_engine.store, SqlStore)
    result = await sqlite_engine.run_plan(PLAN)
    assert (await sqlite_engine.get_run(result.run_id)).state is RunState.COMPLETED
    assert (tmp_path / "engine.db").is_file()


async def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock(datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC))
    assert clock.monotonic() == 0.0
    clock.advance(1.5)
    assert clock.now() == datetime(2031, 5, 6, 7, 8, 10, 500000, tzinfo=UTC)
    assert clock.monotonic() == 1.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2031, 1, 1))


async def test_sleepers_wake_when_their_time_comes_in_order() -> None:
    clock = ManualClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 10)
        tg.start_soon(sleeper, "early", 5)
        await clock.wait_for_sleepers(2)
        clock.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        clock.advance(0.1)
        await anyio.wait_all_tasks_blocked()
        assert woke == ["early"]
        clock.advance(timedelta(hours=1).total_seconds())
    assert woke == ["early", "late"]
    assert clock.sleepers == 0


async def test_a_cancelled_sleeper_leaves_the_clock() -> None:
    clock = ManualClock()
    with anyio.move_on_after(0):
        await clock.sleep(10)
    assert clock.sleepers == 0
    await clock.sleep(0)  # no time to wait: returns at once


async def test_hosted_raises_what_entering_raised() -> None:
    @asynccontextmanager
    async def broken() -> AsyncIterator[None]:
        raise RuntimeError("cannot enter")
        yield

    with pytest.raises(RuntimeError, match="cannot enter"):
        async with hosted(broken()):
            pass


def test_the_documented_example_passes() -> None:
    example = ROOT / "examples" / "testing"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"),
            *("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"),
            *("-c", "/dev/null", "--rootdir", str(example), str(example)),
        ],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
