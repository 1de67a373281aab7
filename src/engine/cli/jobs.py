"""`submit`, `jobs list | show | cancel`: background jobs in the configured store.

`submit` (and `run` with `async.enabled`) prints the new job's id alone on stdout, so scripts can
capture it; what a person needs to know goes to stderr. Times are UTC.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.app import Engine
from engine.cli.run import open_engine
from engine.cli.runs import _table as table
from engine.cli.runs import fmt_time
from engine.domain.job import AsyncJob
from engine.domain.plan import Plan
from engine.domain.states import AsyncJobStatus
from engine.planfile import load_plan

STATUSES = [s.value for s in AsyncJobStatus]


async def submit(args: argparse.Namespace) -> int:
    plan = load_plan(Path(args.plan))
    async with open_engine(args) as eng:
        await enqueue(eng, plan, args.plan)
    return 0


async def enqueue(eng: Engine, plan: Plan, shown: str) -> str:
    """Queue `plan` and print its job id (stdout) and a note (stderr); the id."""
    job_id = await eng.submit(plan)
    print(job_id)
    print(
        f"queued job {job_id}: plan {plan.name} ({shown}); "
        f"follow it with `python -m engine jobs show {job_id}`",
        file=sys.stderr,
    )
    return job_id


async def list_jobs(args: argparse.Namespace) -> int:
    async with open_engine(args) as eng:
        found = await eng.list_jobs(status=args.status, limit=args.limit or None)
        location = eng.store.location
    if args.json:
        print(json.dumps([jsonable(job) for job in found], indent=2))
        return 0
    if not found:
        which = f"{args.status} " if args.status else ""
        print(f"no {which}jobs in {location}")
        return 0
    rows = [
        [
            job.id,
            job.status.value,
            job.plan_name,
            f"{job.attempts}/{job.max_attempts}",
            fmt_time(job.created_at),
            job.worker_id or "-",
        ]
        for job in found
    ]
    header = ["JOB", "STATUS", "PLAN", "ATTEMPTS", "CREATED (UTC)", "WORKER"]
    print(table(header, rows, right={3}))
    return 0


async def show_job(args: argparse.Namespace) -> int:
    async with open_engine(args) as eng:
        job = await eng.get_job(args.job_id)
    if args.json:
        print(json.dumps(jsonable(job), indent=2))
        return 0
    lines = [
        ("job", job.id),
        ("status", job.status.value + (" (cancel requested)" if job.cancel_requested else "")),
        ("plan", job.plan_name),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("worker", job.worker_id or "-"),
        ("created", _time(job.created_at)),
        ("started", _time(job.started_at)),
        ("finished", _time(job.finished_at)),
        ("heartbeat", _time(job.last_heartbeat)),
        ("run", job.run_id or "-"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    if job.result:
        print(f"{'result':<{width}}  {job.result}")
    if job.error_message:
        print("error:")
        for line in job.error_message.splitlines():
            print(f"  {line}")
    return 0


async def cancel_job(args: argparse.Namespace) -> int:
    async with open_engine(args) as eng:
        job = await eng.cancel_job(args.job_id)
    if job.status is AsyncJobStatus.CANCELLED and not job.cancel_requested:
        print(f"job {job.id} cancelled")
    elif job.status is AsyncJobStatus.RUNNING:
        print(
            f"job {job.id} is running on {job.worker_id}: cancellation requested; the worker "
            "stops it within one heartbeat"
        )
    else:
        print(f"job {job.id} is {job.status.value} already: nothing to cancel")
    return 0


def _time(at: Any) -> str:
    return f"{fmt_time(at)} UTC" if at is not None else "-"


def jsonable(job: AsyncJob) -> dict[str, Any]:
    data = job.model_dump(mode="json", exclude={"payload"})
    data["status"] = job.status.value
    return data
