"""`run` and `validate`; `drive`, which `resume` shares: views, `--events`, signals, summary."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import anyio
from anyio.abc import TaskStatus
from rich.console import Console

from engine.app import Engine, database_url_for
from engine.cli.view import LiveView, PlainView, render_summary
from engine.config import Settings, load_settings
from engine.domain.events import Event
from engine.domain.states import RunState
from engine.errors import (
    AggregateSubplanError,
    EngineError,
    InputError,
    LockConflictError,
    LockError,
    SubplanExecutionError,
)
from engine.planfile import load_plan
from engine.prepared import PreparedRun

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "max_parallel": getattr(args, "max_parallel", None),
        "failure_mode": getattr(args, "failure_mode", None),
        "database.url": getattr(args, "db", None),
    }
    return load_settings(config_file=args.config, overrides=overrides)


async def validate(args: argparse.Namespace) -> int:
    plan = load_plan(Path(args.plan))
    count = len(plan.walk())
    print(f"{args.plan}: ok (plan {plan.name}, {count} subplans)")
    return 0


def open_engine(args: argparse.Namespace) -> Engine:
    """The engine of a command: settings from flags, environment and file; the configured
    database (`--db`, ENGINE_DATABASE_URL, `database.url`)."""
    settings = settings_from(args)
    return Engine(settings, database_url=database_url_for(settings))


def lock_wait_notice(args: argparse.Namespace, console: Console) -> Callable[[LockError], None]:
    """What `--lock-wait` prints when it has to wait: the resource and who holds it."""

    def notice(conflict: LockError) -> None:
        console.print(
            f"waiting up to {args.lock_wait:g}s for {conflict.resource}, "
            f"locked by {conflict.holder}",
            markup=False,
            soft_wrap=True,
        )

    return notice


def console_for(args: argparse.Namespace) -> Console:
    """Progress and summary go to stderr when `--events -` takes stdout."""
    out = sys.stderr if getattr(args, "events", None) == "-" else sys.stdout
    return Console(file=out, highlight=False)


async def run(args: argparse.Namespace) -> int:
    plan = load_plan(Path(args.plan))
    console = console_for(args)
    async with open_engine(args) as eng:
        if eng.settings.async_.enabled:
            from engine.cli.jobs import enqueue  # async.enabled: queue it for a worker

            await enqueue(eng, plan, args.plan)
            return 0
        prepared = eng.prepare_run(plan, lock_wait=args.lock_wait)
        eng.locks.on_wait = lock_wait_notice(args, console)
        header = f"run {prepared.run_id}: plan {plan.name} ({args.plan})"
        received = await drive(args, eng, prepared, console, [header])
    return finish(prepared, received, console)


async def drive(
    args: argparse.Namespace,
    eng: Engine,
    prepared: PreparedRun,
    console: Console,
    header: Sequence[str] = (),
) -> list[signal.Signals]:
    """Execute a prepared run with its views and `--events`; the signals that stopped it.
    `header` is printed once `--events` is open: a bad path stops the command before it."""
    received: list[signal.Signals] = []
    with ExitStack() as stack:
        if args.events:
            stack.enter_context(eng.bus.listening(event_writer(args.events, stack)))
        for line in header:
            console.print(line, markup=False, soft_wrap=True)
        if not args.quiet:
            view: LiveView | PlainView
            if console.is_terminal:
                view = LiveView(prepared.plan, console)
                kept = prepared.resume.kept if prepared.resume is not None else ()
                view.states.update(dict.fromkeys(kept, "completed"))
            else:
                view = PlainView(console.file)
            stack.enter_context(view)
            stack.enter_context(eng.bus.listening(view))
        error: EngineError | None = None
        run_scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            # Outside `run_scope`: the handlers stay until the run's cleanup is over, so a
            # second signal cannot cut it short (and leave its processes behind).
            await tg.start(_watch_signals, run_scope, received)
            try:
                with run_scope:
                    await prepared.execute()
            except EngineError as exc:
                error = exc  # raised below: the task group would wrap it in a group
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
    return received


def finish(prepared: PreparedRun, received: list[signal.Signals], console: Console) -> int:
    """Print the summary; the exit code."""
    result = prepared.result()
    render_summary(result, console)
    if received:
        return EXIT_SIGNAL[received[0]]
    if result.state is RunState.COMPLETED:
        return 0
    return LockConflictError.exit_code if _only_lock_conflicts(result.exception) else 1


def _only_lock_conflicts(failure: BaseException | None) -> bool:
    """Whether the run failed only because subplans could not get their locks (exit 3)."""
    if isinstance(failure, AggregateSubplanError):
        return all(_only_lock_conflicts(f) for f in failure.failures)
    if isinstance(failure, SubplanExecutionError):
        cause = failure.__cause__
        return isinstance(cause, LockConflictError) or (
            isinstance(cause, SubplanExecutionError | AggregateSubplanError)
            and _only_lock_conflicts(cause)
        )
    return isinstance(failure, LockConflictError)


async def _watch_signals(
    run_scope: anyio.CancelScope,
    received: list[signal.Signals],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The first SIGINT/SIGTERM cancels the run; its cleanup then runs to the end (later
    signals are ignored)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if not received:
                received.append(signal.Signals(signum))
                run_scope.cancel()


def event_writer(target: str, stack: ExitStack) -> _JsonLines:
    """`--events PATH|-`: every event as a JSON line, flushed as it comes; the file is closed
    with `stack`."""
    if target == "-":
        return _JsonLines(sys.stdout)
    try:
        fh = stack.enter_context(Path(target).open("w", encoding="utf-8"))  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"--events {target}: cannot open for writing: {exc.strerror}") from None
    return _JsonLines(fh)


class _JsonLines:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: Event) -> None:
        self.out.write(event.to_json() + "\n")
        self.out.flush()
