"""Background-job throughput: enqueue and process no-op jobs with ONE worker process.

For each backend (SQLite file, PostgreSQL in a temporary database):

1. enqueue: `Engine.submit` one job after another (one transaction each), in this process;
2. process: `python -m engine worker --burst --concurrency 16 --quiet` as a child process,
   until the queue is empty. The processing rate is the span from the first claim to the last
   finish as recorded in the store (the worker at work); printed beside it, the rate over the
   process's whole wall time, which adds ~0.5 s of interpreter start, imports and exit, and
   the worker's CPU time per job (both threads; less sensitive than rates to a noisy machine,
   but it includes start-up).

Each backend runs `--rounds` times (default 3), each on a fresh database; each round is
printed, then the median and the range (these machines are noisy: one round can be 30% off).

A no-op job is a plan with one `call` step of a no-op coroutine, and the whole path counts:
claim, plan lock, run record (run + subplan + events through the recorder), states, completion.
Each job has its own plan name: runs of ONE plan exclude each other by design (the `plan:` lock),
so jobs of one plan name run one after another.

Also printed, to show where the time goes:
- "memory": the same jobs processed in-process on the memory store (no database at all): the
  ceiling of the run path itself in one process;
- "queue only": the queue's own work on each backend, in-process, with the plan runs stubbed
  out (claim batches with the plan locks they take, heartbeats, batched completions; no run
  record, no lock release).

Usage:

    python benchmarks/job_throughput.py [--jobs 5000] [--concurrency 16] [--only sqlite|postgresql]
                                         [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from engine.app import Engine
from engine.config import load_settings
from engine.domain.job import AsyncJob
from engine.domain.plan import Plan
from engine.domain.results import RunResult
from engine.domain.states import AsyncJobStatus, RunState
from engine.worker import WorkerPool, WorkerSettings
from store_overhead import postgres_database

NOOP_MODULE = "async def noop() -> None:\n    return None\n"


def plans(folder: Path, count: int) -> list[Plan]:
    source = folder / "plan.yaml"
    return [
        Plan.model_validate(
            {"name": f"noop-{i:05d}", "subplans": [{"name": "a", "call": "bench_noop:noop"}]}
        ).with_source(source)
        for i in range(count)
    ]


def settings_for(folder: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["ENGINE_DATABASE_URL"] = url
    env["ENGINE_DATA_DIR"] = str(folder / ".engine")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    return env


async def enqueue(url: str, folder: Path, count: int) -> float:
    env = settings_for(folder, url)
    settings = load_settings(environ=env, cwd=folder)
    todo = plans(folder, count)
    async with Engine(settings, database_url=url) as eng:
        started = time.perf_counter()
        for plan in todo:
            await eng.submit(plan)
        return count / (time.perf_counter() - started)


def process(url: str, folder: Path, concurrency: int) -> tuple[float, float]:
    """Run the worker to the end of the queue: its wall time and its CPU time (all threads,
    start-up included), in seconds."""
    command = [sys.executable, "-m", "engine", "worker", "--burst", "--quiet"]
    command += ["--concurrency", str(concurrency)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=folder, env=settings_for(folder, url), capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({done.returncode}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


async def check(url: str, folder: Path, count: int) -> float:
    """Every job succeeded once; the span from the first claim to the last finish."""
    settings = load_settings(environ=settings_for(folder, url), cwd=folder)
    async with Engine(settings, database_url=url) as eng:
        jobs = await eng.list_jobs()
    assert len(jobs) == count, len(jobs)
    bad = [j for j in jobs if j.status is not AsyncJobStatus.SUCCEEDED or j.attempts != 1]
    assert not bad, bad[:3]
    first = min(j.started_at for j in jobs if j.started_at is not None)
    last = max(j.finished_at for j in jobs if j.finished_at is not None)
    return (last - first).total_seconds()


@dataclass(frozen=True)
class Round:
    enqueue: float  # jobs/s
    steady: float  # jobs/s, first claim to last finish
    whole: float  # jobs/s, the worker process's wall time (start-up and exit included)
    startup: float  # seconds of the wall time outside the first-claim-to-last-finish span
    cpu_per_job: float  # seconds

    def show(self, name: str) -> str:
        return (
            f"{name:<11} enqueue {self.enqueue:8,.0f} jobs/s | process {self.steady:8,.0f} "
            f"jobs/s first claim to last finish | {self.whole:8,.0f} jobs/s with the worker's "
            f"{self.startup:.2f}s of start-up and exit | worker CPU "
            f"{self.cpu_per_job * 1e6:,.0f} us/job incl. start-up"
        )


async def measure(url: str, folder: Path, count: int, concurrency: int) -> Round:
    rate_in = await enqueue(url, folder, count)
    wall, cpu = process(url, folder, concurrency)
    span = await check(url, folder, count)
    return Round(rate_in, count / span, count / wall, wall - span, cpu / count)


def summary(name: str, rounds: list[Round]) -> None:
    """The median round's figures (by the processing rate), and the spread."""
    if len(rounds) == 1:
        return
    steady = sorted(r.steady for r in rounds)
    whole = sorted(r.whole for r in rounds)
    print(
        f"{name:<11} median of {len(rounds)}: process {median(steady):8,.0f} jobs/s first claim "
        f"to last finish (range {steady[0]:,.0f}-{steady[-1]:,.0f}) | {median(whole):,.0f} "
        f"jobs/s with start-up (range {whole[0]:,.0f}-{whole[-1]:,.0f}) | target >= 2,000"
    )


async def in_memory(folder: Path, count: int, concurrency: int) -> None:
    settings = load_settings(environ=settings_for(folder, "memory://"), cwd=folder)
    async with Engine(settings) as eng:
        for plan in plans(folder, count):
            await eng.submit(plan)
        started = time.perf_counter()
        pool = eng.worker(concurrency=concurrency, burst=True)
        await pool.run()
        elapsed = time.perf_counter() - started
    assert pool.statistics().succeeded == count
    print(f"{'memory':<11} in-process ceiling (no database): {count / elapsed:8,.0f} jobs/s")


class _StubRun:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.run_id = f"stub-{id(self)}"

    async def execute(self, *, on_ended: Any = None, **_: Any) -> None:
        if on_ended is not None:
            on_ended()

    def result(self) -> RunResult:
        return RunResult(
            run_id=self.run_id, plan=self.plan.name, state=RunState.COMPLETED, subplans={}
        )


class _QueueOnly:
    """An engine whose runs do nothing: what is left is the queue's own cost."""

    def __init__(self, eng: Engine) -> None:
        self.clock, self.store, self.jobs = eng.clock, eng.store, eng.jobs
        self.settings, self.locks = eng.settings, eng.locks

    def prepare_run(self, plan: Plan, **_: Any) -> _StubRun:
        return _StubRun(plan)  # a plan lock its claim took is left to expire

    async def abandon_lost_runs(self) -> list[str]:
        return []


async def queue_only(name: str, url: str, folder: Path, count: int, concurrency: int) -> None:
    settings = load_settings(environ=settings_for(folder, url), cwd=folder)
    async with Engine(settings, database_url=url) as eng:
        await eng.store.enqueue_jobs(
            [AsyncJob.new(p, eng.clock.now()) for p in plans(folder, count)]
        )
        stub: Any = _QueueOnly(eng)  # duck-typed: only what the pool uses
        pool = WorkerPool(stub, WorkerSettings(concurrency=concurrency, burst=True))
        started = time.perf_counter()
        await pool.run()
        elapsed = time.perf_counter() - started
    assert pool.statistics().succeeded == count
    print(f"{name:<11} queue only (runs stubbed out, in-process): {count / elapsed:8,.0f} jobs/s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument(
        "--rounds", type=int, default=3, help="fresh database, enqueue and process, N times"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench_noop.py").write_text(NOOP_MODULE)
        sys.path.insert(0, str(folder))
        print(
            f"{args.jobs} no-op jobs, one worker process, concurrency {args.concurrency}, "
            f"{args.rounds} round(s) per backend"
        )
        if args.only is None:
            await in_memory(folder, args.jobs, args.concurrency)
        if args.only in (None, "sqlite"):
            sqlite_folder = folder / "sqlite"
            sqlite_folder.mkdir()
            (sqlite_folder / "bench_noop.py").write_text(NOOP_MODULE)
            rounds = []
            for i in range(args.rounds):
                url = f"sqlite+aiosqlite:///{sqlite_folder / f'jobs-{i}.db'}"
                rounds.append(await measure(url, sqlite_folder, args.jobs, args.concurrency))
                print(rounds[-1].show("sqlite"), flush=True)
            summary("sqlite", rounds)
            url = f"sqlite+aiosqlite:///{sqlite_folder / 'queue.db'}"
            await queue_only("sqlite", url, sqlite_folder, args.jobs, args.concurrency)
        if args.only in (None, "postgresql"):
            rounds = []
            for _ in range(args.rounds):
                async with postgres_database() as pg_url:
                    if pg_url is None:
                        break
                    rounds.append(await measure(pg_url, folder, args.jobs, args.concurrency))
                    print(rounds[-1].show("postgresql"), flush=True)
            summary("postgresql", rounds)
            async with postgres_database() as pg_url:
                if pg_url is not None:
                    await queue_only("postgresql", pg_url, folder, args.jobs, args.concurrency)


if __name__ == "__main__":
    asyncio.run(main())
