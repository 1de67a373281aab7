"""Write-behind recording: batched writes, terminal states durable before `execute()` returns,
flushed on cancellation, retried after a failed write, and nothing run without a store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import storesteps
from engine.app import Engine
from engine.dispatch.tracker import SubplanTracker
from engine.domain.plan import Plan
from engine.domain.states import FailureMode, RunState, SubplanState
from engine.errors import StoreError
from engine.ports.clock import SystemClock
from engine.ports.store import Changes, RunRecord
from engine.recorder import Recorder, _Recording
from engine.store import MemoryStore
from engine.testing import settings_for_test


@pytest.fixture(autouse=True)
def steps() -> Iterator[None]:
    storesteps.reset()
    yield
    storesteps.reset()


class ObservedStore(MemoryStore):
    """A MemoryStore whose writes can be counted, failed, and waited for."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Changes] = []
        #: Fail every write while set; or fail only the next `fail_next` writes.
        self.failing = False
        self.fail_next = 0
        self.written = anyio.Event()
        self.failed = anyio.Event()

    async def write(self, changes: Changes) -> None:
        if self.failing or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            self.failed.set()
            raise StoreError("observed: the disk is on fire")
        await super().write(changes)
        self.writes.append(changes)
        written, self.written = self.written, anyio.Event()
        written.set()


def plan(*subplans: dict[str, Any], **fields: Any) -> Plan:
    return Plan.model_validate({"name": "rec", "subplans": list(subplans), **fields})


def call(step: str, target: str, /, **kwargs: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": step, "call": f"storesteps:{target}"}
    if kwargs:
        data["with"] = kwargs
    return data


async def test_the_terminal_state_is_stored_when_run_plan_returns(tmp_path: Path) -> None:
    store = ObservedStore()
    steps = [call(f"s{i}", "noop") for i in range(200)]
    async with Engine(settings_for_test(tmp_path), store=store) as eng:
        result = await eng.run_plan(plan(*steps, max_parallel=8))

        stored = await store.get_run(result.run_id)
        assert stored is not None
        assert stored.state is RunState.COMPLETED
        assert stored.duration == result.duration
        subplans = await store.list_subplans(result.run_id)
        assert {s.state for s in subplans} == {SubplanState.COMPLETED}
        assert all(s.attempts == 1 for s in subplans)
        events = await store.list_events(result.run_id)
    assert len(events) == 2 + 2 * 200
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # Group commit: far fewer transactions than events.
    assert len(store.writes) < 20


async def test_the_record_matches_the_result(tmp_path: Path) -> None:
    store = ObservedStore()
    p = plan(
        call("ok", "noop"),
        call("bad", "fail", message="nope"),
        {"name": "after", "call": "storesteps:noop", "needs": ["bad"]},
        {"name": "g", "subplans": [call("x", "noop")]},
        failure_mode="continue_on_error",
    )
    async with Engine(settings_for_test(tmp_path), store=store) as eng:
        result = await eng.run_plan(p)
        stored = {s.path: s for s in await store.list_subplans(result.run_id)}
        run = await eng.get_run(result.run_id)
    assert run.state is RunState.FAILED
    assert run.error == result.error
    assert list(stored) == ["ok", "bad", "after", "g", "g/x"]
    for path, sub in result.subplans.items():
        assert (stored[path].state, stored[path].attempts, stored[path].error) == (
            sub.state,
            sub.attempts,
            sub.error,
        )
    assert stored["bad"].error == "RuntimeError: nope"
    assert stored["after"].state is SubplanState.SKIPPED


async def test_a_cancelled_run_is_stored_as_cancelled(tmp_path: Path) -> None:
    store = ObservedStore()
    async with Engine(settings_for_test(tmp_path), store=store) as eng:
        prepared = eng.prepare_run(plan(call("held", "hold", name="held"), call("b", "noop")))
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(prepared.execute)
                await storesteps.event(storesteps.started, "held").wait()
                scope.cancel()
        stored = await store.get_run(prepared.run_id)
        subplans = {s.path: s.state for s in await store.list_subplans(prepared.run_id)}
    assert stored is not None
    assert stored.state is RunState.CANCELLED
    assert subplans["held"] is SubplanState.CANCELLED


async def test_non_terminal_changes_are_written_without_waiting_for_the_end(
    tmp_path: Path,
) -> None:
    store = ObservedStore()
    async with Engine(settings_for_test(tmp_path), store=store) as eng:
        prepared = eng.prepare_run(plan(call("held", "hold", name="held")))
        async with anyio.create_task_group() as tg:
            tg.start_soon(prepared.execute)
            await storesteps.event(storesteps.started, "held").wait()
            with anyio.fail_after(10):  # written by the flusher's own deadline (max_delay)
                while True:
                    subs = await store.list_subplans(prepared.run_id)
                    if subs and subs[0].state is SubplanState.RUNNING:
                        break
                    await store.written.wait()
            run = await store.get_run(prepared.run_id)
            assert run is not None
            assert run.state is RunState.RUNNING
            storesteps.event(storesteps.gates, "held").set()


async def test_nothing_runs_when_the_run_cannot_be_recorded(tmp_path: Path) -> None:
    store = ObservedStore()
    store.failing = True
    async with Engine(settings_for_test(tmp_path), store=store) as eng:
        with pytest.raises(StoreError, match="disk is on fire"):
            await eng.run_plan(plan(call("a", "count", name="a")))
        store.failing = False
        assert await store.list_runs() == []
    assert storesteps.calls["a"] == 0


async def test_a_failed_write_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    store = ObservedStore()
    async with Engine(settings_for_test(tmp_path), store=store) as eng:
        prepared = eng.prepare_run(
            plan(call("h1", "hold", name="h1"), call("h2", "hold", name="h2"))
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(prepared.execute)
            await storesteps.event(storesteps.started, "h1").wait()
            await storesteps.event(storesteps.started, "h2").wait()
            store.fail_next = 1
            storesteps.event(storesteps.gates, "h1").set()  # a terminal state: written now
            await store.failed.wait()
            storesteps.event(storesteps.gates, "h2").set()  # the run ends: written again
        events = await store.list_events(prepared.run_id)
        run = await store.get_run(prepared.run_id)
        subplans = await store.list_subplans(prepared.run_id)
    assert run is not None
    assert run.state is RunState.COMPLETED
    assert {s.state for s in subplans} == {SubplanState.COMPLETED}
    assert [e.seq for e in events] == list(range(1, 7))


async def test_a_store_that_stays_down_fails_the_run_loudly(tmp_path: Path) -> None:
    store = ObservedStore()

    async def break_the_store_then_finish() -> None:
        await storesteps.event(storesteps.started, "held").wait()
        store.failing = True
        storesteps.event(storesteps.gates, "held").set()

    async with Engine(settings_for_test(tmp_path), store=store) as eng:
        prepared = eng.prepare_run(plan(call("held", "hold", name="held")))
        async with anyio.create_task_group() as tg:
            tg.start_soon(break_the_store_then_finish)
            with pytest.raises(StoreError, match="disk is on fire"):
                await prepared.execute()
        assert prepared.result().state is RunState.COMPLETED  # the work itself succeeded
        with pytest.raises(StoreError, match="disk is on fire"):
            await eng.__aexit__(None, None, None)  # closing cannot write it either
    assert not eng.is_open


async def test_closing_the_engine_writes_what_is_left(tmp_path: Path) -> None:
    store = ObservedStore()
    eng = Engine(settings_for_test(tmp_path), store=store)
    async with eng:
        result = await eng.run_plan(plan(call("a", "noop")))
    assert not eng.is_open
    stored = await store.get_run(result.run_id)
    assert stored is not None
    assert stored.state is RunState.COMPLETED


async def test_flush_needs_a_running_recorder() -> None:
    recorder = Recorder(MemoryStore())
    with pytest.raises(RuntimeError, match="not running"):
        await recorder.flush()


async def test_an_engine_that_was_not_opened_opens_itself_for_a_run(tmp_path: Path) -> None:
    eng = Engine(settings_for_test(tmp_path))
    result = await eng.run_plan(plan(call("a", "noop")))
    assert result.ok
    assert not eng.is_open
    stored = await eng.store.get_run(result.run_id)
    assert stored is not None
    assert stored.state is RunState.COMPLETED


def test_a_run_snapshot_keeps_every_field_of_its_first_record() -> None:
    """The snapshot is built field by field (not with `dataclasses.replace`): a field added to
    RunRecord must not be dropped from the stored run."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    base = RunRecord(
        id="r1",
        plan_name="p",
        state=RunState.PENDING,
        created_at=at,
        max_parallel=3,
        failure_mode=FailureMode.CONTINUE_ON_ERROR,
        plan_digest="d",
        plan_source="/x/p.yaml",
        project="proj",
        resumed_from="r0",
    )
    tracker = SubplanTracker("r1", "p", [], clock=SystemClock())
    tracker.set_run_state(RunState.RUNNING)
    snapshot = _Recording(base, tracker, {}).snapshot_run()
    from_tracker = {"state", "started_at", "finished_at", "duration", "error"}
    for f in fields(RunRecord):
        if f.name not in from_tracker:
            assert getattr(snapshot, f.name) == getattr(base, f.name), f.name
    assert snapshot.state is RunState.RUNNING
    assert snapshot.started_at == tracker.run_started_at
