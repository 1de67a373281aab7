"""`engine.dispatch`: the in-process fast path, through the public API."""

from __future__ import annotations

import anyio
import pytest

import engine
from engine import (
    AggregateSubplanError,
    Event,
    FailureMode,
    InputError,
    SubplanExecutionError,
    SubplanState,
    SubplanStateChanged,
)


def states_from(events: list[Event]) -> dict[str, SubplanState]:
    final: dict[str, SubplanState] = {}
    for event in events:
        if isinstance(event, SubplanStateChanged):
            final[event.path] = event.to
    return final


class Probe:
    """Instrumented concurrency counter: proves a cap is respected and reached."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.active = 0
        self.peak = 0
        self.full = anyio.Event()

    def make(self, value: int):  # type: ignore[no-untyped-def]
        async def work() -> int:
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= self.cap:
                self.full.set()
            await self.full.wait()
            await anyio.lowlevel.checkpoint()
            self.active -= 1
            return value

        return work


async def test_results_come_back_in_order() -> None:
    async def make(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        return i * i

    funcs = [lambda i=i: make(i) for i in range(50)]
    assert await engine.dispatch(funcs, max_parallel=7) == [i * i for i in range(50)]


async def test_empty_list_returns_empty() -> None:
    assert await engine.dispatch([]) == []


@pytest.mark.parametrize(("cap", "count"), [(1, 5), (4, 12), (10, 25), (32, 32), (32, 100)])
async def test_cap_respected_and_reached(cap: int, count: int) -> None:
    probe = Probe(min(cap, count))
    results = await engine.dispatch([probe.make(i) for i in range(count)], max_parallel=cap)
    assert results == list(range(count))
    assert probe.peak == min(cap, count)


async def test_fail_fast_cancels_running_and_pending() -> None:
    started = anyio.Event()
    cancelled: list[int] = []

    async def slow() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(1)

    async def failing() -> None:
        await started.wait()
        raise ValueError("bad input")

    async def never() -> None:
        raise AssertionError("a pending callable must not start after a failure")

    events: list[Event] = []
    with pytest.raises(SubplanExecutionError) as info:
        await engine.dispatch([slow, failing, never, never], max_parallel=2, on_event=events.append)
    assert info.value.path == "1"
    assert isinstance(info.value.__cause__, ValueError)
    assert cancelled == [1]
    assert states_from(events) == {
        "0": SubplanState.CANCELLED,
        "1": SubplanState.FAILED,
        "2": SubplanState.CANCELLED,
        "3": SubplanState.CANCELLED,
    }


async def test_continue_on_error_runs_all_and_aggregates() -> None:
    ran: list[int] = []

    def make(i: int):  # type: ignore[no-untyped-def]
        async def work() -> int:
            ran.append(i)
            if i % 3 == 0:
                raise RuntimeError(f"item {i}")
            return i

        return work

    with pytest.raises(AggregateSubplanError) as info:
        await engine.dispatch(
            [make(i) for i in range(10)], max_parallel=3, failure_mode="continue_on_error"
        )
    assert sorted(ran) == list(range(10))
    assert sorted(f.path for f in info.value.failures) == ["0", "3", "6", "9"]
    assert all(isinstance(f.__cause__, RuntimeError) for f in info.value.failures)


async def test_events_have_increasing_seq_and_full_lifecycle() -> None:
    events: list[Event] = []

    async def ok() -> None:
        await anyio.lowlevel.checkpoint()

    await engine.dispatch([ok, ok, ok], on_event=events.append)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert events[0].type == "run.state"
    assert events[-1].type == "run.state"
    per_item = [e for e in events if isinstance(e, SubplanStateChanged) and e.path == "1"]
    assert [(e.from_, e.to) for e in per_item] == [
        (SubplanState.PENDING, SubplanState.RUNNING),
        (SubplanState.RUNNING, SubplanState.COMPLETED),
    ]
    assert per_item[-1].to_dict()["from"] == "running"


async def test_outer_cancellation_propagates_and_marks_cancelled() -> None:
    events: list[Event] = []
    running = anyio.Event()

    async def forever() -> None:
        running.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:

        async def go() -> None:
            await engine.dispatch([forever, forever], max_parallel=2, on_event=events.append)

        tg.start_soon(go)
        await running.wait()
        tg.cancel_scope.cancel()
    assert set(states_from(events).values()) == {SubplanState.CANCELLED}
    assert events[-1].to_dict()["to"] == "cancelled"


@pytest.mark.parametrize("bad", [0, 33, -1, True])
async def test_bad_max_parallel_is_input_error(bad: int) -> None:
    with pytest.raises(InputError, match="max_parallel must be between 1 and 32"):
        await engine.dispatch([], max_parallel=bad)


async def test_bad_failure_mode_is_input_error() -> None:
    with pytest.raises(InputError, match="failure_mode must be one of"):
        await engine.dispatch([], failure_mode="sometimes")
    assert FailureMode("fail_fast") is FailureMode.FAIL_FAST


async def test_fail_fast_starts_nothing_after_failure_even_without_checkpoints() -> None:
    async def instant() -> None:
        return None

    async def failing() -> None:
        raise RuntimeError("no checkpoint before this")

    events: list[Event] = []
    with pytest.raises(SubplanExecutionError):
        await engine.dispatch(
            [instant, failing, instant, instant], max_parallel=2, on_event=events.append
        )
    assert states_from(events) == {
        "0": SubplanState.COMPLETED,
        "1": SubplanState.FAILED,
        "2": SubplanState.CANCELLED,
        "3": SubplanState.CANCELLED,
    }
