"""LISTEN/NOTIFY: an idle worker on PostgreSQL wakes when ANOTHER process queues a job.

The pool runs on a ManualClock that is never advanced, so it cannot poll again on its own: only
a notification can make it look at the queue. The job is submitted through a second engine (its
own connections, its own in-process services), as another process would.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from engine import Engine
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus
from engine.store import open_store
from engine.testing import ManualClock, settings_for_test

pytestmark = [pytest.mark.timeout(30)]


def a_plan(name: str) -> Plan:
    return Plan.model_validate({"name": name, "subplans": [{"name": "a", "call": "stepkit:noop"}]})


async def finished(eng: Engine, job_id: str) -> AsyncJobStatus:
    with anyio.fail_after(10):
        while True:
            job = await eng.get_job(job_id)
            if job.terminal:
                return job.status
            await anyio.sleep(0.01)


@pytest.mark.postgres
async def test_a_job_queued_elsewhere_wakes_an_idle_worker_at_once(
    postgres_url: str, tmp_path: Path
) -> None:
    settings = settings_for_test(tmp_path)
    clock = ManualClock()
    async with (
        Engine(settings, database_url=postgres_url, clock=clock) as worker_side,
        Engine(settings, database_url=postgres_url) as submitter,
        anyio.create_task_group() as tg,
    ):
        pool = worker_side.worker(concurrency=2)
        await tg.start(pool.run)
        assert pool.statistics().notifications
        await anyio.wait_all_tasks_blocked()  # idle: waiting on the clock that never moves
        job_id = await submitter.submit(a_plan("notified"))
        assert await finished(submitter, job_id) is AsyncJobStatus.SUCCEEDED
        assert pool.statistics().succeeded == 1
        pool.stop()


async def test_sqlite_and_memory_stores_say_they_do_not_notify(tmp_path: Path) -> None:
    for url in (f"sqlite+aiosqlite:///{tmp_path / 'n.db'}", "memory://"):
        store = await open_store(url)
        try:
            async with store.job_notifications(lambda: None) as active:
                assert active is False
        finally:
            await store.close()


@pytest.mark.postgres
async def test_a_worker_that_cannot_listen_still_polls(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.store.sql import jobs as sql_jobs

    async def refuse(self: object, wake: object) -> None:
        return None

    monkeypatch.setattr(sql_jobs.SqlJobs, "_listen", refuse)
    settings = settings_for_test(tmp_path, **{"async.poll_interval": 0.05})
    async with Engine(settings, database_url=postgres_url) as eng, anyio.create_task_group() as tg:
        other = await open_store(postgres_url)
        try:
            pool = eng.worker(concurrency=1)
            await tg.start(pool.run)
            assert not pool.statistics().notifications
            from engine.domain.job import AsyncJob

            job = AsyncJob.new(a_plan("polled"), eng.clock.now())
            await other.enqueue_jobs([job])  # no in-process wake-up: found by polling
            assert await finished(eng, job.id) is AsyncJobStatus.SUCCEEDED
            pool.stop()
        finally:
            await other.close()
