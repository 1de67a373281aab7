"""`diagnostics [--json]`: worker health, queue depth by status, stuck jobs, stale locks.

Reads only: it never purges, requeues or changes what it reports on (the engine is opened
without purging expired locks). Exit code 1 when something needs attention, else 0.
"""

from __future__ import annotations

import argparse
import json

from engine.app import Engine, database_url_for
from engine.cli.run import settings_from
from engine.cli.runs import _table as table
from engine.cli.runs import fmt_time


async def diagnostics(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    engine = Engine(settings, database_url=database_url_for(settings), purge_expired_locks=False)
    async with engine as eng:
        report = await eng.jobs.diagnostics(await eng.locks.count_stale())
        location = eng.store.location
    problems = report.problems()
    if args.json:
        print(json.dumps({"store": location, **report.to_json()}, indent=2))
        return 1 if problems else 0
    print(f"store: {location}")
    queue = ", ".join(f"{count} {status.value}" for status, count in report.queue.items())
    print(f"jobs: {queue}")
    if report.workers:
        lost = {w.record.id for w in report.lost_workers()}
        rows = [
            [
                w.record.id,
                "LOST" if w.record.id in lost else "ok",
                f"{fmt_time(w.record.last_heartbeat)} ({w.age:.0f}s ago)",
                str(w.record.processed),
                str(w.record.failed),
            ]
            for w in report.workers
        ]
        header = ["WORKER", "HEALTH", "LAST HEARTBEAT (UTC)", "PROCESSED", "FAILED"]
        print(table(header, rows, right={3, 4}))
    else:
        print("workers: none registered")
    for job in report.stuck:
        seen = fmt_time(job.last_heartbeat)
        print(f"stuck: job {job.id} on {job.worker_id}, last heartbeat {seen} UTC")
    print(f"stale locks: {report.stale_locks}")
    if problems:
        for problem in problems:
            print(f"attention: {problem}")
        return 1
    print("ok: nothing needs attention")
    return 0
