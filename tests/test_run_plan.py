"""`engine.run_plan`: plans of run/call steps and groups, through the public API."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import engine
import stepkit
from engine import Event, Plan, RunState, SubplanState, SubplanStateChanged
from engine.domain.events import LockEvent
from engine.errors import AggregateSubplanError, InvalidTransitionError, SubplanExecutionError

PY = sys.executable


@pytest.fixture(autouse=True)
def stepkit_state() -> Iterator[None]:
    stepkit.reset()
    yield
    stepkit.reset()


@pytest.fixture
def settings(tmp_path: Path) -> engine.Settings:
    return engine.load_settings(
        environ={"ENGINE_DATA_DIR": str(tmp_path / "data"), "ENGINE_RETRY_BACKOFF": "0"},
        cwd=tmp_path,
    )


def plan(**data: Any) -> Plan:
    data.setdefault("name", "t")
    return Plan.model_validate(data)


def call(step_name: str, target: str, /, **kwargs: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": step_name, "call": f"stepkit:{target}"}
    if kwargs:
        step["with"] = kwargs
    return step


async def run(p: Plan, settings: engine.Settings, **kw: Any) -> engine.RunResult:
    return await engine.run_plan(p, settings=settings, **kw)


def states(result: engine.RunResult) -> dict[str, str]:
    return {path: sub.state.value for path, sub in result.subplans.items()}


async def test_call_steps_complete_with_results(settings: engine.Settings) -> None:
    result = await run(
        plan(subplans=[call("a", "value", x=1), call("b", "sync_add", a=2, b=3)]), settings
    )
    assert result.ok
    assert result.state is RunState.COMPLETED
    assert result.subplans["a"].result == 1
    assert result.subplans["b"].result == 5
    assert result.subplans["a"].attempts == 1


async def test_plan_cap_respected_and_reached(settings: engine.Settings) -> None:
    steps = [call(f"s{i}", "probe", group="top", hold="full", until=3) for i in range(9)]
    result = await run(plan(max_parallel=3, subplans=steps), settings)
    assert result.ok
    assert stepkit.peak["top"] == 3


async def test_nested_group_has_its_own_cap_and_counts_as_one(settings: engine.Settings) -> None:
    inner = [call(f"i{i}", "probe", group="inner", hold="inner-full", until=2) for i in range(6)]
    outer = [call(f"o{i}", "probe", group="outer", hold="outer-full", until=1) for i in range(3)]
    p = plan(
        max_parallel=2,
        subplans=[{"name": "g", "max_parallel": 2, "subplans": inner}, *outer],
    )
    result = await run(p, settings)
    assert result.ok
    assert stepkit.peak["inner"] == 2
    # The group takes one of the plan's two slots, so at most one outer step runs beside it.
    assert stepkit.peak["outer"] == 1


async def test_cli_level_cap_is_below_plan_value(settings: engine.Settings) -> None:
    steps = [call(f"s{i}", "probe", group="p", hold="g", until=2) for i in range(4)]
    result = await run(plan(max_parallel=2, subplans=steps), settings, max_parallel=1)
    assert result.ok
    assert stepkit.peak["p"] == 2  # the plan's own value beats the global one


async def test_needs_order_and_skip_transitively(settings: engine.Settings) -> None:
    p = plan(
        failure_mode="continue_on_error",
        subplans=[
            call("a", "fail"),
            {**call("b", "noop"), "needs": ["a"]},
            {**call("c", "noop"), "needs": ["b"]},
            call("d", "noop"),
            {**call("e", "noop"), "needs": ["d"]},
        ],
    )
    result = await run(p, settings)
    assert result.state is RunState.FAILED
    assert states(result) == {
        "a": "failed",
        "b": "skipped",
        "c": "skipped",
        "d": "completed",
        "e": "completed",
    }
    assert "needs 'a'" in (result.subplans["b"].error or "")
    with pytest.raises(AggregateSubplanError):
        result.raise_for_state()


async def test_fail_fast_cancels_running_and_pending_siblings(settings: engine.Settings) -> None:
    p = plan(
        max_parallel=2,
        subplans=[
            call("boom", "fail_when_open", name="go"),
            call("slow", "open_gate_and_wait", name="go", me="slow"),
            call("later", "noop"),
        ],
    )
    result = await run(p, settings)
    assert result.state is RunState.FAILED
    assert states(result) == {"boom": "failed", "slow": "cancelled", "later": "cancelled"}
    assert stepkit.cancelled == ["slow"]
    assert isinstance(result.exception, SubplanExecutionError)
    assert result.exception.path == "boom"
    assert "go failed on purpose" in (result.error or "")


async def test_failure_in_nested_group_names_the_leaf(settings: engine.Settings) -> None:
    p = plan(subplans=[{"name": "g", "subplans": [{"name": "h", "subplans": [call("x", "fail")]}]}])
    result = await run(p, settings)
    assert states(result) == {"g": "failed", "g/h": "failed", "g/h/x": "failed"}
    assert isinstance(result.exception, SubplanExecutionError)
    assert result.exception.path == "g/h/x"


async def test_retries_then_success(settings: engine.Settings) -> None:
    events: list[Event] = []
    p = plan(subplans=[{**call("flaky", "fail_times", key="k", times=2), "retries": 3}])
    result = await run(p, settings, on_event=events.append)
    assert result.ok
    assert result.subplans["flaky"].attempts == 3
    assert [e.type for e in events].count("subplan.retry") == 2


async def test_retries_exhausted(settings: engine.Settings) -> None:
    p = plan(subplans=[{**call("flaky", "fail_times", key="k", times=5), "retries": 1}])
    result = await run(p, settings)
    assert result.subplans["flaky"].state is SubplanState.FAILED
    assert result.subplans["flaky"].attempts == 2
    assert "attempt 2 of k failed" in (result.subplans["flaky"].error or "")


async def test_step_timeout_fails_the_attempt(settings: engine.Settings) -> None:
    p = plan(subplans=[{**call("stuck", "wait_forever", name="stuck"), "timeout": 0.05}])
    result = await run(p, settings)
    assert result.subplans["stuck"].state is SubplanState.FAILED
    assert result.subplans["stuck"].error == "timed out after 0.05s"
    assert stepkit.cancelled == ["stuck"]


async def test_plan_timeout_fails_the_run(settings: engine.Settings) -> None:
    p = plan(timeout=0.05, subplans=[call("stuck", "wait_forever", name="stuck")])
    result = await run(p, settings)
    assert result.state is RunState.FAILED
    assert result.error == "plan timed out after 0.05s"
    assert result.subplans["stuck"].state is SubplanState.CANCELLED


async def test_group_timeout(settings: engine.Settings) -> None:
    p = plan(
        subplans=[
            {"name": "g", "timeout": 0.05, "subplans": [call("x", "wait_forever", name="x")]},
        ]
    )
    result = await run(p, settings)
    assert states(result) == {"g": "failed", "g/x": "cancelled"}
    assert result.subplans["g"].error == "timed out after 0.05s"


async def test_call_import_errors_fail_the_step(settings: engine.Settings) -> None:
    p = plan(
        failure_mode="continue_on_error",
        subplans=[
            {"name": "a", "call": "no_such_module_xyz:f"},
            {"name": "b", "call": "stepkit:no_such_function"},
        ],
    )
    result = await run(p, settings)
    assert "cannot import 'no_such_module_xyz'" in (result.subplans["a"].error or "")
    assert "has no 'no_such_function'" in (result.subplans["b"].error or "")


async def test_call_exception_traceback_goes_to_log(settings: engine.Settings) -> None:
    result = await run(plan(subplans=[call("x", "fail", message="kaput")]), settings)
    sub = result.subplans["x"]
    assert sub.error == "RuntimeError: kaput"
    assert sub.log_path is not None
    assert "Traceback" in Path(sub.log_path).read_text()


async def test_run_steps_argv_shell_env_cwd_and_tail(
    settings: engine.Settings, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    p = plan(
        failure_mode="continue_on_error",
        env={"FROM_PLAN": "p", "NUM": 7},
        subplans=[
            {"name": "argv", "run": [PY, "-c", "import os; print(os.getcwd())"], "cwd": "sub"},
            {
                "name": "shell",
                "run": 'echo "$FROM_PLAN $FROM_STEP $NUM $ENGINE_SUBPLAN_PATH"; echo second',
                "env": {"FROM_STEP": "s"},
            },
            {"name": "bad", "run": "echo about to fail; exit 4", "needs": ["shell"]},
        ],
    ).with_source(tmp_path / "plan.yaml")
    result = await run(p, settings)
    assert result.subplans["argv"].output_tail == str(tmp_path / "sub")
    assert result.subplans["shell"].output_tail == "p s 7 shell\nsecond"
    bad = result.subplans["bad"]
    assert bad.state is SubplanState.FAILED
    assert bad.error == "exit code 4"
    assert bad.output_tail == "about to fail"
    assert bad.log_path is not None
    assert Path(bad.log_path).read_text() == "about to fail\n"


async def test_missing_program_is_a_step_failure(settings: engine.Settings) -> None:
    result = await run(plan(subplans=[{"name": "x", "run": ["no-such-program-xyz"]}]), settings)
    assert "cannot start no-such-program-xyz" in (result.subplans["x"].error or "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def _until_dead(pids: list[int]) -> None:
    """SIGKILL was sent when the step ended; delivery and reaping take a moment (deadline poll)."""
    with anyio.fail_after(5):
        while any(_alive(pid) for pid in pids):  # noqa: ASYNC110 - another process
            await anyio.sleep(0.01)


@pytest.mark.parametrize("ending", ["timeout", "fail_fast"])
async def test_process_group_killed_with_background_children(
    settings: engine.Settings, tmp_path: Path, ending: str
) -> None:
    pidfile = tmp_path / "pids"
    spawner = {
        "name": "spawner",
        "run": f"sleep 60 & echo $! >> {pidfile}; echo $$ >> {pidfile}; wait",
    }
    if ending == "timeout":
        spawner["timeout"] = 0.5
        steps = [spawner]
    else:
        steps = [
            spawner,
            {
                "name": "failer",
                "run": f"while [ ! -s {pidfile} ] || [ $(wc -l < {pidfile}) -lt 2 ]; "
                "do sleep 0.01; done; exit 1",
            },
        ]
    result = await run(plan(subplans=steps), engine.Settings(kill_grace=2, data_dir=str(tmp_path)))
    assert result.state is RunState.FAILED
    pids = [int(x) for x in pidfile.read_text().split()]
    assert len(pids) == 2
    await _until_dead(pids)


async def test_background_leftovers_are_killed_after_success(
    settings: engine.Settings, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    p = plan(subplans=[{"name": "x", "run": f"sleep 60 & echo $! > {pidfile}"}])
    result = await run(p, settings)
    assert result.ok
    await _until_dead([int(pidfile.read_text())])


async def test_engine_events_subscription_sees_every_transition(
    settings: engine.Settings,
) -> None:
    async with engine.Engine(settings) as eng:
        with eng.events() as stream:
            result = await eng.run_plan(plan(subplans=[call("a", "noop"), call("b", "noop")]))
            seen: list[Event] = []
            while True:
                try:
                    seen.append(stream.receive_nowait())
                except anyio.WouldBlock:
                    break
    assert result.ok
    assert [e.type for e in seen if isinstance(e, LockEvent)] == ["lock.acquired", "lock.released"]
    seen = [e for e in seen if not isinstance(e, LockEvent)]
    assert [e.type for e in seen] == ["run.state"] + ["subplan.state"] * 4 + ["run.state"]
    assert [e.seq for e in seen] == list(range(1, 7))
    assert {e.run_id for e in seen} == {result.run_id}
    finals = {e.path: e.to for e in seen if isinstance(e, SubplanStateChanged)}
    assert finals == {"a": SubplanState.COMPLETED, "b": SubplanState.COMPLETED}


def test_tracker_rejects_illegal_transitions() -> None:
    tracker = engine.SubplanTracker("r", "p", [("a", "call")], clock=engine.SystemClock())
    tracker.transition("a", SubplanState.RUNNING)
    tracker.transition("a", SubplanState.COMPLETED)
    with pytest.raises(InvalidTransitionError, match="completed -> running"):
        tracker.transition("a", SubplanState.RUNNING)
    tracker2 = engine.SubplanTracker("r", "p", [("a", "call")], clock=engine.SystemClock())
    with pytest.raises(InvalidTransitionError, match="pending -> completed"):
        tracker2.transition("a", SubplanState.COMPLETED)
