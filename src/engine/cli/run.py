"""`run` and `validate`."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import anyio
from rich.console import Console

from engine.app import Engine
from engine.cli.view import LiveView, PlainView, render_summary
from engine.config import Settings, load_settings
from engine.domain.events import Event
from engine.domain.states import RunState
from engine.errors import InputError
from engine.planfile import load_plan

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


async def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    plan = load_plan(Path(args.plan))
    events_to_stdout = args.events == "-"
    out = sys.stderr if events_to_stdout else sys.stdout
    console = Console(file=out, highlight=False)
    async with Engine(settings) as eng:
        prepared = eng.prepare_run(plan)
        received: list[signal.Signals] = []
        with ExitStack() as stack:
            if args.events:
                stack.enter_context(eng.bus.listening(_event_writer(args.events, stack)))
            if not args.quiet:
                view = LiveView(plan, console) if console.is_terminal else PlainView(out)
                stack.enter_context(view)
                stack.enter_context(eng.bus.listening(view))
            console.print(f"run {prepared.run_id}: plan {plan.name} ({args.plan})")
            with anyio.CancelScope() as run_scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_watch_signals, run_scope, received)
                    try:
                        await prepared.execute()
                    finally:
                        tg.cancel_scope.cancel()
        result = prepared.result()
    render_summary(result, console)
    if received:
        return EXIT_SIGNAL[received[0]]
    return 0 if result.state is RunState.COMPLETED else 1


async def _watch_signals(run_scope: anyio.CancelScope, received: list[signal.Signals]) -> None:
    """The first SIGINT/SIGTERM cancels the run; its cleanup then runs to the end."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not received:
                received.append(signal.Signals(signum))
                run_scope.cancel()


def _event_writer(target: str, stack: ExitStack) -> _JsonLines:
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
