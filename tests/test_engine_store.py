"""The store through the public API: `Engine()` records in memory, `Engine(database_url=...)`
in a database that outlives it, and `resume` reruns only what did not complete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine
import storesteps
from engine import Engine, Plan, RunState, SubplanState
from engine.errors import InputError, RunNotFoundError
from engine.testing import ManualClock, settings_for_test


@pytest.fixture(autouse=True)
def steps() -> Iterator[None]:
    storesteps.reset()
    yield
    storesteps.reset()


def call(step: str, target: str, /, **kwargs: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": step, "call": f"storesteps:{target}"}
    if kwargs:
        data["with"] = kwargs
    return data


def write_plan(path: Path, *, fail: bool) -> Path:
    """A plan file: `b` fails while `fail`; `a` and the group `g` always complete."""
    path.write_text(
        "name: resumable\n"
        "failure_mode: continue_on_error\n"
        "max_parallel: 2\n"
        "subplans:\n"
        "  - {name: a, call: 'storesteps:count', with: {name: a}}\n"
        f"  - {{name: b, call: 'storesteps:{'fail' if fail else 'count'}', "
        f"with: {{{'message: nope' if fail else 'name: b'}}}}}\n"
        "  - name: g\n"
        "    subplans:\n"
        "      - {name: x, call: 'storesteps:count', with: {name: x}}\n"
        "      - {name: y, call: 'storesteps:count', with: {name: y}, needs: [x]}\n"
        "  - {name: c, call: 'storesteps:count', with: {name: c}, needs: [b]}\n",
        encoding="utf-8",
    )
    return path


async def test_an_engine_without_url_records_in_memory(tmp_path: Path) -> None:
    clock = ManualClock()
    async with Engine(settings_for_test(tmp_path), clock=clock) as eng:
        result = await eng.run_plan(
            Plan.model_validate({"name": "m", "subplans": [call("a", "noop")]})
        )
        run = await eng.get_run(result.run_id)
        assert [r.id for r in await eng.store.list_runs()] == [result.run_id]
    assert eng.store.location == "memory"
    assert run.state is RunState.COMPLETED
    assert run.created_at == clock.now()
    assert run.started_at == clock.now()
    assert run.plan_source is None


async def test_a_database_outlives_the_engine(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    plan = Plan.model_validate({"name": "kept", "subplans": [call("a", "noop")]})
    async with Engine(settings_for_test(tmp_path), database_url=url) as eng:
        result = await eng.run_plan(plan)
    async with Engine(settings_for_test(tmp_path), database_url=url) as eng:
        run = await eng.get_run(result.run_id)
        subplans = await eng.store.list_subplans(result.run_id)
        events = await eng.store.list_events(result.run_id)
    assert run.plan_name == "kept"
    assert run.state is RunState.COMPLETED
    assert [(s.path, s.state) for s in subplans] == [("a", SubplanState.COMPLETED)]
    assert [e.type for e in events] == ["run.state", "subplan.state", "subplan.state", "run.state"]


async def test_unknown_run_ids_are_not_found(tmp_path: Path) -> None:
    async with Engine(settings_for_test(tmp_path)) as eng:
        with pytest.raises(RunNotFoundError, match="no run 'nope' in memory") as caught:
            await eng.get_run("nope")
        with pytest.raises(RunNotFoundError):
            await eng.resume("nope")
    assert caught.value.exit_code == 2


async def test_resume_reruns_only_what_did_not_complete(tmp_path: Path) -> None:
    path = write_plan(tmp_path / "plan.yaml", fail=True)
    async with Engine(settings_for_test(tmp_path)) as eng:
        first = await eng.run_plan(path)
        assert first.state is RunState.FAILED
        assert dict(storesteps.calls) == {"a": 1, "x": 1, "y": 1}

        write_plan(path, fail=False)  # a changed file: the stored plan wins
        prepared = await eng.prepare_resume(first.run_id)
        assert prepared.resume is not None
        assert prepared.resume.kept == {"a", "g", "g/x", "g/y"}
        assert any("changed since run" in note for note in prepared.resume.notes)
        second = await prepared.execute()

        assert second.resumed_from == first.run_id
        assert dict(storesteps.calls) == {"a": 1, "x": 1, "y": 1}  # nothing kept ran again
        assert {p: s.state.value for p, s in second.subplans.items()} == {
            "a": "completed",
            "b": "failed",
            "g": "completed",
            "g/x": "completed",
            "g/y": "completed",
            "c": "skipped",
        }
        stored = await eng.get_run(second.run_id)
        assert stored.resumed_from == first.run_id
        # The global level of the first run (the plan's own values stay in the plan).
        assert (stored.max_parallel, stored.failure_mode) == (4, engine.FailureMode.FAIL_FAST)


async def test_resume_with_an_unchanged_file_runs_the_file(tmp_path: Path) -> None:
    path = write_plan(tmp_path / "plan.yaml", fail=True)
    async with Engine(settings_for_test(tmp_path)) as eng:
        first = await eng.run_plan(path)
        storesteps.calls.clear()
        prepared = await eng.prepare_resume(first.run_id)
        assert prepared.resume is not None
        assert prepared.resume.notes == ()
        assert prepared.plan.source == path.resolve()
        second = await prepared.execute()
    assert second.state is RunState.FAILED
    assert dict(storesteps.calls) == {}  # only b ran (and failed again); c was skipped again


async def test_resume_of_a_vanished_plan_file_uses_the_stored_plan(tmp_path: Path) -> None:
    path = write_plan(tmp_path / "plan.yaml", fail=True)
    async with Engine(settings_for_test(tmp_path)) as eng:
        first = await eng.run_plan(path)
        path.unlink()
        prepared = await eng.prepare_resume(first.run_id)
        assert prepared.resume is not None
        assert any("is gone" in note for note in prepared.resume.notes)
        assert prepared.plan.source == path.resolve()
        second = await prepared.execute()
    assert second.subplans["b"].state is SubplanState.FAILED
    assert second.subplans["a"].state is SubplanState.COMPLETED


async def test_resume_keeps_the_cap_and_failure_mode_of_the_first_run(tmp_path: Path) -> None:
    plan = Plan.model_validate({"name": "p", "subplans": [call("a", "noop"), call("b", "fail")]})
    async with Engine(settings_for_test(tmp_path)) as eng:
        first = await eng.run_plan(plan, max_parallel=3, failure_mode="continue_on_error")
        prepared = await eng.prepare_resume(first.run_id)
        assert prepared.defaults.max_parallel == 3
        assert prepared.defaults.failure_mode is engine.FailureMode.CONTINUE_ON_ERROR
        overridden = await eng.prepare_resume(first.run_id, max_parallel=1)
        assert overridden.defaults.max_parallel == 1


async def test_a_completed_run_has_nothing_to_resume(tmp_path: Path) -> None:
    plan = Plan.model_validate({"name": "p", "subplans": [call("a", "noop")]})
    async with Engine(settings_for_test(tmp_path)) as eng:
        first = await eng.run_plan(plan)
        with pytest.raises(InputError, match="nothing to resume"):
            await eng.resume(first.run_id)


async def test_a_resumed_run_can_be_resumed_again(tmp_path: Path) -> None:
    plan = Plan.model_validate(
        {
            "name": "p",
            "failure_mode": "continue_on_error",
            "subplans": [call("a", "count", name="a"), call("b", "fail")],
        }
    )
    async with Engine(settings_for_test(tmp_path)) as eng:
        first = await eng.run_plan(plan)
        second = await eng.resume(first.run_id)
        third = await eng.resume(second.run_id)
    assert third.resumed_from == second.run_id
    assert third.subplans["a"].state is SubplanState.COMPLETED
    assert storesteps.calls["a"] == 1


def test_module_level_run_plan_still_works(tmp_path: Path) -> None:
    import anyio

    plan = Plan.model_validate({"name": "p", "subplans": [call("a", "noop")]})
    result = anyio.run(lambda: engine.run_plan(plan, settings=settings_for_test(tmp_path)))
    assert result.ok
