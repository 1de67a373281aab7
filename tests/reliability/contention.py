"""Contention: four processes hammer one SQLite file (runs, locks and jobs at once) for a minute.
No "database is locked", nor any other error, may reach a user, and every write must be there
afterwards.

The processes, each with its own engine on the same file:

- `runner`: runs plans one after another through the API (`Engine.run_plan`), each with 24
  `call` subplans in two groups, a project, and a subplan holding a `resource:` lock; beside
  them, `python -m engine run` processes one after another (exit code and stderr checked);
- `locker`: acquires, renews and releases `resource:` locks for three owners at random through
  the API (`Engine.locks`), checking after each step that the store holds what it should;
- `submitter`: submits jobs (one plan each) and cancels one in ten right after submitting it,
  keeping at most 40 queued;
- `worker`: `python -m engine worker --concurrency 8` runs the jobs.

A user sees an error when an API call raises (a lock conflict between the locker's own owners is
the expected answer, not an error), a run does not complete, or the worker logs a warning or an
error. Afterwards: every run is stored completed with all its subplans completed and its events;
every job submitted is stored, terminal, and succeeded unless it was cancelled (a succeeded job's
run is stored completed); no lock is left in the table.

    python tests/reliability/contention.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, run as a script

import anyio.lowlevel

from engine import LockConflictError, LockExpiredError, Owner
from engine.app import Engine
from engine.config import load_settings
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus, RunState, SubplanState
from reliability._suitekit import Child, Report, finish, problems_in, python_env

ROLES = ("runner", "locker", "submitter")
#: Subplans of each of the runner's plans (leaves and the two groups).
RUN_SUBPLANS = 24
#: Subplans of the plan the runner runs with `python -m engine run`.
CLI_SUBPLANS = 5
LOCK_RESOURCES = [f"resource:contend-{i}" for i in range(4)]
LOCK_OWNERS = 3
#: The locker's TTL: nothing expires during the run (expiry is the lock model's business).
LOCK_TTL = 600.0
MAX_QUEUED = 40


def settings_env(url: str, folder: Path) -> dict[str, str]:
    return python_env(
        {
            "ENGINE_DATABASE_URL": url,
            "ENGINE_DATA_DIR": str(folder / ".engine"),
            "ENGINE_RETRY_BACKOFF": "0",
            "ENGINE_ASYNC_HEARTBEAT_INTERVAL": "0.5",
            "ENGINE_ASYNC_POLL_INTERVAL": "0.1",
        }
    )


# -- the roles (each in a process of its own) ------------------------------------------------


def run_plan_of(index: int) -> Plan:
    leaves = [{"name": f"s{i}", "call": "stepkit:noop"} for i in range(10)]
    return Plan.model_validate(
        {
            "name": "contend-run",
            "project": "contention",
            "max_parallel": 4,
            "subplans": [
                {"name": "a", "subplans": leaves},
                {"name": "b", "needs": ["a"], "subplans": leaves},
                {"name": "locked", "locks": ["contend-run"], "call": "stepkit:noop"},
                {
                    "name": "last",
                    "needs": ["b", "locked"],
                    "call": "stepkit:value",
                    "with": {"x": index},
                },
            ],
        }
    )


CLI_PLAN = {
    "name": "contend-cli",
    "subplans": [{"name": f"s{i}", "call": "stepkit:noop"} for i in range(CLI_SUBPLANS)],
}


async def runner(eng: Engine, until: float, out: dict[str, Any], folder: Path) -> None:
    """API runs one after another and, beside them, `python -m engine run` processes one after
    another (the error boundary a user at a terminal sees: exit code and stderr)."""
    runs: list[dict[str, Any]] = []
    out["runs"] = runs
    out["cli_runs"] = 0

    async def through_the_api() -> None:
        index = 0
        while time.time() < until:
            index += 1
            try:
                result = await eng.run_plan(run_plan_of(index))
            except Exception as exc:
                out["errors"].append(f"run {index}: {type(exc).__name__}: {exc}")
                continue
            runs.append({"run_id": result.run_id, "state": result.state.value})
            if not result.ok:
                out["errors"].append(f"run {result.run_id} {result.state.value}: {result.error}")

    async def through_the_cli() -> None:
        plan_file = folder / "cli-plan.json"
        plan_file.write_text(json.dumps(CLI_PLAN))
        argv = [sys.executable, "-m", "engine", "run", str(plan_file), "--quiet"]
        while time.time() < until:
            done = await anyio.run_process(argv, check=False, cwd=folder)
            out["cli_runs"] += 1
            if done.returncode != 0 or problems_in(done.stderr.decode()):
                out["errors"].append(f"engine run exited {done.returncode}: {done.stderr!r}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(through_the_api)
        tg.start_soon(through_the_cli)


async def locker(eng: Engine, until: float, out: dict[str, Any], seed: int) -> None:
    """Random lock steps with a model of what each owner holds (resource -> (owner, depth))."""
    rng = random.Random(seed)
    owners = [Owner.named(f"locker-{i}") for i in range(LOCK_OWNERS)]
    held: dict[str, tuple[int, int]] = {}
    counts = dict.fromkeys(("acquired", "conflicts", "renewed", "released"), 0)
    out["locks"] = counts
    locks = eng.locks
    while time.time() < until:
        resource, o = rng.choice(LOCK_RESOURCES), rng.randrange(LOCK_OWNERS)
        mine = held.get(resource, (o, 0))[0] == o and resource in held
        step = rng.choice(("acquire", "acquire", "renew", "release"))
        try:
            if step == "acquire":
                if resource in held and not mine:
                    try:
                        await locks.acquire(resource, owners[o], LOCK_TTL)
                        out["errors"].append(f"{owners[o]} took {resource} held by another")
                    except LockConflictError:
                        counts["conflicts"] += 1
                else:
                    record = await locks.acquire(resource, owners[o], LOCK_TTL)
                    depth = held.get(resource, (o, 0))[1] + 1
                    held[resource] = (o, depth)
                    counts["acquired"] += 1
                    if record.depth != depth:
                        out["errors"].append(f"{resource}: depth {record.depth}, not {depth}")
            elif step == "renew":
                try:
                    await locks.renew(resource, owners[o], LOCK_TTL)
                    counts["renewed"] += 1
                    if not mine:
                        out["errors"].append(f"{owners[o]} renewed {resource} it did not hold")
                except LockExpiredError as exc:
                    if mine:
                        out["errors"].append(f"renewing {resource}: {exc}")
            else:
                released = await locks.release(resource, owners[o])
                if released != mine:
                    out["errors"].append(f"release of {resource} by {owners[o]}: {released}")
                if mine:
                    counts["released"] += 1
                    owner, depth = held[resource]
                    if depth == 1:
                        del held[resource]
                    else:
                        held[resource] = (owner, depth - 1)
            stored = await locks.get(resource)
            expected = held.get(resource)
            seen = None if stored is None else (stored.owner_id, stored.depth)
            wanted = None if expected is None else (owners[expected[0]].id, expected[1])
            if seen != wanted:
                out["errors"].append(f"{resource} after {step}: stored {seen}, expected {wanted}")
        except Exception as exc:
            out["errors"].append(f"{step} {resource}: {type(exc).__name__}: {exc}")
        await anyio.lowlevel.checkpoint()
    for owner in owners:
        try:
            await locks.release_all_for_owner(owner)
        except Exception as exc:
            out["errors"].append(f"releasing everything of {owner}: {type(exc).__name__}: {exc}")


async def submitter(eng: Engine, until: float, out: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    submitted: list[str] = []
    cancelled: list[str] = []
    out["submitted"], out["cancelled"] = submitted, cancelled
    index = 0
    while time.time() < until:
        try:
            counts = await eng.store.count_jobs()
            if counts[AsyncJobStatus.QUEUED] >= MAX_QUEUED:
                await anyio.sleep(0.05)  # the worker is behind: its pace, not a wait for state
                continue
            index += 1
            steps = [{"name": "a", "call": "stepkit:noop"}, {"name": "b", "call": "stepkit:noop"}]
            plan = Plan.model_validate({"name": f"contend-job-{index}", "subplans": steps})
            job_id = await eng.submit(plan)
            submitted.append(job_id)
            if rng.random() < 0.1:
                await eng.cancel_job(job_id)
                cancelled.append(job_id)
        except Exception as exc:
            out["errors"].append(f"job {index}: {type(exc).__name__}: {exc}")


async def play_role(role: str, url: str, folder: Path, seed: int) -> None:
    """Open an engine, say so, and play `role` from the driver's go until the time it gives."""
    env = settings_env(url, folder)
    settings = load_settings(environ=env, cwd=folder)
    out: dict[str, Any] = {"errors": []}
    try:
        async with Engine(settings, database_url=url) as eng:
            (folder / f"{role}.ready").touch()
            until = float(await _read_when_there(folder / "go", 120))
            if role == "runner":
                await runner(eng, until, out, folder)
            elif role == "locker":
                await locker(eng, until, out, seed)
            else:
                await submitter(eng, until, out, seed)
    except Exception as exc:
        out["errors"].append(f"{role}: {type(exc).__name__}: {exc}")
    (folder / f"{role}.json").write_text(json.dumps(out))


async def _read_when_there(path: Path, within: float) -> str:
    """Poll for a file another process writes (no event crosses processes)."""
    with anyio.fail_after(within):
        while True:
            if path.exists():
                return path.read_text()
            await anyio.sleep(0.01)


# -- the driver -------------------------------------------------------------------------------


def run_contention(folder: Path, seconds: float, seed: int = 0) -> Report:
    """Hammer a new SQLite file in `folder` for `seconds`, then check everything."""
    report = Report("contention on one SQLite file")
    url = f"sqlite+aiosqlite:///{folder / 'engine.db'}"
    env = settings_env(url, folder)
    anyio.run(_create, url)
    script = str(Path(__file__).resolve())
    roles = []
    for i, role in enumerate(ROLES):
        argv = [sys.executable, script, "--role", role, "--db", url, "--folder", str(folder)]
        roles.append(Child([*argv, "--seed", str(seed + i)], cwd=folder, env=env, name=role))
    worker = Child(
        [sys.executable, "-m", "engine", "worker", "--quiet", "--concurrency", "8"],
        cwd=folder,
        env=env,
        name="worker",
    )
    try:
        # Everyone starts hammering at once, for the whole time, once all are up.
        ready = [folder / f"{child.name}.ready" for child in roles]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            all(path.exists() for path in ready) and "concurrency 8" in worker.stderr()
        ):
            time.sleep(0.01)
        started = time.time()
        go = folder / "go.tmp"
        go.write_text(repr(started + seconds))
        go.rename(folder / "go")  # atomically: a role never reads half of it
        for child in roles:
            code = child.wait(timeout=seconds + 120)
            if code != 0:
                report.violate(f"{child.name} exited {code}: {child.stderr()[-2000:]}")
        left = anyio.run(_drain, url, 120.0)
        if left:
            report.violate(f"{left} job(s) still queued or running 120s after the end")
    finally:
        code = worker.stop()
    elapsed = time.time() - started
    if code != 0:
        report.violate(f"the worker exited {code} on SIGTERM")
    errors = [f"worker: {line}" for line in problems_in(worker.stderr())]
    errors += [line for line in worker.stderr().splitlines() if " WARNING " in line]
    outputs: dict[str, dict[str, Any]] = {}
    for child in roles:
        errors += [f"{child.name}: {line}" for line in problems_in(child.stderr())]
        path = folder / f"{child.name}.json"
        outputs[child.name] = json.loads(path.read_text()) if path.exists() else {"errors": []}
        errors += [f"{child.name}: {e}" for e in outputs[child.name]["errors"]]
    for error in errors:
        report.violate(error)
    missing = anyio.run(_check_writes, url, outputs, report)
    runs = outputs["runner"].get("runs", [])
    cli_runs = outputs["runner"].get("cli_runs", 0)
    locks = outputs["locker"].get("locks", {})
    report.figures.update(
        seconds=round(elapsed, 1),
        runs=len(runs) + cli_runs,
    )
    report.figures["of them `engine run` processes"] = cli_runs
    report.figures.update(
        subplans=len(runs) * RUN_SUBPLANS + cli_runs * CLI_SUBPLANS,
        jobs=len(outputs["submitter"].get("submitted", [])),
        cancelled=len(outputs["submitter"].get("cancelled", [])),
    )
    report.figures["lock steps"] = sum(locks.values())
    report.figures["lock conflicts (expected)"] = locks.get("conflicts", 0)
    report.figures["errors"] = len(errors)
    report.figures["missing writes"] = missing
    return report


async def _create(url: str) -> None:
    from engine.store import open_store

    store = await open_store(url)
    await store.close()


async def _drain(url: str, within: float) -> int:
    """Wait (polling) until the worker has no job left; how many are left."""
    from engine.store import open_store

    store = await open_store(url)
    try:
        with anyio.move_on_after(within):
            while True:
                counts = await store.count_jobs()
                left = counts[AsyncJobStatus.QUEUED] + counts[AsyncJobStatus.RUNNING]
                if not left:
                    return 0
                await anyio.sleep(0.1)
        counts = await store.count_jobs()
        return counts[AsyncJobStatus.QUEUED] + counts[AsyncJobStatus.RUNNING]
    finally:
        await store.close()


async def _check_writes(url: str, outputs: dict[str, dict[str, Any]], report: Report) -> int:
    """Every run, job and lock step the roles saw succeed is in the store; how many are not."""
    from engine.store import open_store

    missing = 0
    store = await open_store(url)
    try:
        stored_runs = {r.id: r for r in await store.list_runs()}
        reported = outputs["runner"].get("runs", [])
        for entry in reported:
            run = stored_runs.get(entry["run_id"])
            if run is None or run.state is not RunState.COMPLETED:
                missing += 1
                report.violate(f"run {entry['run_id']}: stored as {run and run.state.value}")
                continue
            subplans = await store.list_subplans(run.id)
            done = [s for s in subplans if s.state is SubplanState.COMPLETED]
            events = await store.list_events(run.id)
            if len(done) != RUN_SUBPLANS or not events:
                missing += 1
                report.violate(
                    f"run {run.id}: {len(done)} of {RUN_SUBPLANS} subplans completed, "
                    f"{len(events)} events"
                )
        runner_runs = [r for r in stored_runs.values() if r.plan_name == "contend-run"]
        if len(runner_runs) != len(reported):
            report.violate(f"{len(runner_runs)} runs stored, the runner made {len(reported)}")
        cli_runs = [r for r in stored_runs.values() if r.plan_name == "contend-cli"]
        for run in cli_runs:
            subplans = await store.list_subplans(run.id)
            done = [s for s in subplans if s.state is SubplanState.COMPLETED]
            if run.state is not RunState.COMPLETED or len(done) != CLI_SUBPLANS:
                missing += 1
                report.violate(f"run {run.id} (engine run): {run.state.value}, {len(done)} done")
        if len(cli_runs) != outputs["runner"].get("cli_runs", 0):
            report.violate(f"{len(cli_runs)} `engine run` runs stored, {outputs['runner']}")

        jobs = {job.id: job for job in await store.list_jobs()}
        cancelled = set(outputs["submitter"].get("cancelled", []))
        for job_id in outputs["submitter"].get("submitted", []):
            job = jobs.get(job_id)
            if job is None:
                missing += 1
                report.violate(f"job {job_id} is not stored")
                continue
            wanted = {AsyncJobStatus.SUCCEEDED, AsyncJobStatus.CANCELLED}
            if job_id not in cancelled:
                wanted = {AsyncJobStatus.SUCCEEDED}
            if job.status not in wanted:
                report.violate(f"job {job_id} is {job.status.value}: {job.error_message}")
            elif job.status is AsyncJobStatus.SUCCEEDED:
                run = stored_runs.get(job.run_id or "")
                if run is None or run.state is not RunState.COMPLETED:
                    missing += 1
                    report.violate(f"job {job_id}: its run {job.run_id} is not stored completed")
        left = await store.list_locks()
        if left:
            report.violate(f"locks left behind: {[str(lock.resource) for lock in left]}")
    finally:
        await store.close()
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        anyio.run(play_role, args.role, args.db, Path(args.folder), args.seed)
        return 0
    print(f"contention: {args.seconds:g}s, seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        report = run_contention(Path(tmp), args.seconds, args.seed)
    report.print()
    return finish([report])


if __name__ == "__main__":
    sys.exit(main())
