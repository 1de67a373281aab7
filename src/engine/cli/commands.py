"""Every subcommand's flags, and the registry that wires them into the parser."""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli import db as db_cmd
from engine.cli import diagnostics as diagnostics_cmd
from engine.cli import jobs as jobs_cmd
from engine.cli import locks as locks_cmd
from engine.cli import resume as resume_cmd
from engine.cli import run as run_cmd
from engine.cli import runs as runs_cmd
from engine.cli import worker as worker_cmd

FAILURE_MODES = ["fail_fast", "continue_on_error"]


def _database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        help="database URL (default: ENGINE_DATABASE_URL, database.url, .engine/engine.db)",
    )


def _execution(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that execute a plan."""
    parser.add_argument("--max-parallel", type=int, metavar="N")
    parser.add_argument("--failure-mode", choices=FAILURE_MODES, metavar="M")
    parser.add_argument("--events", metavar="PATH|-", help="write every event as a JSON line")
    _database(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress, only the summary")


def _lock_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-wait",
        type=_seconds,
        metavar="SECONDS",
        default=0.0,
        help="wait up to SECONDS for a lock held by another run (default: fail at once, exit 3)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {text!r}")
    return value


def _register_jobs(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "submit", help="queue a plan file as a background job; prints the job id"
    )
    p.add_argument("plan", metavar="PLAN")
    _database(p)
    p.set_defaults(handler=jobs_cmd.submit)

    p = sub.add_parser("worker", help="run queued jobs (a pool of async.max_workers)")
    p.add_argument("--concurrency", type=_positive_int, metavar="N", help="jobs at once")
    p.add_argument(
        "--poll-interval", type=_positive_seconds, metavar="S", help="longest idle poll wait"
    )
    p.add_argument("--burst", action="store_true", help="exit 0 once the queue is empty")
    p.add_argument(
        "--grace",
        type=_seconds,
        metavar="S",
        help="on SIGTERM/SIGINT, seconds running jobs get before they are handed back (10)",
    )
    p.add_argument("--quiet", action="store_true", help="no line per finished job")
    p.add_argument("--events", metavar="PATH|-", help="write every event as a JSON line")
    _database(p)
    p.set_defaults(handler=worker_cmd.worker)

    jobs = sub.add_parser("jobs", help="background jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="COMMAND", parser_class=parser_class
    )
    p = jobs.add_parser("list", help="jobs, newest first")
    p.add_argument("--status", choices=jobs_cmd.STATUSES, metavar="S")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (0: all)")
    p.add_argument("--json", action="store_true", help="JSON instead of columns")
    _database(p)
    p.set_defaults(handler=jobs_cmd.list_jobs)
    p = jobs.add_parser("show", help="one job: status, attempts, worker, times, error, run id")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    _database(p)
    p.set_defaults(handler=jobs_cmd.show_job)
    p = jobs.add_parser("cancel", help="cancel a queued job, or ask a running one's worker to")
    p.add_argument("job_id", metavar="ID")
    _database(p)
    p.set_defaults(handler=jobs_cmd.cancel_job)

    p = sub.add_parser(
        "diagnostics", help="worker health, queue depth, stuck jobs, stale locks (read only)"
    )
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    _database(p)
    p.set_defaults(handler=diagnostics_cmd.diagnostics)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("run", help="run a plan file")
    p.add_argument("plan", metavar="PLAN")
    _execution(p)
    _lock_wait(p)
    p.set_defaults(handler=run_cmd.run)

    p = sub.add_parser("validate", help="check a plan file without running it")
    p.add_argument("plan", metavar="PLAN")
    p.set_defaults(handler=run_cmd.validate)

    p = sub.add_parser(
        "resume", help="run again what did not complete in a recorded run, as a new run"
    )
    p.add_argument("run_id", metavar="RUN_ID")
    _execution(p)
    _lock_wait(p)
    p.set_defaults(handler=resume_cmd.resume)

    runs = sub.add_parser("runs", help="recorded runs").add_subparsers(
        dest="runs_command", required=True, metavar="COMMAND", parser_class=type(p)
    )
    p = runs.add_parser("list", help="recorded runs, newest first")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (0: all)")
    p.add_argument("--json", action="store_true", help="JSON instead of columns")
    _database(p)
    p.set_defaults(handler=runs_cmd.list_runs)
    p = runs.add_parser("show", help="one run: its subplan tree, states, durations, errors")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.add_argument("--events", action="store_true", help="also the run's recorded events")
    _database(p)
    p.set_defaults(handler=runs_cmd.show_run)

    locks = sub.add_parser(
        "locks", help="TTL locks on plans, projects and resources"
    ).add_subparsers(dest="locks_command", required=True, metavar="COMMAND", parser_class=type(p))
    p = locks.add_parser("list", help="held locks: resource, owner, acquired, expires, depth")
    p.add_argument("--json", action="store_true", help="JSON instead of columns")
    _database(p)
    p.set_defaults(handler=locks_cmd.list_locks)
    p = locks.add_parser("release", help="remove a lock by hand (its holder is gone)")
    p.add_argument("resource", metavar="RESOURCE", help="plan:NAME, project:NAME or resource:NAME")
    p.add_argument("--force", action="store_true", help="required: the holder is not asked")
    _database(p)
    p.set_defaults(handler=locks_cmd.release_lock)

    _register_jobs(sub, type(p))

    db = sub.add_parser("db", help="the database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND", parser_class=type(p)
    )
    p = db.add_parser("upgrade", help="migrate the database to this engine's schema")
    p.add_argument("--revision", default="head", help=argparse.SUPPRESS)
    _database(p)
    p.set_defaults(handler=db_cmd.db_upgrade)
    p = db.add_parser("current", help="show the database's schema revision")
    _database(p)
    p.set_defaults(handler=db_cmd.db_current)
