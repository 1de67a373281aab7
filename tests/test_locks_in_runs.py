"""Locks enforced by runs, in one process, on every store, with time under the test's control:
`plan:` and `project:` held for a run's life, `--lock-wait`, subplan `resource:` locks that
serialize siblings without holding a slot, and lost locks failing the work clearly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import lockkit
from dbkit import empty_store
from engine import (
    AggregateSubplanError,
    Engine,
    LockConflictError,
    Owner,
    Plan,
    RunState,
    SubplanState,
)
from engine.errors import StoreError
from engine.ports.store import Changes
from engine.prepared import PreparedRun
from engine.testing import ManualClock, hosted, settings_for_test

TTL = 3.0


@pytest.fixture(autouse=True)
def lockkit_state() -> Iterator[None]:
    lockkit.reset()
    yield
    lockkit.reset()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def eng(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Engine]:
    url: str | None = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    settings = settings_for_test(tmp_path, **{"locks.plan_ttl": TTL, "locks.project_ttl": TTL})
    async with hosted(Engine(settings, database_url=url, clock=clock)) as opened:
        await empty_store(opened.store)  # the PostgreSQL database is shared with other tests
        yield opened


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared


def section(name: str, key: str, hold: str | None = None, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"key": key, "me": name}
    if hold is not None:
        args["hold"] = hold
    return {"name": name, "call": "lockkit:section", "with": args, **extra}


def plan(*subplans: dict[str, Any], **data: Any) -> Plan:
    data.setdefault("name", unique("plan"))
    return Plan.model_validate({**data, "subplans": list(subplans)})


async def started(run: PreparedRun, tg: anyio.abc.TaskGroup, step: str) -> None:
    tg.start_soon(run.execute)
    await lockkit.gate(f"{step}:in").wait()


async def test_two_runs_of_one_plan_exclude_each_other(eng: Engine) -> None:
    p = plan(section("work", "p", hold="go"))
    first = eng.prepare_run(p)
    async with anyio.create_task_group() as tg:
        await started(first, tg, "work")
        second = eng.prepare_run(p)
        with pytest.raises(LockConflictError) as caught:
            await second.execute()
        lockkit.gate("go").set()
    error = caught.value
    assert error.resource == f"plan:{p.name}"
    assert error.holder == Owner.of_run(first.run_id).id
    assert f"plan:{p.name} is locked by " in str(error)
    assert first.run_id in str(error)
    assert await eng.store.get_run(second.run_id) is None  # refused before anything ran
    assert first.result().state is RunState.COMPLETED
    assert await eng.locks.list() == []


async def test_lock_wait_runs_the_second_as_soon_as_the_first_is_done(
    eng: Engine, clock: ManualClock
) -> None:
    p = plan(section("work", "p", hold="go"))
    first = eng.prepare_run(p)
    async with anyio.create_task_group() as tg:
        await started(first, tg, "work")
        second = eng.prepare_run(p, lock_wait=60)
        tg.start_soon(second.execute)
        await clock.wait_for_sleepers(2)  # the first run's renewal and the second's backoff
        assert eng.locks.statistics().waited == 1
        assert lockkit.order == ["work+"]
        lockkit.gate("go").set()  # the first completes; its release wakes the second
    assert first.result().state is RunState.COMPLETED
    assert second.result().state is RunState.COMPLETED
    assert lockkit.order == ["work+", "work-", "work+", "work-"]
    assert lockkit.overlaps == []


async def test_a_project_lock_excludes_other_plans_of_the_project(eng: Engine) -> None:
    project = unique("shop")
    first = eng.prepare_run(plan(section("work", "p", hold="go"), project=project))
    async with anyio.create_task_group() as tg:
        await started(first, tg, "work")
        held = {str(lock.resource): lock.owner_id for lock in await eng.locks.list()}
        assert held == {
            f"plan:{first.plan.name}": Owner.of_run(first.run_id).id,
            f"project:{project}": Owner.of_run(first.run_id).id,
        }
        with pytest.raises(LockConflictError, match=f"project:{project} is locked by"):
            await eng.run_plan(plan(section("other", "q"), project=project))
        lockkit.gate("go").set()
    assert lockkit.order == ["work+", "work-"]


async def test_subplan_locks_serialize_siblings_while_an_unlocked_one_runs(eng: Engine) -> None:
    """a and b lock `db`; c locks nothing. With a cap of 2, c can only run while b waits if b
    waits without a slot; c holds a inside until it has looked."""
    p = plan(
        section("a", "db", hold="go", locks=["db"]),
        section("b", "db", locks=["db"]),
        {
            "name": "c",
            "call": "lockkit:look_then_open",
            "with": {"key": "db", "after": "a", "opens": "go", "hold": "checked"},
        },
        max_parallel=2,
    )
    run = eng.prepare_run(p)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.execute)
        await lockkit.gate("looked").wait()
        owners = {str(lock.resource): lock.owner_id for lock in await eng.locks.list()}
        assert owners["resource:db"] == Owner.of_subplan(run.run_id, "a").id
        assert owners[f"plan:{p.name}"] == Owner.of_run(run.run_id).id
        assert run.tracker.subplans["b"].state is SubplanState.PENDING
        lockkit.gate("checked").set()
    assert run.result().state is RunState.COMPLETED
    assert lockkit.seen["db"] == {"a"}  # c ran while a held db ...
    assert "b" not in lockkit.seen["entered"]  # ... and b waited for it, holding no slot
    assert lockkit.overlaps == []
    assert lockkit.order.index("a-") < lockkit.order.index("b+")
    assert run.dispatcher.limiters[""].statistics().peak == 2
    assert await eng.locks.list() == []


async def test_siblings_in_nested_groups_serialize_and_an_ancestor_covers_its_subtree(
    eng: Engine,
) -> None:
    p = plan(
        {
            "name": "g",
            "locks": ["db"],
            "subplans": [section("inner", "db", locks=["db"])],  # covered by g's lock
        },
        {"name": "h", "subplans": [section("other", "db", locks=["db"])]},
        {"name": "i", "subplans": [section("third", "db", locks=["db"])]},
        max_parallel=3,
    )
    result = await eng.run_plan(p)
    assert result.state is RunState.COMPLETED, result.error
    assert lockkit.overlaps == []
    assert len(lockkit.order) == 6


async def test_a_resource_held_by_another_run_fails_the_subplan_after_the_wait(
    eng: Engine,
) -> None:
    other = Owner.named("someone-else")
    await eng.locks.acquire("resource:db", other, 300)
    p = plan(
        section("a", "db", locks=["db"]),
        section("b", "free"),
        failure_mode="continue_on_error",
    )
    result = await eng.run_plan(p)
    assert result.state is RunState.FAILED
    a = result.subplans["a"]
    assert a.state is SubplanState.FAILED
    assert a.error is not None
    assert f"resource:db is locked by {other.id}" in a.error
    assert result.subplans["b"].state is SubplanState.COMPLETED
    assert isinstance(result.exception, AggregateSubplanError)
    (failure,) = result.exception.failures
    assert isinstance(failure.__cause__, LockConflictError)
    assert "a+" not in lockkit.order
    await eng.locks.release("resource:db", other)


async def test_a_subplan_waits_for_another_runs_resource_within_lock_wait(
    eng: Engine, clock: ManualClock
) -> None:
    other = Owner.named("someone-else")
    await eng.locks.acquire("resource:db", other, 300)
    run = eng.prepare_run(plan(section("a", "db", locks=["db"])), lock_wait=60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.execute)
        await clock.wait_for_sleepers(2)  # the plan lock's renewal and a's backoff
        assert lockkit.order == []
        await eng.locks.release("resource:db", other)
    assert run.result().state is RunState.COMPLETED
    assert lockkit.order == ["a+", "a-"]


async def test_renewal_keeps_a_long_runs_lock_past_several_ttls(
    eng: Engine, clock: ManualClock
) -> None:
    p = plan(section("long", "p", hold="go"))
    run = eng.prepare_run(p)
    async with anyio.create_task_group() as tg:
        await started(run, tg, "long")
        for _ in range(int(4 * TTL)):
            await clock.wait_for_sleepers(1)
            clock.advance(1)
        await clock.wait_for_sleepers(1)  # renewed at 4 TTLs, sleeping again
        held = await eng.locks.get(f"plan:{p.name}")
        assert held is not None
        assert held.expires_at > clock.now()
        with pytest.raises(LockConflictError):
            await eng.locks.acquire(f"plan:{p.name}", Owner.named("intruder"), TTL)
        lockkit.gate("go").set()
    assert run.result().state is RunState.COMPLETED


async def test_a_lost_run_lock_fails_the_run_clearly(eng: Engine, clock: ManualClock) -> None:
    p = plan(section("work", "p", hold="never"))
    run = eng.prepare_run(p)
    async with anyio.create_task_group() as tg:
        await started(run, tg, "work")
        await eng.locks.force_release(f"plan:{p.name}")
        await clock.wait_for_sleepers(1)
        clock.advance(TTL / 3)  # the renewal finds the lock gone
    result = run.result()
    assert result.state is RunState.FAILED
    assert result.error is not None
    assert f"lock plan:{p.name} of {Owner.of_run(run.run_id).id} was lost" in result.error
    assert result.subplans["work"].state is SubplanState.CANCELLED
    stored = await eng.get_run(run.run_id)
    assert (stored.state, stored.error) == (RunState.FAILED, result.error)
    assert lockkit.inside["p"] == set()  # the work stopped


async def test_a_lost_resource_lock_fails_its_subplan(eng: Engine, clock: ManualClock) -> None:
    p = plan(section("work", "db", hold="never", locks=["db"]))
    run = eng.prepare_run(p)
    async with anyio.create_task_group() as tg:
        await started(run, tg, "work")
        await eng.locks.force_release("resource:db")
        await clock.wait_for_sleepers(1)  # the engine's renewer, due to renew both locks
        clock.advance(TTL / 3)
    result = run.result()
    assert result.state is RunState.FAILED
    work = result.subplans["work"]
    assert work.state is SubplanState.FAILED
    assert work.error is not None
    assert "lock resource:db of " in work.error
    assert "was lost" in work.error
    assert await eng.locks.list() == []


async def test_fail_fast_cancels_locked_siblings_running_and_waiting(eng: Engine) -> None:
    p = plan(
        section("a", "db", hold="never", locks=["db"]),
        section("b", "db", locks=["db"]),  # waits for a's lock when c fails
        {"name": "c", "call": "lockkit:fail_after", "with": {"after": "a"}},
    )
    result = await eng.run_plan(p)
    assert result.state is RunState.FAILED
    assert result.error is not None
    assert "'c' failed" in result.error
    assert result.subplans["a"].state is SubplanState.CANCELLED
    assert result.subplans["b"].state is SubplanState.CANCELLED
    assert "b+" not in lockkit.order
    assert await eng.locks.list() == []


@pytest.mark.parametrize("first", ["step", "group"])
async def test_a_lock_and_a_nested_group_never_wait_for_each_other_in_a_circle(
    eng: Engine, first: str
) -> None:
    """Cap 1: the group holds the only slot while its subplan wants `db`; the step wants `db`
    and a slot. Whoever waits holds nothing, so both complete, one after the other."""
    step = section("step", "db", locks=["db"])
    group = {"name": "group", "subplans": [section("inner", "db", locks=["db"])]}
    children = [step, group] if first == "step" else [group, step]
    with anyio.fail_after(10):
        result = await eng.run_plan(plan(*children, max_parallel=1))
    assert result.state is RunState.COMPLETED, result.error
    assert lockkit.overlaps == []
    assert sorted(lockkit.order) == ["inner+", "inner-", "step+", "step-"]


async def test_a_runs_locks_are_released_by_the_write_of_its_end(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction records the run's end and frees its `plan:` and `project:` locks; the
    lock service still counts and announces each release."""
    released_alone: list[object] = []
    real_release = eng.store.release_lock

    async def release_lock(*args: Any) -> int | None:
        released_alone.append(args)
        return await real_release(*args)

    monkeypatch.setattr(eng.store, "release_lock", release_lock)
    before = eng.locks.statistics().released
    result = await eng.run_plan(plan(section("a", "k"), project=unique("shop")))
    assert result.state is RunState.COMPLETED
    assert released_alone == []
    assert await eng.locks.list() == []
    assert eng.locks.statistics().released - before == 2


async def test_a_run_whose_end_cannot_be_written_still_frees_its_locks(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = eng.store.write

    async def write(changes: Changes) -> None:
        if changes.releases:
            raise StoreError("the disk is full")
        await real_write(changes)

    monkeypatch.setattr(eng.store, "write", write)
    with pytest.raises(StoreError):
        await eng.run_plan(plan(section("a", "k")))
    assert await eng.locks.list() == []  # released on its own by the hold
