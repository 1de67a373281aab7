"""Delegation through `Engine`: background plans are recorded in the engine's store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

import engine
from engine import DelegationRejected, DelegationState, Plan, RunState
from engine.testing import settings_for_test


def plan_of(*steps: dict[str, object]) -> Plan:
    return Plan.model_validate({"name": "bg", "subplans": list(steps)})


async def test_delegated_plan_completes_and_is_recorded(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    async with engine.Engine(settings_for_test(tmp_path), database_url=url) as eng:
        handle = eng.delegate(
            plan_of({"name": "a", "call": "stepkit:value", "with": {"x": 3}}),
            goal="compute in the background",
            context={"ticket": 7},
        )
        done = await anext(aiter(eng.completions()))
        assert done.delegation_id == handle.id
        assert done.status is DelegationState.SUCCEEDED
        assert done.context == {"ticket": 7}
        result = done.result
        assert isinstance(result, engine.RunResult)
        record = await eng.get_run(result.run_id)
        assert record.state is RunState.COMPLETED
        assert eng.delegation_statistics().completed == 1


async def test_capacity_rejects_and_close_cancels_and_records(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    settings = engine.DelegationSettings(max_concurrent_delegations=1)
    gate = anyio.Event()

    async def blocked() -> None:
        await gate.wait()

    before = asyncio.all_tasks()
    async with engine.Engine(
        settings_for_test(tmp_path), database_url=url, delegation=settings
    ) as eng:
        handle = eng.delegate(
            plan_of({"name": "w", "call": "stepkit:wait_forever", "with": {"name": "w"}}),
            goal="never ends",
        )
        with pytest.raises(DelegationRejected, match="1 of 1"):
            eng.delegate(blocked, goal="one too many")
        await anyio.wait_all_tasks_blocked()
        running = [d for d in eng.delegations() if d.id == handle.id]
        assert running
    # Closing the engine cancelled the delegated run; its final state was still recorded.
    assert handle.state is DelegationState.CANCELLED
    async with engine.Engine(settings_for_test(tmp_path), database_url=url) as eng2:
        runs = await eng2.store.list_runs(limit=10)
        assert [r.state for r in runs] == [RunState.CANCELLED]
    assert asyncio.all_tasks() <= before | {asyncio.current_task()}
