"""Testing a plan with the engine's pytest plugin (installed with the engine: nothing to set up).

Run: `pytest examples/testing` (needs pytest-asyncio, with `asyncio_mode = "auto"` or the
`@pytest.mark.asyncio` marker).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import release_steps

from engine import Engine, RunState, SubplanState
from engine.testing import ManualClock

PLAN = Path(__file__).parent / "release.yaml"


@pytest.fixture(autouse=True)
def clean_steps() -> None:
    release_steps.built.clear()


async def test_builds_then_fails_to_publish(memory_engine: Engine) -> None:
    result = await memory_engine.run_plan(PLAN)

    assert result.state is RunState.FAILED
    assert result.subplans["build/linux"].result == "linux.whl"
    assert result.subplans["publish"].error == "RuntimeError: registry unavailable"
    # Every run is recorded in the engine's (in-memory) store.
    stored = await memory_engine.get_run(result.run_id)
    assert stored.state is RunState.FAILED


async def test_times_come_from_the_manual_clock(
    memory_engine: Engine, manual_clock: ManualClock
) -> None:
    manual_clock.advance(3600)
    result = await memory_engine.run_plan(PLAN)

    assert result.started_at == manual_clock.now()
    assert result.duration == 0.0  # the clock did not move while the plan ran


async def test_resume_after_the_registry_is_back(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await sqlite_engine.run_plan(PLAN)

    async def publish() -> None:
        return None

    monkeypatch.setattr(release_steps, "publish", publish)
    second = await sqlite_engine.resume(first.run_id)

    assert second.state is RunState.COMPLETED
    assert second.resumed_from == first.run_id
    assert release_steps.built == ["linux", "macos"]  # the builds were not run again
    assert second.subplans["build"].state is SubplanState.COMPLETED
