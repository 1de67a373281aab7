"""The worker pool in-process, on a memory engine with a ManualClock: no sleeps; heartbeats and
stuck detection happen when the test advances the clock, running steps are held by gates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import stepkit
from engine import Engine
from engine.domain.job import AsyncJob
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus, RunState
from engine.errors import JobNotFoundError, StoreError
from engine.testing import ManualClock, hosted, settings_for_test
from engine.worker import WorkerPool
from engine.worker import outcomes as outcomes_module

S = AsyncJobStatus
BEAT = 5.0  # heartbeat_interval of these tests
STUCK = 60.0


@pytest.fixture(autouse=True)
def stepkit_state() -> Iterator[None]:
    stepkit.reset()
    yield
    stepkit.reset()


@pytest.fixture
async def eng(manual_clock: ManualClock, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = settings_for_test(
        tmp_path, **{"async.heartbeat_interval": BEAT, "async.stuck_after": STUCK}
    )
    async with hosted(Engine(settings, clock=manual_clock)) as engine:
        yield engine


def plan(name: str, *steps: dict[str, Any], **extra: Any) -> Plan:
    return Plan.model_validate({"name": name, "subplans": list(steps), **extra})


def call(name: str, target: str, /, **kwargs: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": name, "call": f"stepkit:{target}"}
    if kwargs:
        step["with"] = kwargs
    return step


async def status_of(eng: Engine, job_id: str, wanted: S, within: float = 5.0) -> AsyncJob:
    """Poll the store with a deadline (the outcome is written behind by the pool)."""
    with anyio.fail_after(within):
        while True:
            job = await eng.get_job(job_id)
            if job.status is wanted:
                return job
            await anyio.sleep(0.001)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll in-process state with a deadline (for counters that no event announces)."""
    with anyio.fail_after(within):
        while True:
            if predicate():
                return
            await anyio.sleep(0.001)


async def test_a_burst_worker_runs_every_job_once_and_links_its_run(eng: Engine) -> None:
    ids = [await eng.submit(plan(f"p{i}", call("a", "value", x=i))) for i in range(6)]
    pool = eng.worker(concurrency=3, burst=True)
    await pool.run()
    stats = pool.statistics()
    assert (stats.claimed, stats.processed, stats.succeeded, stats.running) == (6, 6, 6, 0)
    for job_id in ids:
        job = await eng.get_job(job_id)
        assert (job.status, job.attempts, job.worker_id) == (S.SUCCEEDED, 1, pool.worker_id)
        assert job.run_id is not None
        run = await eng.get_run(job.run_id)
        assert run.state is RunState.COMPLETED
        assert '"completed":1' in (job.result or "")
    assert await eng.store.list_workers() == []  # unregistered on exit


async def test_outcomes_are_written_by_the_next_claim(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy worker writes its jobs' outcomes in the transaction of its next claim (the last
    claim of a burst finds the queue empty and still carries them): none on their own."""
    ids = [await eng.submit(plan(f"c{i}", call("a", "value", x=i))) for i in range(5)]
    alone: list[int] = []
    carried: list[int] = []
    store = eng.store
    real_finish, real_carry = store.finish_jobs, store.finish_and_claim

    async def finish_jobs(outcomes: Any) -> list[str]:
        alone.append(len(outcomes))
        return await real_finish(outcomes)

    async def finish_and_claim(outcomes: Any, *args: Any, **kwargs: Any) -> Any:
        carried.append(len(outcomes))
        return await real_carry(outcomes, *args, **kwargs)

    monkeypatch.setattr(store, "finish_jobs", finish_jobs)
    monkeypatch.setattr(store, "finish_and_claim", finish_and_claim)
    # The writer task would write them itself only after HOLD (a loaded machine may pause).
    monkeypatch.setattr(outcomes_module, "HOLD", 60.0)
    pool = eng.worker(concurrency=2, burst=True)
    await pool.run()
    assert pool.statistics().succeeded == 5
    assert sum(carried) == 5
    # The memory store's finish_and_claim applies them through its own finish_jobs: any
    # other call would be an outcome written on its own.
    assert alone == carried
    for job_id in ids:
        assert (await eng.get_job(job_id)).status is S.SUCCEEDED


@pytest.mark.parametrize(("in_process", "most"), [(True, 4), (False, 2)])
async def test_on_a_database_server_a_claim_takes_at_most_half_the_slots(
    eng: Engine, monkeypatch: pytest.MonkeyPatch, in_process: bool, most: int
) -> None:
    """Where the database works in another process, two half-size claims are in flight (one
    half runs while the other waits for the server); in this process a claim fills them all."""
    for i in range(8):
        await eng.submit(plan(f"h{i}", call("a", "value", x=i)))
    limits: list[int] = []
    store = eng.store
    real_carry = store.finish_and_claim

    async def finish_and_claim(
        outcomes: Any, worker_id: str, now: Any, limit: int, **kwargs: Any
    ) -> Any:
        limits.append(limit)
        return await real_carry(outcomes, worker_id, now, limit, **kwargs)

    monkeypatch.setattr(store, "finish_and_claim", finish_and_claim)
    monkeypatch.setattr(type(store), "database_in_process", in_process)
    pool = eng.worker(concurrency=4, burst=True)
    await pool.run()
    assert pool.statistics().succeeded == 8
    assert limits[0] == most
    assert max(limits) == most


async def test_a_failed_plan_fails_the_job_with_a_redacted_error(
    eng: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", "s3cr3t-value-123")
    job_id = await eng.submit(
        plan(
            "leaky",
            call("boom", "fail", message="auth s3cr3t-value-123 with Bearer abc.def.ghi"),
            {"name": "out", "run": "echo password=hunter22 s3cr3t-value-123; exit 3"},
            failure_mode="continue_on_error",
        ),
        workdir=tmp_path,
    )
    pool = eng.worker(burst=True)
    await pool.run()
    job = await eng.get_job(job_id)
    assert job.status is S.FAILED
    assert pool.statistics().failed == 1
    error = job.error_message or ""
    assert "boom" in error
    assert "out" in error
    for secret in ("s3cr3t-value-123", "abc.def.ghi", "hunter22"):
        assert secret not in error
    assert "***" in error


async def test_a_queued_job_is_cancelled_at_once_and_never_runs(eng: Engine) -> None:
    job_id = await eng.submit(plan("p", call("a", "probe", group="never")))
    cancelled = await eng.cancel_job(job_id)
    assert cancelled.status is S.CANCELLED
    await eng.worker(burst=True).run()
    assert stepkit.peak["never"] == 0
    assert (await eng.get_job(job_id)).status is S.CANCELLED
    with pytest.raises(JobNotFoundError):
        await eng.cancel_job("01J0000000000000000000NOPE")


async def test_a_running_job_is_cancelled_by_its_worker_within_one_heartbeat(
    eng: Engine, manual_clock: ManualClock
) -> None:
    job_id = await eng.submit(plan("p", call("a", "open_gate_and_wait", name="started", me="a")))
    async with anyio.create_task_group() as tg:
        pool = eng.worker(concurrency=2)
        await tg.start(pool.run)
        with anyio.fail_after(5):
            await stepkit.gate("started").wait()
        asked = await eng.cancel_job(job_id)
        assert (asked.status, asked.cancel_requested) == (S.RUNNING, True)
        await manual_clock.wait_for_sleepers(2)  # the heartbeat and the idle poll
        manual_clock.advance(BEAT)
        job = await status_of(eng, job_id, S.CANCELLED)
        pool.stop()
    assert stepkit.cancelled == ["a"]
    assert job.error_message == "cancelled by request"
    assert job.run_id is not None
    assert (await eng.get_run(job.run_id)).state is RunState.CANCELLED
    assert pool.statistics().cancelled == 1


async def test_submit_wakes_an_idle_in_process_worker(eng: Engine) -> None:
    async with anyio.create_task_group() as tg:
        pool = eng.worker()
        await tg.start(pool.run)
        job_id = await eng.submit(plan("p", call("a", "noop")))
        await status_of(eng, job_id, S.SUCCEEDED)  # no clock advance needed
        pool.stop()


async def lost_job(eng: Engine, clock: ManualClock, *, max_attempts: int = 3) -> str:
    """A job claimed by a worker that then vanished, its heartbeat now older than stuck_after."""
    job_id = await eng.submit(plan("p", call("a", "noop")), max_attempts=max_attempts)
    (claimed,) = await eng.store.claim_jobs("ghost:1:x", clock.now(), 1)
    assert claimed.id == job_id
    clock.advance(STUCK + 1)
    return job_id


async def test_a_lost_workers_job_is_requeued_and_run_by_another(
    eng: Engine, manual_clock: ManualClock
) -> None:
    job_id = await lost_job(eng, manual_clock)
    pool = eng.worker(burst=True)
    await pool.run()
    job = await eng.get_job(job_id)
    assert (job.status, job.attempts, job.worker_id) == (S.SUCCEEDED, 2, pool.worker_id)
    assert pool.statistics().rescued == 1


async def test_a_lost_workers_job_without_attempts_left_fails_saying_so(
    eng: Engine, manual_clock: ManualClock
) -> None:
    job_id = await lost_job(eng, manual_clock, max_attempts=1)
    seen = (manual_clock.now() - timedelta(seconds=STUCK + 1)).strftime("%Y-%m-%d %H:%M:%S")
    diagnosis = await eng.jobs.diagnostics(stale_locks=0)
    assert [j.id for j in diagnosis.stuck] == [job_id]
    assert diagnosis.problems()
    await eng.worker(burst=True).run()
    job = await eng.get_job(job_id)
    assert job.status is S.FAILED
    assert job.error_message == (
        f"worker ghost:1:x was lost: last seen {seen} UTC (61s before it was declared stuck)"
    )
    assert (await eng.jobs.diagnostics(stale_locks=0)).problems() == []


async def test_a_worker_that_lost_its_claim_stops_the_job_and_writes_nothing(
    eng: Engine, manual_clock: ManualClock
) -> None:
    job_id = await eng.submit(plan("p", call("a", "open_gate_and_wait", name="started", me="a")))
    async with anyio.create_task_group() as tg:
        pool = eng.worker()
        await tg.start(pool.run)
        with anyio.fail_after(5):
            await stepkit.gate("started").wait()
        # Another worker decided this one was lost and took the job over (token 2).
        start = manual_clock.now()
        rescued = await eng.store.rescue_stuck_jobs(start, start + timedelta(seconds=1))
        assert [j.status for j in rescued] == [S.QUEUED]
        (taken,) = await eng.store.claim_jobs("other:2:y", start, 1)
        assert taken.attempts == 2
        await manual_clock.wait_for_sleepers(2)
        manual_clock.advance(BEAT)
        await until(lambda: pool.statistics().fenced != 0)
        pool.stop()
    assert stepkit.cancelled == ["a"]
    job = await eng.get_job(job_id)
    assert (job.status, job.worker_id, job.attempts) == (S.RUNNING, "other:2:y", 2)


async def test_a_worker_whose_heartbeats_fail_cancels_its_own_jobs(
    eng: Engine, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await eng.submit(plan("p", call("a", "open_gate_and_wait", name="started", me="a")))
    async with anyio.create_task_group() as tg:
        pool = eng.worker(stuck_after=8.0)  # self-fences after 4 s without a heartbeat
        await tg.start(pool.run)
        with anyio.fail_after(5):
            await stepkit.gate("started").wait()

        async def unreachable(*args: object) -> None:
            raise StoreError("database unreachable")

        monkeypatch.setattr(eng.store, "heartbeat", unreachable)
        await manual_clock.wait_for_sleepers(2)
        manual_clock.advance(BEAT)
        await until(lambda: pool.statistics().fenced != 0)
        stats = pool.statistics()
        pool.stop()
    assert stats.heartbeat_failures == 1
    assert stepkit.cancelled == ["a"]
    assert (await eng.get_job(job_id)).status is S.RUNNING  # left for stuck detection


async def test_a_job_over_the_timeout_is_cancelled_and_failed(eng: Engine) -> None:
    job_id = await eng.submit(plan("p", call("a", "wait_forever", name="a")))
    await eng.worker(burst=True, job_timeout=0.05).run()
    job = await eng.get_job(job_id)
    assert job.status is S.FAILED
    assert job.error_message == "timed out after 0.05s (async.job_timeout)"
    assert stepkit.cancelled == ["a"]


async def test_shutdown_hands_running_jobs_back_and_releases_their_locks(eng: Engine) -> None:
    job_id = await eng.submit(plan("p", call("a", "open_gate_and_wait", name="started", me="a")))
    async with anyio.create_task_group() as tg:
        pool: WorkerPool = eng.worker()
        await tg.start(pool.run)
        with anyio.fail_after(5):
            await stepkit.gate("started").wait()
        pool.stop(grace=0)
    job = await eng.get_job(job_id)
    assert (job.status, job.worker_id, job.attempts) == (S.QUEUED, None, 1)
    assert pool.statistics().handed_back == 1
    assert stepkit.cancelled == ["a"]
    assert await eng.locks.list() == []
    assert job.run_id is not None
    assert (await eng.get_run(job.run_id)).state is RunState.CANCELLED
    # The next worker runs it again.
    stepkit.gate("started").set()
    second = eng.worker(burst=True, job_timeout=0.05)
    await second.run()
    assert (await eng.get_job(job_id)).attempts == 2


async def test_shutdown_lets_jobs_finish_within_the_grace_period(eng: Engine) -> None:
    job_id = await eng.submit(plan("p", call("a", "probe", group="g", hold="go")))
    async with anyio.create_task_group() as tg:
        pool = eng.worker(grace=30.0)
        await tg.start(pool.run)
        await until(lambda: stepkit.active["g"] != 0)
        pool.stop()
        stepkit.gate("go").set()
    assert (await eng.get_job(job_id)).status is S.SUCCEEDED
    assert pool.statistics().handed_back == 0


async def test_a_cancelled_worker_task_hands_its_jobs_back(eng: Engine) -> None:
    job_id = await eng.submit(plan("p", call("a", "open_gate_and_wait", name="started", me="a")))
    async with anyio.create_task_group() as tg:
        await tg.start(eng.worker().run)
        with anyio.fail_after(5):
            await stepkit.gate("started").wait()
        tg.cancel_scope.cancel()  # the application stops its own task group
    job = await eng.get_job(job_id)
    assert (job.status, job.worker_id) == (S.QUEUED, None)


async def test_finished_jobs_past_their_ttl_are_deleted_in_one_pass(
    eng: Engine, manual_clock: ManualClock
) -> None:
    old = await eng.submit(plan("p", call("a", "noop")))
    await eng.worker(burst=True).run()
    manual_clock.advance(100)
    recent = await eng.submit(plan("p", call("a", "noop")))
    await eng.worker(burst=True).run()
    pool = eng.worker(burst=True, job_ttl=50.0)
    await pool.run()
    assert pool.statistics().purged == 1
    assert [j.id for j in await eng.list_jobs()] == [recent]
    with pytest.raises(JobNotFoundError):
        await eng.get_job(old)


async def test_a_payload_of_an_unknown_version_fails_the_job_clearly(eng: Engine) -> None:
    job = AsyncJob.new(plan("p", call("a", "noop")), eng.clock.now())
    future = job.payload.replace('"version":1', '"version":9')
    await eng.store.enqueue_jobs([job.model_copy(update={"payload": future})])
    await eng.worker(burst=True).run()
    stored = await eng.get_job(job.id)
    assert stored.status is S.FAILED
    assert "job payload version 9 is not supported" in (stored.error_message or "")


async def test_the_claim_takes_the_runs_plan_lock_and_the_run_holds_it(eng: Engine) -> None:
    """The worker's claim takes each job's `plan:` lock in its own transaction; the run holds
    it from its first step (announced as acquired, released with the run's end), so no run
    of a worker acquires a plan lock on its own."""
    ids = [await eng.submit(plan(f"lk{i}", call("a", "noop"))) for i in range(3)]
    with eng.events() as events:
        await eng.worker(concurrency=3, burst=True).run()
        seen = []
        while True:
            try:
                seen.append(events.receive_nowait())
            except anyio.WouldBlock:
                break
    stats = eng.locks.statistics()
    assert (stats.attempts, stats.acquired, stats.released) == (0, 3, 3)
    assert await eng.locks.list() == []
    runs = {(await eng.get_job(i)).run_id for i in ids}
    locked = {e.run_id for e in seen if e.type == "lock.acquired"}
    released = {e.run_id for e in seen if e.type == "lock.released"}
    assert None not in runs
    assert runs == locked == released


@pytest.mark.parametrize("bad", ["version", "plan name"])
async def test_a_plan_lock_the_run_never_takes_is_released(eng: Engine, bad: str) -> None:
    """A job whose payload cannot run (or names another plan than its row) gives back the
    plan lock its claim took: the plan is not blocked until the lock expires."""
    job = AsyncJob.new(plan("p", call("a", "noop")), eng.clock.now())
    if bad == "version":
        job = job.model_copy(update={"payload": job.payload.replace('"version":1', '"version":9')})
    else:
        job = job.model_copy(update={"plan_name": "other"})
    await eng.store.enqueue_jobs([job])
    await eng.worker(burst=True).run()
    stored = await eng.get_job(job.id)
    assert stored.status is (S.FAILED if bad == "version" else S.SUCCEEDED)
    assert await eng.locks.list() == []


async def test_heartbeats_register_the_worker_for_diagnostics(
    eng: Engine, manual_clock: ManualClock
) -> None:
    async with anyio.create_task_group() as tg:
        pool = eng.worker()
        await tg.start(pool.run)
        (health,) = (await eng.jobs.diagnostics(stale_locks=0)).workers
        assert health.record.id == pool.worker_id
        manual_clock.advance(STUCK + BEAT)  # its heartbeat is due; until it runs it looks lost
        assert (await eng.jobs.diagnostics(stale_locks=0)).lost_workers()
        await until(lambda: pool.statistics().last_heartbeat == manual_clock.now())
        assert not (await eng.jobs.diagnostics(stale_locks=0)).problems()
        pool.stop()
