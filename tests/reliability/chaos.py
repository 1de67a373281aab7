"""Chaos: worker processes SIGKILLed at random while they process jobs. Nothing may be lost, and
no job may run twice at once.

Three worker processes on PostgreSQL (and two on one SQLite file) process 1,000 jobs. Each job
has a plan of its own (runs of one plan exclude each other) with one `run` step that appends
`<plan> start <time> <worker pid> <shell pid>` to a ledger file, sleeps 0.05-0.3 s, and appends
the matching `end` line. Every 1-2.5 s a driver SIGKILLs a random worker among those running a
job (so every kill lands mid-job) and starts a new one, for as long as jobs remain. A job is
targeted at most twice (else the last jobs would have every attempt killed and rightly fail as
poison jobs once their attempts run out). Heartbeats are fast and `async.stuck_after` short, so
the jobs of a killed worker are rescued within the run.

Checked at the end:

- every job is in the store and terminal; `lost` counts jobs missing, not terminal, not
  succeeded, or succeeded without one complete execution in the ledger;
- `duplicates` counts jobs executed twice at once (two executions in the ledger overlapping by
  more than the self-fencing window, `stuck_after / 2`), and jobs completed twice (two
  completed runs in the store, or two complete executions in the ledger) where the earlier
  completion was not by a worker that was then killed. A killed worker that finished a step but
  not the job's outcome makes the job run again (at least once, by design); that is counted as
  `reruns`, never as a duplicate;
- every worker that was not killed exits 0 on SIGTERM, and no worker printed a traceback.

Printed: jobs, kills, rescued (rescue log lines of the workers), duplicates, lost, and more.

    python tests/reliability/chaos.py [--jobs 1000] [--only sqlite|postgresql] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import re
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, run as a script

from clitools import engine_env
from engine.app import Engine
from engine.config import load_settings
from engine.domain.job import AsyncJob
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus, RunState
from engine.ports.store import Store
from reliability._suitekit import Child, Report, finish, postgres_database, skipped


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 1000
    workers: int = 3
    concurrency: int = 4
    #: Seconds between two kills (drawn uniformly).
    kill_every: tuple[float, float] = (1.0, 2.5)
    #: At most this many kills (None: for as long as jobs remain).
    max_kills: int | None = None
    #: A worker is a target only while it runs a job interrupted fewer times than this.
    kills_per_job: int = 2
    step_seconds: tuple[float, float] = (0.05, 0.3)
    heartbeat_interval: float = 0.25
    stuck_after: float = 3.0
    #: A killed worker's run holds its plan lock until this TTL runs out.
    plan_ttl: float = 3.0
    #: Every job must be terminal this many seconds after the workers started.
    deadline: float = 300.0
    seed: int = 0


@dataclass
class Execution:
    """One execution of a job's step, as the ledger tells it."""

    plan: str
    worker_pid: int
    shell_pid: int
    start: float
    end: float | None = None


@dataclass
class Fleet:
    """The worker processes, alive and killed."""

    folder: Path
    env: dict[str, str]
    concurrency: int
    alive: list[Child] = field(default_factory=list)
    killed: list[Child] = field(default_factory=list)
    exited: list[tuple[Child, int]] = field(default_factory=list)

    def start(self) -> None:
        name = f"worker-{len(self.alive) + len(self.killed) + len(self.exited) + 1}"
        argv = [sys.executable, "-m", "engine", "worker", "--quiet"]
        argv += ["--concurrency", str(self.concurrency), "--poll-interval", "0.2"]
        argv += ["--events", str(self.folder / f"{name}.events")]
        self.alive.append(Child(argv, cwd=self.folder, env=self.env, name=name))

    def kill(self, rng: random.Random, busy: set[int]) -> Child | None:
        """SIGKILL a random worker among those running a job (pids in `busy`), if any."""
        candidates = [child for child in self.alive if child.pid in busy]
        if not candidates:
            return None
        victim = rng.choice(candidates)
        self.alive.remove(victim)
        victim.kill()
        self.killed.append(victim)
        return victim

    def replace_the_dead(self) -> None:
        """A worker that exited on its own is reported (by its exit code) and replaced."""
        for child in [c for c in self.alive if not c.alive()]:
            self.alive.remove(child)
            self.exited.append((child, child.wait(0)))
            self.start()

    async def stop(self, store: Store) -> None:
        """SIGTERM every live worker once it is registered (a worker still starting up has no
        signal handler yet), and reap it."""
        with anyio.move_on_after(60):
            while True:
                registered = {w.pid for w in await store.list_workers()}
                if all(c.pid in registered or not c.alive() for c in self.alive):
                    break
                await anyio.sleep(0.05)
        for child in self.alive:
            self.exited.append((child, child.stop()))
        self.alive = []

    def everyone(self) -> list[Child]:
        return self.killed + [child for child, _ in self.exited] + self.alive


def step_command(plan: str, ledger: Path, seconds: float) -> str:
    where = shlex.quote(str(ledger))
    line = f"{plan} {{}} $(date +%s.%N) $PPID $$"
    start, end = line.format("start"), line.format("end")
    return f'echo "{start}" >> {where}; sleep {seconds:.3f}; echo "{end}" >> {where}'


def run_chaos(url: str, label: str, folder: Path, config: ChaosConfig) -> Report:
    """Run the chaos against the (upgraded) database at `url`; `folder` holds the ledger,
    the workers' output and their run logs."""
    return asyncio.run(_chaos(url, label, folder, config))


async def _chaos(url: str, label: str, folder: Path, config: ChaosConfig) -> Report:
    rng = random.Random(config.seed)
    report = Report(f"chaos on {label}")
    ledger = folder / "ledger.txt"
    ledger.touch()
    env = engine_env(
        folder,
        {
            "ENGINE_DATABASE_URL": url,
            "ENGINE_ASYNC_HEARTBEAT_INTERVAL": str(config.heartbeat_interval),
            "ENGINE_ASYNC_STUCK_AFTER": str(config.stuck_after),
            "ENGINE_ASYNC_POLL_INTERVAL": "0.2",
            "ENGINE_LOCKS_PLAN_TTL": str(config.plan_ttl),
            "ENGINE_KILL_GRACE": "1",
        },
    )
    durations = {
        f"chaos-{i:04d}": round(rng.uniform(*config.step_seconds), 3) for i in range(config.jobs)
    }
    settings = load_settings(environ=env, cwd=folder)
    fleet = Fleet(folder, env, config.concurrency)
    async with Engine(settings, database_url=url) as eng:
        ids = {}
        for name, seconds in durations.items():
            step = {"name": "work", "run": step_command(name, ledger, seconds)}
            plan = Plan.model_validate({"name": name, "subplans": [step]})
            ids[name] = await eng.submit(plan, workdir=folder, max_attempts=20)
        started = time.monotonic()
        for _ in range(config.workers):
            fleet.start()
        try:
            left = await drive(eng.store, fleet, rng, config, started)
        finally:
            await fleet.stop(eng.store)
        elapsed = time.monotonic() - started
        if left:
            report.violate(f"{left} job(s) still queued or running after {config.deadline:g}s")
        jobs = {job.id: job for job in await eng.store.list_jobs()}
        runs = await eng.store.list_runs()
    completed = Counter(r.plan_name for r in runs if r.state is RunState.COMPLETED)
    check(report, fleet, ids, jobs, completed, durations, ledger, config)
    report.figures["seconds"] = round(elapsed, 1)
    return report


async def drive(
    store: Store, fleet: Fleet, rng: random.Random, config: ChaosConfig, started: float
) -> int:
    """Kill and replace workers on schedule until no job is left (or the deadline); how many
    jobs were left."""
    next_kill = started + rng.uniform(*config.kill_every)
    deadline = started + config.deadline
    while True:
        counts = await store.count_jobs()
        left = counts[AsyncJobStatus.QUEUED] + counts[AsyncJobStatus.RUNNING]
        now = time.monotonic()
        if left == 0 or now > deadline:
            return left
        fleet.replace_the_dead()
        more = config.max_kills is None or len(fleet.killed) < config.max_kills
        if now >= next_kill and more:
            # Workers running a job not interrupted twice already: a job whose every attempt
            # is killed would rightly fail once its attempts are used up (a poison job).
            running = await store.list_jobs(status=AsyncJobStatus.RUNNING)
            busy = {
                int(job.worker_id.split(":")[-2])
                for job in running
                if job.worker_id and job.attempts <= config.kills_per_job
            }
            if fleet.kill(rng, busy) is not None:  # else: try again at the next look
                fleet.start()
                next_kill = now + rng.uniform(*config.kill_every)
        await anyio.sleep(0.2)  # the chaos' own pace (and a poll of the store's counts)


def warning_kinds(stderr: str) -> list[str]:
    """The warnings and errors a worker logged, with ids, times and numbers blanked out."""
    kinds = []
    for line in stderr.splitlines():
        message = line.partition(" WARNING ")[2] or line.partition(" ERROR ")[2]
        if message:
            message = re.sub(r"[0-9A-Z]{26}|\S+:\d+:[0-9A-Z]{26}|\d+(\.\d+)?", "#", message)
            kinds.append(message[:160])
    return kinds


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a worker's `--events` file (a killed worker's last line may be cut)."""
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def read_ledger(ledger: Path, report: Report) -> dict[str, list[Execution]]:
    """Plan name -> its executions, in start order."""
    executions: dict[tuple[str, int], Execution] = {}
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5 or parts[1] not in ("start", "end"):
            report.violate(f"ledger: malformed line {line!r}")
            continue
        plan, kind, at = parts[0], parts[1], float(parts[2])
        worker_pid, shell_pid = int(parts[3]), int(parts[4])
        key = (plan, shell_pid)
        if kind == "start":
            executions[key] = Execution(plan, worker_pid, shell_pid, at)
        elif key in executions:
            executions[key].end = at
        else:
            report.violate(f"ledger: an end without a start: {line!r}")
    by_plan: dict[str, list[Execution]] = defaultdict(list)
    for execution in sorted(executions.values(), key=lambda e: e.start):
        by_plan[execution.plan].append(execution)
    return by_plan


@dataclass
class Tally:
    lost: int = 0
    duplicates: int = 0
    reruns: int = 0
    overlapping: int = 0
    interrupted: int = 0
    worst_overlap: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)


def check(
    report: Report,
    fleet: Fleet,
    ids: dict[str, str],
    jobs: dict[str, AsyncJob],
    completed_runs: Counter[str],
    durations: dict[str, float],
    ledger: Path,
    config: ChaosConfig,
) -> None:
    executions = read_ledger(ledger, report)
    killed = {child.pid: child.killed_at or 0.0 for child in fleet.killed}
    # A step whose worker was killed right after starting it may read its parent as the
    # reaper (pid 1, or a subreaper) instead: an orphan from birth, of a killed worker.
    known = {child.pid for child in fleet.everyone()}
    for e in itertools.chain.from_iterable(executions.values()):
        if e.worker_pid not in known:
            killed[e.worker_pid] = -math.inf
    tally = Tally()
    for plan, job_id in ids.items():
        judge(
            report,
            tally,
            plan,
            jobs.get(job_id),
            executions.get(plan, []),
            completed_runs.get(plan, 0),
            killed,
            # An execution without an end was stopped early: it ended before its natural end.
            durations[plan] + 0.2,
            config.stuck_after / 2,
        )
    if unknown := set(executions) - set(ids):
        report.violate(f"ledger: executions of unknown plans {sorted(unknown)[:5]}")

    # What the workers wrote: each applied job transition is one `job.state` event.
    transitions = Counter[tuple[str, str]]()
    warnings = Counter[str]()
    for child in fleet.everyone():
        for event in read_events(child.folder_file("events")):
            if event.get("type") == "job.state":
                transitions[event["job_id"], f"{event.get('from')}->{event['to']}"] += 1
        err = child.stderr()
        warnings.update(warning_kinds(err))
        if "Traceback" in err:
            report.violate(f"{child.name} printed a traceback:\n{err[-2000:]}")
    for child, code in fleet.exited:
        if code != 0:
            report.violate(f"{child.name} exited {code}: {child.stderr()[-1000:]}")

    rescued = sum(n for (_, change), n in transitions.items() if change == "running->queued")
    for job_id in ids.values():
        if (times := transitions[job_id, "running->succeeded"]) > 1:
            tally.duplicates += 1
            report.violate(f"job {job_id}: recorded succeeded {times} times")
    report.figures.update(
        jobs=len(ids),
        kills=len(fleet.killed),
        rescued=rescued,
        duplicates=tally.duplicates,
        lost=tally.lost,
    )
    report.figures["interrupted executions"] = tally.interrupted
    report.figures["reruns after a kill"] = tally.reruns
    report.figures["overlaps within the window"] = tally.overlapping
    report.figures["worst overlap"] = f"{tally.worst_overlap:.2f}s"
    # A killed worker's runs stay `running` until a worker fails them as lost (expected here).
    lost_runs = sum(n for kind, n in warnings.items() if "its process was lost" in kind)
    report.figures["runs failed as lost"] = lost_runs
    report.figures["worker warnings"] = warnings.total() - lost_runs
    report.notes.extend(f"{n} x {kind}" for kind, n in warnings.most_common())
    if set(tally.statuses) != {"succeeded"}:
        report.notes.append(f"statuses: {dict(tally.statuses)}")
    if not report.ok:
        report.notes.append(f"seed {config.seed}")


def judge(
    report: Report,
    tally: Tally,
    plan: str,
    job: AsyncJob | None,
    runs: list[Execution],
    stored: int,
    killed: dict[int, float],
    longest: float,
    window: float,
) -> None:
    """One job: terminal and succeeded, executed at most once at a time, completed at most once
    except after a kill. `stored`: its completed runs in the store."""
    complete = [e for e in runs if e.end is not None]
    by_killed = [e for e in complete if e.worker_pid in killed]
    tally.interrupted += sum(
        1
        for e in runs
        if e.worker_pid in killed
        and (killed[e.worker_pid] == -math.inf or e.start <= killed[e.worker_pid])
        and (e.end is None or e.end > killed[e.worker_pid])
    )
    if job is None:
        tally.lost += 1
        report.violate(f"job of {plan} is not in the store")
        return
    tally.statuses[job.status.value] += 1
    if job.status is not AsyncJobStatus.SUCCEEDED or not complete:
        tally.lost += 1
        report.violate(
            f"job {job.id} ({plan}) is {job.status.value} after {job.attempts} attempt(s), "
            f"{len(complete)} complete execution(s): {job.error_message!r}"
        )
        return
    duplicate = False
    for first, second in itertools.combinations(runs, 2):
        first_end = first.end if first.end is not None else first.start + longest
        second_end = second.end if second.end is not None else second.start + longest
        overlap = min(first_end, second_end) - second.start
        if overlap <= 0:
            continue
        tally.worst_overlap = max(tally.worst_overlap, overlap)
        if overlap <= window:
            tally.overlapping += 1
            continue
        duplicate = True
        report.violate(
            f"job {job.id} ({plan}): executions by workers {first.worker_pid} and "
            f"{second.worker_pid} overlapped for {overlap:.2f}s (window {window:g}s)"
        )
    # Completed more than once: only a killed worker's completion may be followed by another.
    survivors = len(complete) - len(by_killed)
    if survivors > 1 or stored > 1 + len(by_killed):
        duplicate = True
        report.violate(
            f"job {job.id} ({plan}) completed twice: {stored} completed run(s), "
            f"{len(complete)} complete execution(s), {len(by_killed)} by killed workers"
        )
    elif len(complete) > 1 or stored > 1:
        tally.reruns += 1
    if stored > len(complete):
        report.violate(f"job {job.id} ({plan}): {stored} completed runs but {len(complete)} steps")
    tally.duplicates += duplicate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))
    args = parser.parse_args()
    print(f"chaos: {args.jobs} jobs per backend, seed {args.seed}", flush=True)
    reports = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            folder = Path(tmp)
            config = ChaosConfig(jobs=args.jobs, workers=2, seed=args.seed)
            url = f"sqlite+aiosqlite:///{folder / 'engine.db'}"
            reports.append(run_chaos(url, "SQLite (2 workers)", folder, config))
            reports[-1].print()
    if args.only in (None, "postgresql"):
        with postgres_database("chaos") as pg_url, tempfile.TemporaryDirectory() as tmp:
            if pg_url is None:
                reports.append(skipped("chaos on PostgreSQL", "no server"))
            else:
                config = ChaosConfig(jobs=args.jobs, workers=3, seed=args.seed)
                reports.append(run_chaos(pg_url, "PostgreSQL (3 workers)", Path(tmp), config))
            reports[-1].print()
    return finish(reports)


if __name__ == "__main__":
    sys.exit(main())
