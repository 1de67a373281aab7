"""Lock and job events (`lock.*`, `job.state`) on the engine's bus, on memory and SQLite, and in
`run --events` / `worker --events` through the CLI. Orders are asserted on the events received;
nothing waits by sleeping."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import stepkit
from clitools import engine_env, run_engine
from engine import Engine
from engine.domain.events import (
    Event,
    JobStateChanged,
    LockEvent,
    RunStateChanged,
    SubplanStateChanged,
)
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus, RunState
from engine.errors import LockExpiredError
from engine.testing import ManualClock, hosted, settings_for_test

S = AsyncJobStatus


@pytest.fixture(autouse=True)
def stepkit_state() -> Iterator[None]:
    stepkit.reset()
    yield
    stepkit.reset()


@pytest.fixture(params=["memory", "sqlite"])
async def eng(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}" if request.param == "sqlite" else None
    async with hosted(Engine(settings_for_test(tmp_path), database_url=url)) as engine:
        yield engine


def plan(name: str, *steps: dict[str, Any]) -> Plan:
    return Plan.model_validate({"name": name, "subplans": list(steps)})


def noop(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "call": "stepkit:value", "with": {"x": 1}, **extra}


def locks_of(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.type, e.resource) for e in events if isinstance(e, LockEvent)]


def jobs_of(events: list[Event]) -> list[tuple[AsyncJobStatus | None, AsyncJobStatus]]:
    return [(e.from_, e.to) for e in events if isinstance(e, JobStateChanged)]


# --- locks -------------------------------------------------------------------------------------


async def test_a_run_announces_its_plan_and_resource_locks(eng: Engine) -> None:
    events: list[Event] = []
    result = await eng.run_plan(
        plan("locked", noop("a", locks=["db"]), noop("b")), on_event=events.append
    )
    assert result.state is RunState.COMPLETED
    assert locks_of(events) == [
        ("lock.acquired", "plan:locked"),
        ("lock.acquired", "resource:db"),
        ("lock.released", "resource:db"),
        ("lock.released", "plan:locked"),
    ]
    lock_events = [e for e in events if isinstance(e, LockEvent)]
    assert all(e.run_id == result.run_id for e in lock_events)
    assert [e.seq for e in lock_events] == sorted(e.seq for e in lock_events)
    acquired = lock_events[0]
    assert acquired.owner.endswith(f":{result.run_id}")
    assert acquired.expires_at is not None
    # The plan lock is taken before the run starts and freed after it ended.
    types = [e.type for e in events]
    running = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, RunStateChanged) and e.to is RunState.RUNNING
    )
    ended = max(i for i, e in enumerate(events) if isinstance(e, RunStateChanged))
    assert types.index("lock.acquired") < running < ended < len(types) - 1
    assert types[-1] == "lock.released"
    # The run's stored log is still only its own events, numbered 1, 2, ...
    stored = await eng.store.list_events(result.run_id)
    assert all(isinstance(e, RunStateChanged | SubplanStateChanged) for e in stored)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))


async def test_reentry_is_not_an_event_and_force_release_is(eng: Engine) -> None:
    events: list[Event] = []
    with eng.bus.listening(events.append):
        await eng.locks.acquire("resource:x", "me", ttl=30)
        await eng.locks.acquire("resource:x", "me", ttl=30)  # re-entry
        await eng.locks.release("resource:x", "me")  # depth 2 -> 1
        await eng.locks.release("resource:x", "me")
        await eng.locks.acquire("resource:y", "other", ttl=30)
        removed = await eng.locks.force_release("resource:y")
    assert locks_of(events) == [
        ("lock.acquired", "resource:x"),
        ("lock.released", "resource:x"),
        ("lock.acquired", "resource:y"),
        ("lock.force_released", "resource:y"),
    ]
    forced = events[-1]
    assert isinstance(forced, LockEvent)
    assert (forced.owner, forced.expires_at) == (removed.owner_id, removed.expires_at)
    assert forced.to_dict()["owner"] == removed.owner_id


async def test_renewals_and_a_renewal_that_finds_the_lock_gone(tmp_path: Path) -> None:
    clock = ManualClock()
    events: list[Event] = []
    async with Engine(settings_for_test(tmp_path), clock=clock) as eng:
        with eng.bus.listening(events.append):
            await eng.locks.acquire("resource:r", "me", ttl=10)
            await eng.locks.renew("resource:r", "me", ttl=10)
            clock.advance(11)
            with pytest.raises(LockExpiredError):
                await eng.locks.renew("resource:r", "me", ttl=10)
            await eng.locks.force_release("resource:r")
            with pytest.raises(LockExpiredError, match="no longer held"):
                await eng.locks.renew("resource:r", "me", ttl=10)
    assert [e.type for e in events] == [
        "lock.acquired",
        "lock.renewed",
        "lock.expired",
        "lock.force_released",
        "lock.lost",
    ]
    expired = events[2]
    assert isinstance(expired, LockEvent)
    assert "resource:r" in (expired.error or "")


# --- jobs ----------------------------------------------------------------------------------------


async def test_submit_then_a_burst_worker_announces_every_transition(eng: Engine) -> None:
    events: list[Event] = []
    with eng.bus.listening(events.append):
        job_id = await eng.submit(plan("queued", noop("a")))
        pool = eng.worker(concurrency=1, burst=True)
        await pool.run()
    job = await eng.get_job(job_id)
    assert job.status is S.SUCCEEDED
    assert jobs_of(events) == [(None, S.QUEUED), (S.QUEUED, S.RUNNING), (S.RUNNING, S.SUCCEEDED)]
    submitted, claimed, finished = (e for e in events if isinstance(e, JobStateChanged))
    assert {e.job_id for e in (submitted, claimed, finished)} == {job_id}
    assert (submitted.attempt, submitted.worker_id) == (0, None)
    assert (claimed.attempt, claimed.worker_id) == (1, pool.worker_id)
    assert (finished.attempt, finished.worker_id) == (1, pool.worker_id)
    assert finished.run_id == job.run_id is not None
    assert finished.error is None
    # The job's run (and its plan lock) happen between the claim and the outcome.
    order = [e.type for e in events]
    claim_at, finish_at = events.index(claimed), events.index(finished)
    assert claim_at < order.index("run.state") < order.index("lock.released") < finish_at
    assert finished.to_dict()["from"] == "running"


async def test_cancelling_a_queued_job_is_announced_once(eng: Engine) -> None:
    events: list[Event] = []
    with eng.bus.listening(events.append):
        job_id = await eng.submit(plan("dropped", noop("a")))
        await eng.cancel_job(job_id)
        await eng.cancel_job(job_id)  # already cancelled: no change, no event
    assert jobs_of(events) == [(None, S.QUEUED), (S.QUEUED, S.CANCELLED)]
    cancelled = events[-1]
    assert isinstance(cancelled, JobStateChanged)
    assert (cancelled.job_id, cancelled.worker_id) == (job_id, None)
    assert cancelled.error == "cancelled while queued"


# --- the CLI -------------------------------------------------------------------------------------


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_events_file_has_the_plan_lock_around_the_run(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text('name: cli\nsubplans:\n  - {name: a, run: "echo hi"}\n')
    out = tmp_path / "events.jsonl"
    done = run_engine("run", "plan.yaml", "--quiet", "--events", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = read_events(out)
    kinds = [(e["type"], e.get("resource"), e.get("to")) for e in lines]
    acquired = kinds.index(("lock.acquired", "plan:cli", None))
    running = kinds.index(("run.state", None, "running"))
    completed = kinds.index(("run.state", None, "completed"))
    released = kinds.index(("lock.released", "plan:cli", None))
    assert acquired < running < completed < released
    assert lines[acquired]["run_id"] == lines[running]["run_id"]


def test_worker_events_file_has_the_job_transitions(tmp_path: Path) -> None:
    env = engine_env(tmp_path)
    (tmp_path / "plan.yaml").write_text('name: bg\nsubplans:\n  - {name: a, run: "echo hi"}\n')
    submitted = run_engine("submit", "plan.yaml", cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    done = run_engine("worker", "--burst", "--events", "-", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    jobs = [(e["job_id"], e["from"], e["to"]) for e in lines if e["type"] == "job.state"]
    assert jobs == [(job_id, "queued", "running"), (job_id, "running", "succeeded")]
    types = [e["type"] for e in lines]
    assert {"run.state", "lock.acquired", "lock.released"} <= set(types)
    assert f"job {job_id} succeeded" in done.stderr  # the per-job line moved off stdout
