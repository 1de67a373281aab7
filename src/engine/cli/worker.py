"""`worker`: run a worker pool in this process until stopped (or, with `--burst`, until the
queue is empty).

SIGTERM or SIGINT starts a graceful shutdown: claiming stops, running jobs get `--grace`
seconds to finish, then they are cancelled and handed back to the queue; a second signal cuts
the grace period short. Exit code: 0 when every claimed job finished; 143 (SIGTERM) or 130
(SIGINT) when jobs had to be handed back. `--events PATH|-` writes every event (jobs, their
runs, locks) as a JSON line, like `run --events`; with `-`, the per-job lines go to stderr.
Log lines (and the tracebacks in them) pass through the redactor before they are written.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack

import anyio

from engine.cli.run import EXIT_SIGNAL, event_writer, open_engine
from engine.domain.job import JobOutcome
from engine.redaction import Redactor
from engine.worker import WorkerPool, WorkerSettings


async def worker(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler()
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    received: list[signal.Signals] = []
    async with open_engine(args) as eng:
        settings = WorkerSettings.from_settings(
            eng.settings.async_,
            concurrency=args.concurrency,
            poll_interval=args.poll_interval,
            burst=args.burst,
            grace=args.grace,
        )
        pool = WorkerPool(eng, settings, on_outcome=None if args.quiet else _outcome_printer(args))
        mode = "burst" if settings.burst else "until stopped"
        if eng.settings.async_.signing_key is not None:
            mode += ", signed jobs only"
        print(
            f"worker {pool.worker_id}: concurrency {settings.concurrency}, {mode}, "
            f"store {eng.store.location}",
            file=sys.stderr,
            flush=True,
        )
        _tune_gc()
        with ExitStack() as stack:
            if args.events:
                stack.enter_context(eng.bus.listening(event_writer(args.events, stack)))
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, pool, received)
                await pool.run()
                tg.cancel_scope.cancel()
    stats = pool.statistics()
    print(
        f"worker {pool.worker_id}: {stats.processed} processed ({stats.succeeded} succeeded, "
        f"{stats.failed} failed, {stats.cancelled} cancelled), {stats.handed_back} handed back, "
        f"{stats.fenced} fenced, {stats.rescued} rescued",
        file=sys.stderr,
    )
    if received and stats.handed_back:
        return EXIT_SIGNAL[received[0]]
    return 0


#: Allocations (less deallocations) between two young-generation collections; Python's
#: default is 700.
GC_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Garbage collection for a long-running worker process: everything that exists once it
    has started (modules, the store's engine, validators) moves to the permanent generation,
    which full collections no longer scan; and young collections run less often. A job's
    objects are short-lived and freed by reference counting (the run path makes no reference
    cycles), so this costs little memory. Measured on 5,000 no-op jobs: collections took 5-6%
    of the worker's CPU (full ones 0.21 s of ~5.5 s), and 0.1% after. Only the CLI process does
    this: an application that runs a pool in its own process keeps its own settings."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def _outcome_printer(args: argparse.Namespace) -> Callable[[JobOutcome, bool], None]:
    """A line per finished job, on stdout unless `--events -` writes there."""
    out = sys.stderr if args.events == "-" else sys.stdout

    def print_outcome(outcome: JobOutcome, applied: bool) -> None:
        if not applied:
            print(f"job {outcome.job_id}: claim lost, outcome not recorded", file=out, flush=True)
            return
        run = f" (run {outcome.run_id})" if outcome.run_id else ""
        print(f"job {outcome.job_id} {outcome.status.value}{run}", file=out, flush=True)

    return print_outcome


async def _watch_signals(pool: WorkerPool, received: list[signal.Signals]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            received.append(signal.Signals(signum))
            pool.stop(grace=0 if len(received) > 1 else None)


class _RedactingFormatter(logging.Formatter):
    """Log records may quote anything (a driver's message, a step's exception): mask secrets."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._redact = Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))
