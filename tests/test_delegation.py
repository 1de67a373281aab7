"""`engine.delegation.Delegator`: background work with a handle, a cap and a completion queue.

Work is gated by anyio Events and observed through state; nothing sleeps to wait for a state.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from ulid import ULID

import engine
import stepkit
from engine.delegation import (
    DelegationHandle,
    DelegationSettings,
    Delegator,
)
from engine.domain.events import DelegationCompleted, DelegationStateChanged, Event
from engine.domain.plan import Plan
from engine.domain.states import (
    DELEGATION_TRANSITIONS,
    TERMINAL_DELEGATION_STATES,
    DelegationState,
)
from engine.errors import DelegationRejected, InputError, NotFoundError
from engine.events import EventBus

pytestmark = pytest.mark.timeout(60)

RUNNING = DelegationState.RUNNING
SUCCEEDED = DelegationState.SUCCEEDED
FAILED = DelegationState.FAILED
CANCELLED = DelegationState.CANCELLED


class FakeClock:
    """Time moves only when a test says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self.base = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

    def now(self) -> datetime:
        return self.base + timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await anyio.lowlevel.checkpoint()

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Gated:
    """An async callable that records its start and waits for `release` (or fails on it)."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.finally_ran = False

    async def __call__(self) -> Any:
        self.started.set()
        try:
            await self.release.wait()
        finally:
            self.finally_ran = True
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture(autouse=True)
def stepkit_state() -> Iterator[None]:
    stepkit.reset()
    yield
    stepkit.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> engine.Settings:
    return engine.load_settings(
        environ={"ENGINE_DATA_DIR": str(tmp_path / "data"), "ENGINE_RETRY_BACKOFF": "0"},
        cwd=tmp_path,
    )


@asynccontextmanager
async def opened(**kwargs: Any) -> AsyncIterator[Delegator]:
    async with Delegator(**kwargs) as delegator:
        yield delegator


async def drain(delegator: Delegator) -> list[DelegationCompleted]:
    """Every completion (call once the delegator is closed: the stream then ends)."""
    return [c async for c in delegator.completions()]


# -- dispatch --------------------------------------------------------------------------------


async def test_delegate_returns_before_the_work_finishes(clock: FakeClock) -> None:
    work = Gated(value=42)
    async with opened(clock=clock) as delegator:
        handle = delegator.delegate(work, goal="answer")
        assert handle.state is RUNNING
        assert not handle.done
        await work.started.wait()
        await anyio.wait_all_tasks_blocked()
        assert handle.state is RUNNING  # started and blocked, not finished
        assert ULID.from_str(handle.id)
        work.release.set()
        done = await handle.wait()
    assert done.status is SUCCEEDED
    assert done.result == 42
    assert handle.completion is done


async def test_rejects_at_capacity_instead_of_queueing(clock: FakeClock) -> None:
    works = [Gated() for _ in range(4)]
    async with opened(clock=clock) as delegator:
        handles = [delegator.delegate(w, goal=f"job {i}") for i, w in enumerate(works[:3])]
        with pytest.raises(DelegationRejected) as info:
            delegator.delegate(works[3], goal="one too many")
        assert (info.value.limit, info.value.running, info.value.closed) == (3, 3, False)
        assert "wait for one to finish, or run the work synchronously" in str(info.value)
        assert not works[3].started.is_set()
        assert delegator.statistics().rejected == 1

        works[0].release.set()
        await handles[0].wait()
        fourth = delegator.delegate(works[3], goal="now there is room")
        assert delegator.statistics().running == 3
        for w in works:
            w.release.set()
        await fourth.wait()


async def test_capacity_holds_under_many_concurrent_callers(clock: FakeClock) -> None:
    live = peak = 0
    go = anyio.Event()
    accepted: list[DelegationHandle] = []
    rejected: list[DelegationRejected] = []

    async def work() -> None:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
        finally:
            live -= 1

    async def caller(delegator: Delegator) -> None:
        await go.wait()
        for _ in range(5):
            try:
                accepted.append(delegator.delegate(work, goal="race"))
            except DelegationRejected as exc:
                rejected.append(exc)
            await anyio.lowlevel.checkpoint()

    async with opened(clock=clock) as delegator:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(caller, delegator)
            await anyio.wait_all_tasks_blocked()
            go.set()
        for handle in accepted:
            await handle.wait()
    assert len(accepted) + len(rejected) == 100
    assert accepted
    assert rejected
    assert peak <= 3
    assert all(exc.running <= 3 for exc in rejected)
    stats = delegator.statistics()
    assert (stats.dispatched, stats.rejected, stats.completed) == (
        len(accepted),
        len(rejected),
        len(accepted),
    )


# -- the completion ----------------------------------------------------------------------------


async def test_completion_payload_is_complete_and_self_contained(clock: FakeClock) -> None:
    work = Gated(value={"rows": 3})
    context = {"conversation": "c-17", "step": 4}
    metadata = {"priority": "high"}
    async with opened(clock=clock) as delegator:
        handle = delegator.delegate(work, goal="count rows", context=context, metadata=metadata)
        metadata["priority"] = "changed by the caller later"
        await work.started.wait()
        clock.advance(2.5)
        work.release.set()
        await handle.wait()
    (done,) = await drain(delegator)
    assert done is handle.completion
    assert done.type == "delegation.completed"
    assert done.delegation_id == handle.id
    assert done.goal == "count rows"
    assert done.work.endswith("Gated")
    assert done.context == {"conversation": "c-17", "step": 4}
    assert done.metadata == {"priority": "high"}
    assert done.status is SUCCEEDED
    assert done.ok
    assert done.result == {"rows": 3}
    assert done.result_summary == "{'rows': 3}"
    assert (done.error, done.error_type, done.reason) == (None, None, None)
    assert done.dispatched_at == clock.base
    assert done.completed_at == clock.base + timedelta(seconds=2.5)
    assert done.at == done.completed_at
    assert done.duration == 2.5

    data = json.loads(done.to_json())
    assert "result" not in data  # in-process only; the summary travels
    assert data["result_summary"] == "{'rows': 3}"
    assert data["context"] == {"conversation": "c-17", "step": 4}
    assert data["status"] == "succeeded"
    assert data["duration"] == 2.5


async def test_context_that_is_not_json_still_serializes(clock: FakeClock) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    async def work() -> Opaque:
        return Opaque()

    async with opened(clock=clock) as delegator:
        handle = delegator.delegate(work, goal="g", context=Opaque(), metadata={"o": Opaque()})
        done = await handle.wait()
    data = done.to_dict()
    assert data["context"] == "<Opaque>"
    assert data["metadata"] == {"o": "<Opaque>"}
    assert data["result_summary"] == "<Opaque>"


async def test_failure_is_reported_with_a_redacted_error(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_API_TOKEN", "tok-7f3a9b1c")
    boom = RuntimeError(
        "POST https://svc:hunter22@api.example.com failed: token tok-7f3a9b1c, "
        "Authorization: Bearer eyJ0eXAi.payload.sig"
    )
    work = Gated(error=boom)
    bus = EventBus()
    with bus.subscribe() as events:
        async with opened(clock=clock, bus=bus) as delegator:
            handle = delegator.delegate(work, goal="call the API")
            work.release.set()
            done = await handle.wait()
        seen = [e async for e in _received_so_far(events)]
    assert done.status is FAILED
    assert done.error_type == "RuntimeError"
    assert done.error is not None
    assert done.error.startswith("RuntimeError: POST https://svc:***@api.example.com failed")
    for secret in ("hunter22", "tok-7f3a9b1c", "eyJ0eXAi"):
        assert secret not in done.error
        assert all(secret not in e.to_json() for e in seen)
    assert handle.exception is boom  # the caller's own exception, in-process only
    assert delegator.statistics().failed == 1


async def _received_so_far(stream: MemoryObjectReceiveStream[Event]) -> AsyncIterator[Event]:
    """What a subscriber has received so far, without waiting for more."""
    while True:
        try:
            yield stream.receive_nowait()
        except anyio.WouldBlock:
            return


async def test_work_that_returns_no_awaitable_fails_clearly(clock: FakeClock) -> None:
    def not_async() -> int:
        return 1

    work: Any = not_async  # what an untyped caller may pass
    async with opened(clock=clock) as delegator:
        done = await delegator.delegate(work, goal="g").wait()
    assert done.status is FAILED
    assert done.error_type == "TypeError"
    assert "not an awaitable" in (done.error or "")


# -- plans ---------------------------------------------------------------------------------


def _plan(**data: Any) -> Plan:
    return Plan.model_validate({"name": "delegated", **data})


async def test_plan_work_runs_through_run_plan(clock: FakeClock, settings: engine.Settings) -> None:
    plan = _plan(
        subplans=[
            {"name": "answer", "call": "stepkit:value", "with": {"x": 21}},
            {"name": "shell", "run": "true"},
        ]
    )
    run_plan = functools.partial(engine.run_plan, settings=settings)
    async with opened(clock=clock, run_plan=run_plan) as delegator:
        done = await delegator.delegate(plan, goal="run the plan").wait()
    assert done.status is SUCCEEDED, done.error
    assert done.work == "plan delegated"
    assert isinstance(done.result, engine.RunResult)
    assert done.result.subplans["answer"].result == 21
    assert done.result_summary is not None
    assert done.result_summary.startswith(f"plan 'delegated' run {done.result.run_id} completed")
    assert done.result_summary.endswith("(2 completed)")


async def test_failed_plan_is_a_failed_delegation(
    clock: FakeClock, settings: engine.Settings
) -> None:
    plan = _plan(subplans=[{"name": "bad", "call": "stepkit:fail", "with": {"message": "nope"}}])
    run_plan = functools.partial(engine.run_plan, settings=settings)
    async with opened(clock=clock, run_plan=run_plan) as delegator:
        done = await delegator.delegate(plan, goal="g").wait()
    assert done.status is FAILED
    assert done.error_type == "SubplanExecutionError"
    assert done.error == "subplan 'bad' failed: RuntimeError: nope"
    assert isinstance(done.result, engine.RunResult)


async def test_plan_file_path(clock: FakeClock, settings: engine.Settings, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: from-file\nsubplans:\n  - {name: ok, run: 'true'}\n", encoding="utf-8")
    run_plan = functools.partial(engine.run_plan, settings=settings)
    async with opened(clock=clock, run_plan=run_plan) as delegator:
        good = delegator.delegate(path, goal="file")
        missing = delegator.delegate(str(tmp_path / "missing.yaml"), goal="no file")
        assert (await good.wait()).status is SUCCEEDED
        assert (await missing.wait()).status is FAILED
    assert good.work == f"plan file {path}"
    assert missing.completion is not None
    assert "missing.yaml" in (missing.completion.error or "")


async def test_plans_need_a_run_plan(clock: FakeClock) -> None:
    async with opened(clock=clock) as delegator:
        with pytest.raises(InputError, match="no run_plan"):
            delegator.delegate(_plan(subplans=[{"name": "a", "run": "true"}]), goal="g")


# -- bad input --------------------------------------------------------------------------------


async def test_bad_work_and_goal_are_input_errors(clock: FakeClock) -> None:
    async def fetch() -> None:
        return None

    coroutine: Any = fetch()  # a common slip: the call instead of the function
    number: Any = 42
    int_keys: Any = {1: "x"}
    async with opened(clock=clock) as delegator:
        with pytest.raises(InputError, match="not a coroutine"):
            delegator.delegate(coroutine, goal="g")
        with pytest.raises(InputError, match="zero-argument async callable"):
            delegator.delegate(number, goal="g")
        with pytest.raises(InputError, match="goal"):
            delegator.delegate(fetch, goal="  ")
        with pytest.raises(InputError, match="metadata keys"):
            delegator.delegate(fetch, goal="g", metadata=int_keys)
        assert delegator.statistics().dispatched == 0
        assert delegator.statistics().rejected == 0


async def test_delegate_needs_an_open_delegator(clock: FakeClock) -> None:
    async def work() -> None:
        return None

    delegator = Delegator(clock=clock)
    with pytest.raises(RuntimeError, match="open the Delegator first"):
        delegator.delegate(work, goal="g")
    async with delegator:
        pass
    with pytest.raises(DelegationRejected) as info:
        delegator.delegate(work, goal="g")
    assert info.value.closed


# -- listing and retention -------------------------------------------------------------------


async def test_retention_prunes_the_oldest_finished_first(clock: FakeClock) -> None:
    works = {name: Gated(value=name) for name in "ABCD"}
    async with opened(clock=clock, settings=DelegationSettings(retention=2)) as delegator:
        a, b, c = (delegator.delegate(works[n], goal=n) for n in "ABC")
        for name, handle in (("B", b), ("A", a)):  # B finishes first, then A
            works[name].release.set()
            await handle.wait()
        assert [h.goal for h in delegator.delegations()] == ["A", "B", "C"]

        d = delegator.delegate(works["D"], goal="D")
        works["D"].release.set()
        await d.wait()
        # finished in the order B, A, D; retention 2 drops B; C is running and never pruned
        assert [h.goal for h in delegator.delegations()] == ["A", "C", "D"]
        assert [h.state for h in delegator.delegations()] == [SUCCEEDED, RUNNING, SUCCEEDED]
        assert delegator.get(c.id) is c
        with pytest.raises(NotFoundError):
            delegator.get(b.id)
        assert delegator.statistics().retained == 2
        works["C"].release.set()


async def test_retention_zero_lists_only_running(clock: FakeClock) -> None:
    slow, quick = Gated(), Gated()
    async with opened(clock=clock, settings=DelegationSettings(retention=0)) as delegator:
        running = delegator.delegate(slow, goal="slow")
        finished = delegator.delegate(quick, goal="quick")
        quick.release.set()
        await finished.wait()
        assert delegator.delegations() == [running]
        slow.release.set()


# -- cancellation -----------------------------------------------------------------------------


async def test_cancel_one(clock: FakeClock) -> None:
    work, other = Gated(), Gated(value="other")
    async with opened(clock=clock) as delegator:
        handle = delegator.delegate(work, goal="to cancel")
        keep = delegator.delegate(other, goal="to keep")
        await work.started.wait()
        assert handle.cancel("the user changed their mind")
        assert not handle.cancel("again")  # the first reason wins
        done = await handle.wait()
        assert keep.state is RUNNING
        assert not handle.cancel("after the end")
        other.release.set()
    assert done.status is CANCELLED
    assert done.reason == "the user changed their mind"
    assert done.error is None
    assert work.finally_ran
    assert delegator.statistics().cancelled == 1
    assert delegator.statistics().completed == 1


async def test_cancel_before_the_work_ever_ran(clock: FakeClock) -> None:
    work = Gated()
    async with opened(clock=clock) as delegator:
        handle = delegator.delegate(work, goal="g")
        assert handle.cancel("changed plans")  # no checkpoint since delegate(): not started yet
        done = await handle.wait()
    assert done.status is CANCELLED
    assert done.reason == "changed plans"


async def test_interrupt_all(clock: FakeClock) -> None:
    finished, *blocked = [Gated(value=i) for i in range(4)]
    async with opened(clock=clock, settings=DelegationSettings(max_concurrent_delegations=4)) as d:
        first = d.delegate(finished, goal="done already")
        finished.release.set()
        await first.wait()
        handles = [d.delegate(w, goal=f"blocked {i}") for i, w in enumerate(blocked)]
        await anyio.wait_all_tasks_blocked()
        assert d.interrupt_all("shutting down the agent") == 3
        assert d.interrupt_all("twice") == 0
        results = [await h.wait() for h in handles]
        assert d.statistics().running == 0
    assert [r.status for r in results] == [CANCELLED] * 3
    assert {r.reason for r in results} == {"shutting down the agent"}
    assert first.state is SUCCEEDED
    assert all(w.finally_ran for w in blocked)


async def test_closing_cancels_running_work_and_emits_their_completions(
    clock: FakeClock,
) -> None:
    quick, *slow = [Gated(value=i) for i in range(3)]
    async with opened(clock=clock) as delegator:
        done_first = delegator.delegate(quick, goal="quick")
        quick.release.set()
        await done_first.wait()
        handles = [delegator.delegate(w, goal=f"slow {i}") for i, w in enumerate(slow)]
        await anyio.wait_all_tasks_blocked()
    assert all(w.finally_ran for w in slow)
    assert [h.state for h in handles] == [CANCELLED, CANCELLED]
    completions = await drain(delegator)  # the stream ends: the delegator is closed
    assert [c.goal for c in completions] == ["quick", "slow 0", "slow 1"]
    assert [c.reason for c in completions] == [None, "closing", "closing"]
    stats = delegator.statistics()
    assert (stats.running, stats.completed, stats.cancelled, stats.delivered) == (0, 1, 2, 3)


async def test_no_task_outlives_the_delegator(clock: FakeClock) -> None:
    async def forever() -> None:
        await anyio.sleep_forever()

    before = asyncio.all_tasks()
    async with opened(clock=clock) as delegator:
        for i in range(3):
            delegator.delegate(forever, goal=f"forever {i}")
        await anyio.wait_all_tasks_blocked()
        assert len(asyncio.all_tasks() - before) == 3
    assert asyncio.all_tasks() == before


async def test_in_the_owners_task_group(clock: FakeClock) -> None:
    async def forever() -> None:
        await anyio.sleep_forever()

    outside = asyncio.all_tasks()
    async with anyio.create_task_group() as tg:
        async with opened(clock=clock, task_group=tg) as delegator:
            handles = [delegator.delegate(forever, goal=str(i)) for i in range(2)]
            await anyio.wait_all_tasks_blocked()
        # the delegator's block waited for its work: nothing of it is left in the owner's group
        assert asyncio.all_tasks() == outside
        assert [h.state for h in handles] == [CANCELLED, CANCELLED]
        assert len(await drain(delegator)) == 2
    assert asyncio.all_tasks() == outside


# -- delivery ---------------------------------------------------------------------------------


async def test_each_completion_reaches_exactly_one_of_two_consumers(clock: FakeClock) -> None:
    got: dict[str, list[str]] = {"a": [], "b": []}

    async def consume(delegator: Delegator, name: str) -> None:
        async for completion in delegator.completions():
            got[name].append(completion.delegation_id)

    async def work() -> None:
        await anyio.lowlevel.checkpoint()

    ids: list[str] = []
    # The delegator closes first (inner block), which ends both streams, so the group exits.
    async with anyio.create_task_group() as tg, opened(clock=clock) as delegator:
        tg.start_soon(consume, delegator, "a")
        tg.start_soon(consume, delegator, "b")
        for _ in range(5):
            batch = [delegator.delegate(work, goal="g") for _ in range(3)]
            ids.extend(h.id for h in batch)
            for handle in batch:
                await handle.wait()
            await anyio.wait_all_tasks_blocked()  # both consumers back to waiting
    delivered = got["a"] + got["b"]
    assert sorted(delivered) == sorted(ids)
    assert len(set(delivered)) == len(ids) == 15
    assert delegator.statistics().delivered == 15


async def test_a_completion_that_cannot_be_queued_is_logged_and_counted(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def work() -> str:
        return "x"

    caplog.set_level(logging.ERROR, logger="engine.delegation")
    async with opened(clock=clock, settings=DelegationSettings(completion_buffer=1)) as delegator:
        first = delegator.delegate(work, goal="fits")
        second = delegator.delegate(work, goal="overflows")
        await first.wait()
        await second.wait()
        stats = delegator.statistics()
        assert (stats.pending_completions, stats.undelivered) == (1, 1)
    assert [c.goal for c in await drain(delegator)] == ["fits"]
    assert second.completion is not None  # still on the handle and in delegations()
    (record,) = caplog.records
    assert second.id in record.getMessage()
    assert "not delivered" in record.getMessage()


async def test_a_failing_bus_subscriber_does_not_lose_the_completion(clock: FakeClock) -> None:
    bus = EventBus()

    def broken(event: Event) -> None:
        raise ValueError("subscriber bug")

    async def work() -> int:
        return 1

    with bus.listening(broken):
        async with opened(clock=clock, bus=bus) as delegator:
            handle = delegator.delegate(work, goal="g")
            await handle.wait()
    assert [c.delegation_id for c in await drain(delegator)] == [handle.id]
    assert delegator.statistics().publish_errors == 3  # running, succeeded, completed


# -- events ---------------------------------------------------------------------------------


async def test_every_transition_is_an_event(clock: FakeClock) -> None:
    bus = EventBus()
    seen: list[Event] = []
    ok, bad, stop = Gated(1), Gated(error=ValueError("no")), Gated()
    with bus.listening(seen.append):
        async with opened(clock=clock, bus=bus) as delegator:
            handles = [
                delegator.delegate(w, goal=g) for w, g in ((ok, "ok"), (bad, "bad"), (stop, "stop"))
            ]
            ok.release.set()
            bad.release.set()
            handles[2].cancel("stop it")
            for handle in handles:
                await handle.wait()
    for handle, end in zip(handles, (SUCCEEDED, FAILED, CANCELLED), strict=True):
        mine = [e for e in seen if getattr(e, "delegation_id", None) == handle.id]
        assert [type(e) for e in mine] == [
            DelegationStateChanged,
            DelegationStateChanged,
            DelegationCompleted,
        ]
        start, stop_event, completed = mine
        assert isinstance(start, DelegationStateChanged)
        assert isinstance(stop_event, DelegationStateChanged)
        assert (start.from_, start.to) == (None, RUNNING)
        assert (stop_event.from_, stop_event.to) == (RUNNING, end)
        assert [e.seq for e in mine] == [1, 2, 3]
        assert completed is handle.completion
        assert json.loads(stop_event.to_json())["from"] == "running"


def test_the_transition_table() -> None:
    assert set(DELEGATION_TRANSITIONS) == set(DelegationState)
    assert DELEGATION_TRANSITIONS[RUNNING] == TERMINAL_DELEGATION_STATES
    assert all(not DELEGATION_TRANSITIONS[s] for s in TERMINAL_DELEGATION_STATES)
