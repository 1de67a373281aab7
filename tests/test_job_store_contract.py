"""The job part of the store port: one suite, run against MemoryStore, SQLite and PostgreSQL,
plus claim atomicity under real contention (many connections claiming from one queue)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from engine.domain.job import AsyncJob, Claimed, JobBeat, JobOutcome, WorkerRecord
from engine.domain.lock import LockKind, LockRecord, Owner, Resource, RunLocking
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus
from engine.errors import StoreError
from engine.ports.store import Store
from engine.store import open_store

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
PLAN = Plan.model_validate({"name": "nightly", "subplans": [{"name": "a", "call": "m:f"}]})
S = AsyncJobStatus


def jobs(n: int, *, max_attempts: int = 3) -> list[AsyncJob]:
    return [AsyncJob.new(PLAN, T0, max_attempts=max_attempts) for _ in range(n)]


def worker(worker_id: str = "w1", at: datetime = T0) -> WorkerRecord:
    return WorkerRecord(worker_id, "host", 1, T0, at, concurrency=4)


def outcome(
    job: AsyncJob, status: S = S.SUCCEEDED, *, result: str | None = None, run_id: str | None = None
) -> JobOutcome:
    assert job.worker_id is not None
    at = T0 + timedelta(1)
    return JobOutcome(job.id, job.worker_id, job.attempts, status, at, result=result, run_id=run_id)


async def get(store: Store, job_id: str) -> AsyncJob:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def test_enqueued_jobs_read_back_whole(store: Store) -> None:
    (job,) = jobs(1)
    await store.enqueue_jobs([job])
    assert await store.get_job(job.id) == job
    assert await store.get_job("nope") is None
    with pytest.raises(StoreError):
        await store.enqueue_jobs([job])


async def test_claim_takes_the_oldest_queued_jobs_and_sets_the_token(store: Store) -> None:
    new = jobs(5)
    await store.enqueue_jobs(new)
    claimed = await store.claim_jobs("w1", T0, 3)
    assert [j.id for j in claimed] == sorted(j.id for j in new)[:3]
    for job in claimed:
        assert (job.status, job.worker_id, job.attempts) == (S.RUNNING, "w1", 1)
        assert job.started_at == job.last_heartbeat == T0
    rest = await store.claim_jobs("w2", T0, 10)
    assert len(rest) == 2
    assert await store.claim_jobs("w3", T0, 10) == []
    counts = await store.count_jobs()
    assert counts == {**dict.fromkeys(S, 0), S.RUNNING: 5}


async def test_outcomes_are_fenced_by_worker_and_token(store: Store) -> None:
    await store.enqueue_jobs(jobs(1))
    (job,) = await store.claim_jobs("w1", T0, 1)
    stale = outcome(job.model_copy(update={"attempts": 0}))
    other = outcome(job.model_copy(update={"worker_id": "w2"}))
    assert await store.finish_jobs([stale, other]) == []
    assert (await get(store, job.id)).status is S.RUNNING
    done = outcome(job, result='{"state":"completed"}', run_id="01J00000000000000000000000")
    assert await store.finish_jobs([done]) == [job.id]
    stored = await store.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.run_id, stored.result) == (
        S.SUCCEEDED,
        "01J00000000000000000000000",
        '{"state":"completed"}',
    )
    assert stored.finished_at == T0 + timedelta(1)
    # A finished job takes no second outcome.
    assert await store.finish_jobs([outcome(job, S.FAILED)]) == []


async def test_a_job_handed_back_is_queued_again_and_the_old_token_is_dead(store: Store) -> None:
    await store.enqueue_jobs(jobs(1))
    (first,) = await store.claim_jobs("w1", T0, 1)
    assert await store.finish_jobs([outcome(first, S.QUEUED)]) == [first.id]
    back = await store.get_job(first.id)
    assert back is not None
    assert (back.status, back.worker_id, back.finished_at) == (S.QUEUED, None, None)
    (second,) = await store.claim_jobs("w1", T0, 1)
    assert second.attempts == 2
    # The same worker's first attempt can no longer write.
    assert await store.finish_jobs([outcome(first, S.FAILED)]) == []
    assert await store.finish_jobs([outcome(second)]) == [second.id]


async def test_finish_and_claim_applies_the_outcomes_then_claims(store: Store) -> None:
    first, second, third = sorted(jobs(3), key=lambda j: j.id)
    await store.enqueue_jobs([first, second, third])
    (a,) = await store.claim_jobs("w1", T0, 1)
    stale = outcome(a.model_copy(update={"attempts": 0}))
    answer = await store.finish_and_claim([outcome(a), stale], "w1", T0, 5)
    assert answer.applied == [a.id]  # the stale one was fenced off
    assert (await get(store, a.id)).status is S.SUCCEEDED
    claimed = answer.jobs
    assert [j.id for j in claimed] == [second.id, third.id]
    assert all((j.status, j.worker_id, j.attempts) == (S.RUNNING, "w1", 1) for j in claimed)
    assert answer.locked == frozenset()  # no `locking`: no lock taken
    # Without outcomes it is a claim; with an empty queue it still writes the outcomes.
    assert await store.finish_and_claim([], "w1", T0, 5) == Claimed([], [])
    done = [outcome(j, S.FAILED) for j in claimed]
    answer = await store.finish_and_claim(done, "w1", T0, 5)
    assert (sorted(answer.applied), answer.jobs) == (sorted(o.job_id for o in done), [])
    counts = await store.count_jobs()
    assert counts == {**dict.fromkeys(S, 0), S.SUCCEEDED: 1, S.FAILED: 2}


async def test_a_job_handed_back_by_finish_and_claim_can_be_claimed_by_it(store: Store) -> None:
    await store.enqueue_jobs(jobs(1))
    (job,) = await store.claim_jobs("w1", T0, 1)
    answer = await store.finish_and_claim([outcome(job, S.QUEUED)], "w1", T0, 1)
    assert answer.applied == [job.id]
    assert [(j.id, j.attempts) for j in answer.jobs] == [(job.id, 2)]


def plan_jobs(*names: str) -> list[AsyncJob]:
    """One queued job per name, in this order (oldest first), each of the plan so named."""
    return [AsyncJob.new(PLAN.model_copy(update={"name": name}), T0) for name in names]


def locking(n: int, ttl: float = 60.0) -> RunLocking:
    return RunLocking(tuple(f"01RUN{i:021d}" for i in range(n)), "host", 7, ttl)


@pytest.mark.parametrize("outcomes", [None, S.SUCCEEDED, S.QUEUED])
async def test_a_claim_takes_the_plan_locks_of_its_jobs_runs(
    store: Store, outcomes: S | None
) -> None:
    """With `locking`, the i-th job claimed gets its run's `plan:` lock for `run_ids[i]`, in the
    claim's own transaction; the oldest job of a plan gets it, and a plan whose lock another
    owner holds gets none (those jobs wait for it as every run does). With or without
    outcomes before it, a hand-back among them (PostgreSQL's transactional path) too."""
    finished: list[JobOutcome] = []
    if outcomes is not None:
        await store.enqueue_jobs(plan_jobs("done"))
        finished = [outcome(j, outcomes) for j in await store.claim_jobs("w1", T0, 1)]
    busy = LockRecord.claim(Resource(LockKind.PLAN, "busy"), Owner.named("other"), T0, 60)
    assert await store.acquire_lock(busy) is not None
    new = plan_jobs("a", "b", "a", "busy", "c")
    await store.enqueue_jobs(new)
    if outcomes is S.QUEUED:  # the job handed back is the oldest queued one: claimed again
        answer = await store.finish_and_claim(finished, "w1", T0, 1, locking=locking(1))
        assert answer.applied == [o.job_id for o in finished]
        assert [j.id for j in answer.jobs] == [o.job_id for o in finished]
        assert answer.locked == {finished[0].job_id}
        finished = []
    run_locks = locking(4)
    answer = await store.finish_and_claim(finished, "w1", T0, 4, locking=run_locks)
    assert answer.applied == [o.job_id for o in finished]
    assert [j.id for j in answer.jobs] == [j.id for j in new[:4]]
    a, b = new[:2]
    assert answer.locked == {a.id, b.id}
    for i, name in ((0, "a"), (1, "b")):
        held = await store.get_lock(Resource(LockKind.PLAN, name))
        assert held is not None
        claim = run_locks.claim(i, name, T0)
        assert (held.owner_id, held.run_id, held.depth) == (claim.owner_id, run_locks.run_ids[i], 1)
        assert (held.acquired_at, held.expires_at) == (T0, claim.expires_at)
        assert (held.host, held.pid) == ("host", 7)
    assert (await store.get_lock(Resource(LockKind.PLAN, "busy"))) == busy
    # An expired lock of another owner is taken over; the claim's own run id re-enters nothing.
    later = T0 + timedelta(seconds=120)
    answer = await store.finish_and_claim([], "w1", later, 4, locking=locking(4))
    (c,) = answer.jobs
    assert answer.locked == {c.id}
    assert (await store.get_lock(Resource(LockKind.PLAN, "c"))) is not None


async def test_heartbeat_covers_the_workers_running_jobs_and_reports_cancel(store: Store) -> None:
    await store.enqueue_jobs(jobs(3))
    a, b = await store.claim_jobs("w1", T0, 2)
    (c,) = await store.claim_jobs("w2", T0, 1)
    cancelled = await store.request_cancel(b.id, T0)
    assert cancelled is not None
    assert (cancelled.status, cancelled.cancel_requested) == (S.RUNNING, True)
    later = T0 + timedelta(seconds=5)
    beats = await store.heartbeat(worker("w1", later))
    expected = [JobBeat(a.id, 1, False), JobBeat(b.id, 1, True)]
    assert beats == sorted(expected, key=lambda x: x.job_id)
    assert (await get(store, a.id)).last_heartbeat == later
    assert (await get(store, c.id)).last_heartbeat == T0
    assert [w.id for w in await store.list_workers()] == ["w1"]
    await store.heartbeat(worker("w1", later + timedelta(1)))
    (w1,) = await store.list_workers()
    assert w1.last_heartbeat == later + timedelta(1)
    assert await store.forget_workers(T0, worker_id="w1") == 1
    assert await store.list_workers() == []


async def test_cancel_a_queued_job_at_once_and_a_finished_one_not_at_all(store: Store) -> None:
    a, b = jobs(2)
    await store.enqueue_jobs([a, b])
    done = await store.request_cancel(a.id, T0)
    assert done is not None
    assert (done.status, done.finished_at) == (S.CANCELLED, T0)
    assert await store.request_cancel(a.id, T0) == done
    assert await store.request_cancel("missing", T0) is None
    (claimed,) = await store.claim_jobs("w1", T0, 5)
    assert claimed.id == b.id  # a cancelled job is never claimed


async def test_stuck_jobs_are_requeued_failed_or_cancelled(store: Store) -> None:
    retry, last, asked, fresh = jobs(4, max_attempts=1)
    retry = retry.model_copy(update={"max_attempts": 2})
    await store.enqueue_jobs([retry, last, asked, fresh])
    claimed = {j.id: j for j in await store.claim_jobs("w1", T0, 3)}
    await store.request_cancel(asked.id, T0)
    await store.claim_jobs("w2", T0 + timedelta(seconds=50), 1)  # `fresh`, heartbeat later
    now = T0 + timedelta(seconds=61)
    assert [j.id for j in await store.list_stuck_jobs(now - timedelta(seconds=60))] == sorted(
        claimed
    )
    rescued = {j.id: j for j in await store.rescue_stuck_jobs(now, now - timedelta(seconds=60))}
    assert set(rescued) == set(claimed)
    assert rescued[retry.id].status is S.QUEUED
    assert rescued[retry.id].worker_id is None
    assert rescued[last.id].status is S.FAILED
    assert rescued[asked.id].status is S.CANCELLED
    message = rescued[last.id].error_message or ""
    assert "worker w1 was lost" in message
    assert "last seen 2030-01-02 03:04:05 UTC" in message
    assert (await get(store, fresh.id)).status is S.RUNNING
    # The old owner's outcome is fenced off after the rescue.
    assert await store.finish_jobs([outcome(claimed[retry.id])]) == []
    assert await store.rescue_stuck_jobs(now, now - timedelta(seconds=60)) == []


async def test_ttl_cleanup_deletes_only_old_finished_jobs(store: Store) -> None:
    old, recent, queued = jobs(3)
    await store.enqueue_jobs([old, recent, queued])
    a, b = await store.claim_jobs("w1", T0, 2)
    await store.finish_jobs([JobOutcome(a.id, "w1", 1, S.SUCCEEDED, T0)])
    await store.finish_jobs([JobOutcome(b.id, "w1", 1, S.FAILED, T0 + timedelta(days=2))])
    assert await store.delete_finished_jobs(T0 + timedelta(days=1)) == 1
    assert {j.id for j in await store.list_jobs()} == {b.id, queued.id}
    assert [j.id for j in await store.list_jobs(status=S.QUEUED)] == [queued.id]
    assert len(await store.list_jobs(limit=1)) == 1


async def _contend(stores: list[Store], claimers_per_store: int, total: int) -> list[str]:
    claimed: list[str] = []

    async def claimer(store: Store, name: str) -> None:
        while True:
            got = await store.claim_jobs(name, T0, 4)
            if not got:
                return
            claimed.extend(j.id for j in got)

    async with anyio.create_task_group() as tg:
        for i, store in enumerate(stores):
            for k in range(claimers_per_store):
                tg.start_soon(claimer, store, f"w{i}-{k}")
    return claimed


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_many_concurrent_claimers_claim_each_job_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'contend.db'}"
    else:
        make = request.getfixturevalue("postgres_database")
        from engine.store import upgrade

        url = make()
        await upgrade(url)
    # Separate stores = separate connection pools, as separate processes would have.
    stores = [await open_store(url) for _ in range(4)]
    try:
        new = jobs(400)
        await stores[0].enqueue_jobs(new)
        claimed = await _contend(stores, 3, len(new))
        assert sorted(claimed) == sorted(j.id for j in new)  # every job, each exactly once
        assert (await stores[0].count_jobs())[S.RUNNING] == len(new)
    finally:
        for store in stores:
            await store.close()
