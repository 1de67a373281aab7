"""Background jobs end to end through `python -m engine` in real processes: submit, run with
async.enabled, jobs list/show/cancel, diagnostics, several workers on one SQLite file and on
PostgreSQL (each job run exactly once), a worker killed with SIGKILL mid-job (its job recovered
by another), and SIGTERM handing a running job back."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from clitools import engine_env, pid_alive, run_engine, start_engine, wait_for
from engine.app import Engine
from engine.config import load_settings


def write_plan(folder: Path, name: str, step: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "subplans": [{"name": "step", **step}]}))
    return path


def marks(path: str, name: str, pause: float = 0.0) -> dict[str, Any]:
    return {"call": "jobkit:mark", "with": {"path": path, "name": name, "pause": pause}}


def block_once(marker: Path) -> dict[str, Any]:
    return {"call": "jobkit:block_once", "with": {"marker": str(marker)}}


def jobs_json(tmp_path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    listed = run_engine("jobs", "list", "--json", "--limit", "0", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)
    return found


def sqlite_status(db: Path, job_id: str) -> str | None:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute("SELECT status FROM engine_jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0] if row else None


def submit(tmp_path: Path, env: dict[str, str], plan: Path) -> str:
    done = run_engine("submit", str(plan), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert len(job_id) == 26, done.stdout
    return job_id


def test_submit_list_show_cancel_and_a_burst_worker(tmp_path: Path) -> None:
    env = engine_env(tmp_path)
    log = tmp_path / "marks.txt"
    first = submit(tmp_path, env, write_plan(tmp_path, "first", marks(str(log), "first")))
    queued = run_engine(
        "run",
        str(write_plan(tmp_path, "second", marks(str(log), "second"))),
        cwd=tmp_path,
        env={**env, "ENGINE_ASYNC_ENABLED": "true"},
    )
    assert queued.returncode == 0, queued.stderr
    second = queued.stdout.strip()
    doomed = submit(tmp_path, env, write_plan(tmp_path, "doomed", marks(str(log), "doomed")))

    cancelled = run_engine("jobs", "cancel", doomed, cwd=tmp_path, env=env)
    assert cancelled.returncode == 0
    assert cancelled.stdout.strip() == f"job {doomed} cancelled"
    listed = run_engine("jobs", "list", "--status", "queued", cwd=tmp_path, env=env)
    assert first in listed.stdout
    assert second in listed.stdout
    assert doomed not in listed.stdout
    healthy = run_engine("diagnostics", cwd=tmp_path, env=env)
    assert healthy.returncode == 0, healthy.stdout
    assert "2 queued" in healthy.stdout

    worker = run_engine("worker", "--burst", "--concurrency", "2", cwd=tmp_path, env=env)
    assert worker.returncode == 0, worker.stderr
    assert f"job {first} succeeded" in worker.stdout
    assert sorted(line.split()[0] for line in log.read_text().splitlines()) == ["first", "second"]

    shown = run_engine("jobs", "show", first, cwd=tmp_path, env=env)
    assert shown.returncode == 0
    assert "status     succeeded" in shown.stdout
    assert "attempts   1 of 3" in shown.stdout
    data = json.loads(run_engine("jobs", "show", first, "--json", cwd=tmp_path, env=env).stdout)
    runs = run_engine("runs", "show", data["run_id"], cwd=tmp_path, env=env)
    assert runs.returncode == 0, runs.stderr  # the job's run is recorded and linked
    missing = run_engine("jobs", "show", "01J00000000000000000000000", cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert "no job" in missing.stderr
    late = run_engine("jobs", "cancel", first, cwd=tmp_path, env=env)
    assert "succeeded already" in late.stdout


def enqueue(env: dict[str, str], plans: list[Path]) -> set[str]:
    """Submit many plans through the Python API (a CLI process per job would be slow)."""

    async def go() -> set[str]:
        settings = load_settings(environ=env, cwd=Path.cwd())
        async with Engine(settings, database_url=env["ENGINE_DATABASE_URL"]) as eng:
            return {await eng.submit(plan) for plan in plans}

    return anyio.run(go)


def run_workers(
    tmp_path: Path, env: dict[str, str], count: int, jobs: int
) -> tuple[list[dict[str, Any]], Counter[str]]:
    log = tmp_path / "marks.txt"
    folder = tmp_path / "plans"
    folder.mkdir()
    ids = enqueue(
        env,
        [write_plan(folder, f"job-{i}", marks(str(log), f"job-{i}", 0.05)) for i in range(jobs)],
    )
    workers = [
        start_engine("worker", "--burst", "--concurrency", "3", "--quiet", cwd=tmp_path, env=env)
        for _ in range(count)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    found = jobs_json(tmp_path, env)
    assert {j["id"] for j in found} == ids
    runs = Counter(line.split()[0] for line in log.read_text().splitlines())
    return found, runs


def assert_each_ran_once(found: list[dict[str, Any]], runs: Counter[str], jobs: int) -> None:
    assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in found), found
    assert runs == Counter({f"job-{i}": 1 for i in range(jobs)})


def test_two_workers_on_one_sqlite_file_run_each_job_exactly_once(tmp_path: Path) -> None:
    env = engine_env(tmp_path)
    found, runs = run_workers(tmp_path, env, count=2, jobs=30)
    assert_each_ran_once(found, runs, 30)


@pytest.mark.postgres
def test_three_workers_on_postgresql_run_each_job_exactly_once(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    url = postgres_database()
    env = engine_env(tmp_path, {"ENGINE_DATABASE_URL": url})
    upgraded = run_engine("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    found, runs = run_workers(tmp_path, env, count=3, jobs=45)
    assert_each_ran_once(found, runs, 45)
    assert len({j["worker_id"] for j in found}) >= 2  # the work was shared


FAST_BEATS = {
    # A lost worker's plan lock must expire before another worker can run that plan again.
    "ENGINE_LOCKS_PLAN_TTL": "1",
    "ENGINE_ASYNC_HEARTBEAT_INTERVAL": "0.1",
    "ENGINE_ASYNC_STUCK_AFTER": "1",
    "ENGINE_ASYNC_POLL_INTERVAL": "0.1",
}


def test_a_worker_killed_mid_job_has_its_job_recovered_by_another(tmp_path: Path) -> None:
    env = engine_env(tmp_path, FAST_BEATS)
    marker = tmp_path / "blocking"
    job_id = submit(
        tmp_path,
        env,
        write_plan(
            tmp_path, "once", {"call": "jobkit:block_once", "with": {"marker": str(marker)}}
        ),
    )
    first = start_engine("worker", cwd=tmp_path, env=env)
    try:
        wait_for(marker.exists, what="the first worker to start the job")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.communicate()

    def attention() -> bool:
        return run_engine("diagnostics", cwd=tmp_path, env=env).returncode == 1

    wait_for(attention, what="diagnostics to report the lost worker and its stuck job")
    second = start_engine("worker", cwd=tmp_path, env=env)
    try:
        wait_for(
            lambda: sqlite_status(tmp_path / "engine.db", job_id) == "succeeded",
            what="the second worker to recover the job",
        )
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=20)
        assert second.returncode == 0, err  # nothing of its own was handed back
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
    shown = json.loads(run_engine("jobs", "show", job_id, "--json", cwd=tmp_path, env=env).stdout)
    assert shown["attempts"] == 2
    assert shown["status"] == "succeeded"
    assert shown["error_message"] is None


def test_sigterm_hands_a_running_job_back_and_exits_143(tmp_path: Path) -> None:
    env = engine_env(tmp_path, FAST_BEATS)
    marker = tmp_path / "blocking"
    job_id = submit(
        tmp_path,
        env,
        write_plan(
            tmp_path, "held", {"call": "jobkit:block_once", "with": {"marker": str(marker)}}
        ),
    )
    proc = start_engine("worker", "--grace", "0.2", cwd=tmp_path, env=env)
    try:
        wait_for(marker.exists, what="the worker to start the job")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert not pid_alive(proc.pid)
    (job,) = jobs_json(tmp_path, env)
    assert (job["id"], job["status"], job["worker_id"], job["attempts"]) == (
        job_id,
        "queued",
        None,
        1,
    )
    with sqlite3.connect(tmp_path / "engine.db") as conn:
        assert conn.execute("SELECT count(*) FROM engine_locks").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM engine_workers").fetchone() == (0,)
    # A later worker finishes it (block_once returns the second time).
    done = run_engine("worker", "--burst", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert sqlite_status(tmp_path / "engine.db", job_id) == "succeeded"


def test_worker_flags_are_validated(tmp_path: Path) -> None:
    env = engine_env(tmp_path)
    bad = run_engine("worker", "--concurrency", "0", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "expected 1 or more" in bad.stderr
    bad = run_engine("jobs", "list", "--status", "exploded", cwd=tmp_path, env=env)
    assert bad.returncode == 2
